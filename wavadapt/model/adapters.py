"""Bottleneck adapters for transformers' wav2vec2 / HuBERT / WavLM encoders.

Form (Houlsby et al. 2019, as used by both papers: "two fully connected layers followed by a layer norm
with a skip connection")::

    adapter(x) = x + LayerNorm(W_up · act(W_down · x))

The adapter's layer norm gain starts at ``init_scale`` (1e-3), so a freshly inserted adapter is the
identity up to ~1e-3 of the hidden-state scale while every weight still receives gradient.

Two adapters sit in every adapted transformer layer: on the attention block's output (after the output
projection) and on the feed-forward block's output (after its output projection and dropout), both
before the residual add. They are attached with forward hooks and the layer norms are swapped for a
subclass that shares the original parameters, so the base model's parameter names never change and
real checkpoints load as they are. New parameters live under ``...layers.<i>.adapters.<name>.*`` and
``...<layer_norm>.tasks.<name>.*``.

The ``mms`` form is MMS's (Pratap et al. 2023) and transformers' ``Wav2Vec2AttnAdapterLayer``, one per layer of a
pre-LN encoder, after the feed-forward residual::

    h = h + linear_2(relu(linear_1(LayerNorm(h))))

It is attached by a forward hook on the whole encoder layer and lives under
``...layers.<i>.adapters.sets.<name>.adapter_layer.*`` (transformers' own module, so its names match MMS's
``...layers.<i>.adapter_layer.*`` files). Its ``linear_2`` starts with weights of std ``init_scale``: near identity.

Adapter sets are keyed by name (``en``, ``es``, ``es/asr``). The active *stack* is a tuple of names
applied bottom-up (a task adapter on top of a language adapter, MAD-X style); it may be one stack for
the whole batch or one per batch element (mixed-language batches).

Routing. When every row runs the same stack, each set's own modules run on the whole batch, as in training.
A mixed batch runs as one forward whatever the number of distinct stacks, the way multi-LoRA servers do
(Punica's BGMV, S-LoRA): each hook stacks its layer's sets into tables (sets × D × r, ...), gathers every
row's entry and runs one ``torch.baddbmm`` per projection. Stack position k is one gathered pass: row i
applies the k-th set of its stack there, or the table's last, all-zero *identity* entry where its stack is
shorter or its set does not cover the layer (Houlsby: a zero layer-norm gain and bias make the adapter's
x + LN(·)·0 + 0 = x; mms: a zero ``linear_2`` adds 0). A position where every row has the same entry runs
that set's module ungathered (or nothing). Sets of different bottleneck sizes are zero-padded to the
layer's largest (exact: padded units get zero weights both ways), so a small set costs as much as the
largest beside it; sets of different activations share a gathered pass, each activation applied to the
whole pass and selected per row (exact; one more elementwise pass per extra activation). Per-task layer
norms normalise without affine parameters and scale and shift each row by its gathered gain and bias.
The tables are built from the live Parameters whenever autograd needs them (so gradients reach each
set's own Parameters) and are otherwise cached until a Parameter is replaced or changed in place (its
``_version``; changes made through ``.data`` bypass that counter and are not seen). The cache is a second
copy of the sets' weights (memory for speed) held as a plain attribute: parameter names and state-dict keys
are unchanged. The loop over distinct stacks that the
gathered routing replaced stays available (:func:`grouped_routing`) as the baseline it is measured by.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Wav2Vec2Config
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2AttnAdapterLayer

from wavadapt.errors import WavadaptError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}

Stack = tuple[str, ...]

FORMS = ("houlsby", "mms")


@dataclass
class AdapterConfig:
    """One adapter set: bottleneck size, where it goes, and whether it owns layer norms."""

    size: int = 256
    """Bottleneck dimension (both papers: 256)."""
    activation: str = "relu"
    top_n: int | None = None
    """Adapt only the top N transformer layers; None adapts every layer."""
    layer_norms: bool = True
    """The set owns copies of the encoder layer norms of the layers it adapts (per-task layer norms)."""
    init_scale: float = 1e-3
    """The distance from identity at insertion: the initial gain of a Houlsby adapter's layer norm, the std of an
    mms adapter's initial ``linear_2`` weights."""
    form: str = "houlsby"
    """``houlsby`` (two bottlenecks per layer) or ``mms`` (transformers' MMS adapter layer: every layer of a pre-LN
    encoder, ReLU, no layer-norm copies, ``size`` is MMS's ``adapter_attn_dim``). Task files without it are houlsby."""


class Bottleneck(nn.Module):
    """x + LN(up(act(down(x)))): (B, T, D) -> (B, T, D)."""

    pre_norm = False
    """The layer norm follows the projections (MmsAdapter's precedes them). The gathered routing reads both forms
    by Bottleneck's names: ``down``, ``act``, ``up``, ``norm``."""

    def __init__(self, dim: int, size: int, activation: str = "relu", init_scale: float = 1e-3):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise WavadaptError(f"unknown adapter activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.down = nn.Linear(dim, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, dim)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.normal_(self.up.weight, std=0.02)
        nn.init.zeros_(self.up.bias)
        nn.init.constant_(self.norm.weight, init_scale)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.up(self.act(self.down(x))))


class MmsAdapter(Wav2Vec2AttnAdapterLayer):
    """transformers' MMS adapter layer (same parameters, same names) with its residual: x + adapter(x)."""

    pre_norm = True
    # Bottleneck's names for transformers' modules (properties: no second registration, names unchanged).
    down = property(lambda self: self.linear_1)
    up = property(lambda self: self.linear_2)
    act = property(lambda self: self.act_fn)

    def __init__(self, dim: int, size: int, init_scale: float = 1e-3):
        super().__init__(Wav2Vec2Config(hidden_size=dim, adapter_attn_dim=size))
        nn.init.normal_(self.linear_1.weight, std=0.02)  # transformers' initializer_range
        nn.init.zeros_(self.linear_1.bias)
        nn.init.normal_(self.linear_2.weight, std=init_scale)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


@dataclass
class Mixture:
    """Rows that combine adapter stacks: the routing's stacks are ``components`` per row (row b's k-th at
    ``b * components + k``), and each adapter and task layer norm mixes its components' outputs by ``weights``: (B,
    K) for every place, or (places, B, K) per place (`place_of`), each row's weights summing to one."""

    components: int
    weights: torch.Tensor

    def mix(self, y: torch.Tensor, place: int) -> torch.Tensor:
        """(B * K, ...) component outputs -> (B, ...) their weighted sum at ``place``."""
        w = self.weights[place] if self.weights.dim() == 3 else self.weights
        y = y.view(w.shape[0], self.components, *y.shape[1:])
        return (y * w.to(y.dtype).view(*w.shape, *[1] * (y.dim() - 2))).sum(1)


def place_of(layer: int | None, num_layers: int) -> int:
    """Where a module mixes in per-place weights: its layer, or ``num_layers`` for the encoder's own layer norm."""
    return num_layers if layer is None else layer


class Routing:
    """Which adapter stack each batch element uses; shared by every hook of one model."""

    def __init__(self) -> None:
        self.stacks: Stack | list[Stack] | None = None
        self.grouped = False
        """Run mixed batches by the loop over distinct stacks instead of gathering (see `grouped_routing`)."""
        self.mixture: Mixture | None = None
        """Set while rows combine stacks (`combined`)."""

    def combined(self, x: torch.Tensor, place: int, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``run(x)`` on the current routing, or, while rows combine stacks, on each row's copies for its
        components, mixed at ``place``: one routed pass for every row and component."""
        if self.mixture is None:
            return run(x)
        return self.mixture.mix(run(x.repeat_interleave(self.mixture.components, 0)), place)

    def uniform(self, batch_size: int) -> Stack | None:
        """The stack every row runs, or None when rows differ."""
        if not isinstance(self.stacks, list):
            return self.stacks or ()
        if len(self.stacks) != batch_size:
            raise WavadaptError(f"routing names {len(self.stacks)} stacks for a batch of {batch_size}")
        distinct = set(self.stacks)
        return next(iter(distinct), ()) if len(distinct) <= 1 else None

    def groups(self) -> Iterator[tuple[Stack, torch.Tensor]]:
        """Yield (stack, batch indices) for each distinct stack of a per-row routing."""
        for stack in dict.fromkeys(self.stacks):
            yield stack, torch.tensor([i for i, s in enumerate(self.stacks) if s == stack])

    def positions(self) -> list[list[str | None]]:
        """Per stack position, bottom first, each row's set name there (None past the end of its stack)."""
        depth = max(map(len, self.stacks))
        return [[s[k] if k < len(s) else None for s in self.stacks] for k in range(depth)]


def _apply_grouped(routing: Routing, x: torch.Tensor, fn) -> torch.Tensor:
    """Apply fn(stack, rows) to each routing group of x's batch dimension: one pass per distinct stack."""
    out = x
    for stack, index in routing.groups():
        index = index.to(x.device)
        out = out.index_copy(0, index, fn(stack, x.index_select(0, index)))
    return out


class StackedTables:
    """Tensors of several sets stacked along a new first dimension, built by ``build``: from the live Parameters
    when autograd needs them, else cached until one of ``params`` is replaced or changed in place."""

    def __init__(self) -> None:
        self.key: list[tuple[int, int]] = []
        """(address, version) of each Parameter the tables were built from."""
        self.sources: list[torch.Tensor] = []
        """Detached views of those Parameters: they keep the storage alive, so that a replacement cannot reuse
        the address."""
        self.tables: list[torch.Tensor] = []

    def get(self, params: list[nn.Parameter], build: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()
        key = [(p.data_ptr(), p._version) for p in params]
        if key != self.key:
            # Normal tensors even under inference_mode: they may later meet autograd (frozen sets, x needing grad).
            with torch.inference_mode(False), torch.no_grad():
                self.tables = build()
                self.sources = [p.detach() for p in params]
            self.key = key
        return self.tables


def _stacked(tensors: list[torch.Tensor], shape: Sequence[int], identity: bool) -> torch.Tensor:
    """(N[+1], *shape): the tensors zero-padded to ``shape``, then an all-zero entry if ``identity``."""
    def padded(t: torch.Tensor) -> torch.Tensor:  # pad's widths run from the last dimension back
        return nn.functional.pad(t, [w for have, want in zip(t.shape[::-1], shape[::-1], strict=True)
                                     for w in (0, want - have)])

    rows = [padded(t) for t in tensors]
    return torch.stack(rows + [rows[0].new_zeros(shape)] * identity)


def _bottleneck_tables(blocks: list[nn.Module]) -> list[torch.Tensor]:
    """Down (S+1, D, r), down bias (S+1, r), up (S+1, r, D), up bias, norm gain, norm bias (S+1, D) of S
    Bottleneck or MmsAdapter blocks, zero-padded to the largest r; the last entry is the identity (all zeros)."""
    dim, size = blocks[0].up.out_features, max(b.down.out_features for b in blocks)
    return [
        _stacked([b.down.weight.T for b in blocks], (dim, size), identity=True),
        _stacked([b.down.bias for b in blocks], (size,), identity=True),
        _stacked([b.up.weight.T for b in blocks], (size, dim), identity=True),
        _stacked([b.up.bias for b in blocks], (dim,), identity=True),
        _stacked([b.norm.weight for b in blocks], (dim,), identity=True),
        _stacked([b.norm.bias for b in blocks], (dim,), identity=True),
    ]


def _scale_shift(x: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, T, D) x scaled and shifted by per-row (B, D) gain and shift."""
    return torch.addcmul(shift.unsqueeze(1), x, gain.unsqueeze(1))


def _activate(h: torch.Tensor, activations: list[nn.Module | None]) -> torch.Tensor:
    """Each row's activation (None: an identity row, whose output is zero whatever it gets); one pass per
    distinct activation."""
    kinds = {type(a): a for a in activations if a is not None}
    if len(kinds) == 1:
        return next(iter(kinds.values()))(h)
    out = h
    for kind, act in kinds.items():
        rows = torch.tensor([type(a) is kind for a in activations], device=h.device)
        out = torch.where(rows.view(-1, 1, 1), act(h), out)
    return out


def _gathered_bottleneck(x: torch.Tensor, tables: list[torch.Tensor], index: torch.Tensor,
                         activations: list[nn.Module | None], pre_norm: bool, eps: float) -> torch.Tensor:
    """x + row i's adapter entry ``index[i]`` of the tables, all rows in one batched matmul per projection."""
    down, down_bias, up, up_bias, gain, shift = (t.index_select(0, index) for t in tables)

    def norm(h: torch.Tensor) -> torch.Tensor:
        return _scale_shift(nn.functional.layer_norm(h, h.shape[-1:], eps=eps), gain, shift)

    h = torch.baddbmm(down_bias.unsqueeze(1), norm(x) if pre_norm else x, down)
    h = torch.baddbmm(up_bias.unsqueeze(1), _activate(h, activations), up)
    return x + (h if pre_norm else norm(h))


class LayerAdapters(nn.Module):
    """The adapters of one transformer layer, keyed by set name; applied by forward hooks."""

    def __init__(self, routing: Routing, place: int):
        super().__init__()
        self.sets = nn.ModuleDict()
        self.routing = routing
        self.place = place
        self.hooked_forms: set[str] = set()
        self.tables: dict[str, StackedTables] = {}
        """The gathered routing's stacked weights per hook kind (a plain attribute: no state-dict keys)."""

    def _run(self, which: str, stack: Stack, x: torch.Tensor) -> torch.Tensor:
        for name in stack:
            if name in self.sets and which in self.sets[name]:
                x = self.sets[name][which](x)
        return x

    def _adapt(self, which: str, x: torch.Tensor) -> torch.Tensor:
        return self.routing.combined(x, self.place, lambda rows: self._route(which, rows))

    def _route(self, which: str, x: torch.Tensor) -> torch.Tensor:
        stack = self.routing.uniform(x.shape[0])
        if stack is not None:
            return self._run(which, stack, x)
        if self.routing.grouped:
            return _apply_grouped(self.routing, x, lambda s, rows: self._run(which, s, rows))
        return self._gathered(which, x)

    def _gathered(self, which: str, x: torch.Tensor) -> torch.Tensor:
        names = [n for n, block in self.sets.items() if which in block]
        blocks = [self.sets[n][which] for n in names]
        position = {n: i for i, n in enumerate(names)}
        identity = len(names)
        for row_names in self.routing.positions():
            index = [position.get(n, identity) for n in row_names]
            if len(set(index)) == 1:  # one entry for every row: no gather
                x = x if index[0] == identity else blocks[index[0]](x)
                continue
            params = [p for b in blocks for p in b.parameters()]
            tables = self.tables.setdefault(which, StackedTables()).get(params, lambda: _bottleneck_tables(blocks))
            activations = [blocks[i].act if i < identity else None for i in index]
            x = _gathered_bottleneck(x, tables, torch.tensor(index, device=x.device), activations,
                                     blocks[0].pre_norm, blocks[0].norm.eps)
        return x

    def attention_hook(self, module, args, output):
        # Attention modules return (hidden, weights, ...): adapt the hidden states only.
        return (self._adapt("attention", output[0]), *output[1:])

    def feed_forward_hook(self, module, args, output):
        return self._adapt("feed_forward", output)

    def layer_hook(self, module, args, output):
        # wav2vec2 and HuBERT layers return the hidden states, WavLM's (hidden, position bias).
        hidden = self._adapt("adapter_layer", output[0] if isinstance(output, tuple) else output)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def hook(self, layer: nn.Module, form: str) -> None:
        """Register the forward hooks a set of ``form`` runs by, once per form."""
        if form in self.hooked_forms:
            return
        if form == "houlsby":
            layer.attention.register_forward_hook(self.attention_hook)
            layer.feed_forward.register_forward_hook(self.feed_forward_hook)
        else:
            layer.register_forward_hook(self.layer_hook)
        self.hooked_forms.add(form)


class TaskLayerNorm(nn.LayerNorm):
    """A LayerNorm that shares the base parameters and holds per-task copies; the routed stack's
    topmost set that owns a copy decides which affine parameters normalise its rows."""

    routing: Routing

    @classmethod
    def wrap(cls, base: nn.LayerNorm, routing: Routing, place: int) -> TaskLayerNorm:
        ln = cls(base.normalized_shape, eps=base.eps, elementwise_affine=True,
                 device=base.weight.device, dtype=base.weight.dtype)
        ln.weight, ln.bias = base.weight, base.bias  # the same Parameter objects: names unchanged
        ln.tasks = nn.ModuleDict()
        ln.routing = routing
        ln.place = place
        ln.table = StackedTables()  # per-row gains and biases of a mixed batch
        return ln

    def add_task(self, name: str, init_from: str | None) -> None:
        source = self.tasks[init_from] if init_from in self.tasks else self
        copy = nn.LayerNorm(self.normalized_shape, eps=self.eps, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            copy.weight.copy_(source.weight)
            copy.bias.copy_(source.bias)
        self.tasks[name] = copy

    def _owner(self, stack: Stack) -> int:
        """0 for the base parameters, else 1 + the index in ``tasks`` of the stack's topmost set with a copy."""
        names = list(self.tasks)
        return next((1 + names.index(n) for n in reversed(stack) if n in self.tasks), 0)

    def _norm(self, stack: Stack, x: torch.Tensor) -> torch.Tensor:
        owner = next((self.tasks[n] for n in reversed(stack) if n in self.tasks), self)
        return nn.functional.layer_norm(x, self.normalized_shape, owner.weight, owner.bias, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.routing.combined(x, self.place, self._route)

    def _route(self, x: torch.Tensor) -> torch.Tensor:
        stack = self.routing.uniform(x.shape[0])
        if stack is not None:
            return self._norm(stack, x)
        if self.routing.grouped:
            return _apply_grouped(self.routing, x, self._norm)
        owners = [self._owner(s) for s in self.routing.stacks]
        if len(set(owners)) == 1:
            return self._norm(self.routing.stacks[0], x)
        norms = [self, *self.tasks.values()]
        params = [p for n in norms for p in (n.weight, n.bias)]
        gains, shifts = self.table.get(params, lambda: [_stacked(params[i::2], self.normalized_shape, identity=False)
                                                        for i in (0, 1)])
        index = torch.tensor(owners, device=x.device)
        normed = nn.functional.layer_norm(x, self.normalized_shape, eps=self.eps)
        return _scale_shift(normed, gains.index_select(0, index), shifts.index_select(0, index))


def encoder_of(model: nn.Module) -> nn.Module:
    """The transformer encoder (the module holding ``layers``) of a base, CTC or pre-training model."""
    for _, module in model.named_modules():
        if type(module).__name__.endswith(("Encoder", "EncoderStableLayerNorm")) and hasattr(module, "layers"):
            return module
    raise WavadaptError(f"{type(model).__name__} has no wav2vec2/HuBERT/WavLM transformer encoder")


def _routing(model: nn.Module) -> Routing:
    encoder = encoder_of(model)
    if not hasattr(encoder, "adapter_routing"):
        encoder.adapter_routing = Routing()
    return encoder.adapter_routing


def _pre_ln(encoder: nn.Module) -> bool:
    return type(encoder).__name__.endswith("StableLayerNorm")


def adapted_layers(num_layers: int, top_n: int | None) -> list[int]:
    """Indices of the layers an adapter set covers: all, or the top N."""
    if top_n is None:
        return list(range(num_layers))
    if not 1 <= top_n <= num_layers:
        raise WavadaptError(f"top_n must be in 1..{num_layers}, got {top_n}")
    return list(range(num_layers - top_n, num_layers))


def _check_form(config: AdapterConfig, encoder: nn.Module) -> None:
    if config.form not in FORMS:
        raise WavadaptError(f"unknown adapter form {config.form!r}; choose from {', '.join(FORMS)}")
    if config.form != "mms":
        return
    if not _pre_ln(encoder):
        raise WavadaptError(f"the mms adapter form needs a pre-LN (stable layer norm) encoder, not a post-LN "
                            f"{type(encoder).__name__}")
    if config.top_n is not None or config.layer_norms or config.activation != "relu":
        raise WavadaptError("the mms adapter form is transformers' adapter layer in every layer: give it no top_n, "
                            "layer_norms=False and the relu activation")


def _block(dim: int, config: AdapterConfig) -> nn.ModuleDict:
    if config.form == "mms":
        return nn.ModuleDict({"adapter_layer": MmsAdapter(dim, config.size, config.init_scale)})
    return nn.ModuleDict({kind: Bottleneck(dim, config.size, config.activation, config.init_scale)
                          for kind in ("attention", "feed_forward")})


def _task_layer_norm(owner: nn.Module, attr: str, routing: Routing, place: int) -> TaskLayerNorm:
    ln = getattr(owner, attr)
    if not isinstance(ln, TaskLayerNorm):
        ln = TaskLayerNorm.wrap(ln, routing, place)
        setattr(owner, attr, ln)
    return ln


def add_adapter(model: nn.Module, name: str, config: AdapterConfig, init_layer_norms_from: str | None = None) -> None:
    """Insert adapter set ``name`` into every (or the top N) layer of the model's encoder.

    Its layer-norm copies start from set ``init_layer_norms_from`` where that set has them (e.g. a task
    adapter starting from its language's layer norms), else from the base model's.
    """
    if not name or "." in name:
        raise WavadaptError(f"invalid adapter name {name!r}: must be non-empty and contain no '.'")
    if name in adapter_names(model):
        raise WavadaptError(f"the model already has an adapter set named {name!r}")
    encoder = encoder_of(model)
    _check_form(config, encoder)
    routing = _routing(model)
    layers = adapted_layers(len(encoder.layers), config.top_n)
    for i in layers:
        layer = encoder.layers[i]
        if not hasattr(layer, "adapters"):
            layer.adapters = LayerAdapters(routing, i)
        layer.adapters.hook(layer, config.form)
        ref = layer.feed_forward.output_dense.weight
        block = _block(ref.shape[0], config).to(device=ref.device, dtype=ref.dtype)
        layer.adapters.sets[name] = block
        if config.layer_norms:
            for attr in ("layer_norm", "final_layer_norm"):
                _task_layer_norm(layer, attr, routing, i).add_task(name, init_layer_norms_from)
    # The encoder-level norm runs after the layers in pre-LN models but before them in post-LN ones,
    # where a top-N set owning it would need backward through every frozen layer.
    if config.layer_norms and (config.top_n is None or _pre_ln(encoder)):
        _task_layer_norm(encoder, "layer_norm", routing, place_of(None, len(encoder.layers))).add_task(
            name, init_layer_norms_from)
    _registry(model)[name] = config


def remove_adapter(model: nn.Module, name: str) -> None:
    """Take adapter set ``name`` out of every layer and layer norm (a server dropping a task); the other sets and
    the base parameters are untouched. The gathered tables rebuild, as their Parameters changed."""
    if name not in adapter_names(model):
        raise WavadaptError(f"unknown adapter set {name!r}; the model has {adapter_names(model)}")
    encoder = encoder_of(model)
    for module in encoder.modules():
        if isinstance(module, LayerAdapters) and name in module.sets:
            del module.sets[name]
        elif isinstance(module, TaskLayerNorm) and name in module.tasks:
            del module.tasks[name]
    routing = _routing(model)
    stacks = [routing.stacks] if isinstance(routing.stacks, tuple) else routing.stacks or []
    if any(name in stack for stack in stacks):
        routing.stacks = None
    del _registry(model)[name]


def _registry(model: nn.Module) -> dict[str, AdapterConfig]:
    encoder = encoder_of(model)
    if not hasattr(encoder, "adapter_configs"):
        encoder.adapter_configs = {}
    return encoder.adapter_configs


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapter sets in the model, in insertion order."""
    return list(_registry(model))


def adapter_config(model: nn.Module, name: str) -> AdapterConfig:
    return _registry(model)[name]


def _as_stack(names: str | Sequence[str] | None) -> Stack:
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def set_active(model: nn.Module, stack: str | Sequence[str] | None = None,
               per_sample: Sequence[str | Sequence[str] | None] | None = None) -> None:
    """Activate one adapter stack for the whole batch (``"es"`` or ``("es", "es/asr")``), or route each
    batch element to its own stack with ``per_sample``; ``None`` runs the bare backbone."""
    known = set(adapter_names(model))
    stacks = [_as_stack(s) for s in per_sample] if per_sample is not None else [_as_stack(stack)]
    unknown = {n for s in stacks for n in s} - known
    if unknown:
        raise WavadaptError(f"unknown adapter set(s) {sorted(unknown)}; the model has {sorted(known)}")
    _routing(model).stacks = stacks if per_sample is not None else stacks[0]


def active_stack(model: nn.Module) -> Stack | list[Stack] | None:
    return _routing(model).stacks


def set_combination(model: nn.Module, stacks: Sequence[Sequence[str | Sequence[str] | None]],
                    weights: torch.Tensor) -> None:
    """Route row b through the combination of the stacks ``stacks[b]`` (padded with the bare backbone at weight 0
    to the longest row's count) with ``weights`` (B, K) or per place (places, B, K): see :class:`Mixture`."""
    components = max(map(len, stacks))
    set_active(model, per_sample=[s for row in stacks for s in [*row, *[None] * (components - len(row))]])
    _routing(model).mixture = Mixture(components, weights)


@contextlib.contextmanager
def combining(model: nn.Module, stacks: Sequence[Sequence[str | Sequence[str] | None]], weights: torch.Tensor):
    """:func:`set_combination` inside the block, then the previous routing."""
    routing = _routing(model)
    saved = routing.stacks, routing.mixture
    set_combination(model, stacks, weights)
    try:
        yield
    finally:
        routing.stacks, routing.mixture = saved


def disable_adapters(model: nn.Module):
    """Run the bare backbone inside the block, then restore the previous routing."""
    return _routing_set(model, "stacks", None)


def grouped_routing(model: nn.Module):
    """Inside the block, run mixed batches by the loop over distinct stacks (one pass of index_select /
    index_copy per stack), the routing the gathered one replaced: the baseline it is benchmarked against."""
    return _routing_set(model, "grouped", True)


@contextlib.contextmanager
def _routing_set(model: nn.Module, attr: str, value):
    routing = _routing(model)
    saved = getattr(routing, attr)
    setattr(routing, attr, value)
    try:
        yield
    finally:
        setattr(routing, attr, saved)


def is_adapter_key(key: str) -> bool:
    """Whether a parameter / state-dict key belongs to an adapter set or a per-task layer-norm copy."""
    return ".adapters.sets." in key or ".tasks." in key


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors: its state dict without adapter sets and layer-norm copies."""
    return {k: v for k, v in model.state_dict().items() if not is_adapter_key(k)}


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Every parameter that belongs to adapter set ``name`` (adapters and its layer-norm copies)."""
    if name not in adapter_names(model):
        raise WavadaptError(f"unknown adapter set {name!r}; the model has {adapter_names(model)}")
    marks = (f".adapters.sets.{name}.", f".tasks.{name}.")
    return {k: p for k, p in model.named_parameters() if any(m in k for m in marks)}
