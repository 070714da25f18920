"""Parameter accounting of the fine-tuning methods: how much of the fine-tuned model trains.

The share is the first paper's (Thomas et al. 2022, Table 1): trainable parameters over the total
parameters of the fine-tuned model, which is the backbone encoder (no quantizer) + the CTC head + the
adapters and layer-norm copies the method adds. What trains is decided by `methods.prepare` on a real
`CTCModel`, never re-derived here; presets are built on the meta device, so even Large counts instantly.
"""

import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from wavadapt.data.text import SPECIAL_TOKENS, WORD_DELIMITER, Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.backbone import (
    COMPONENTS,
    PRESETS,
    build_backbone,
    component_of,
    load_backbone,
    make_config,
    resolve_checkpoint,
)
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import METHODS, MethodConfig, prepare

BackboneFactory = Callable[[], PreTrainedModel]

LABELS = {name: label for name, label, _ in COMPONENTS} | {"other": "other"}
"""Row label of each component, in forward order."""

TASK = "asr"
LIBRISPEECH_VOCAB_SIZE = 32
"""fairseq's LibriSpeech letter dictionary: 4 specials + ``|`` + 26 letters + apostrophe."""

DENOMINATOR = (
    "total = every parameter of the fine-tuned model: the backbone encoder ({backbone}, no quantizer) "
    "+ the CTC head + the adapters and layer-norm copies the method adds"
)


@dataclass
class Account:
    """What one method trains on one backbone. ``components`` maps each present component (see
    `backbone.COMPONENTS`) to its trainable and frozen counts."""

    method: str
    top_n: int | None
    adapter_size: int | None
    """None for the methods without adapters."""
    adapter_form: str | None
    """``houlsby`` or ``mms``; None for the methods without adapters."""
    layers: int
    vocab_size: int
    backbone: str
    """The backbone's class (Wav2Vec2Model, HubertModel, WavLMModel)."""
    total: int
    trainable: int
    components: dict[str, dict[str, int]]

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def percent(self) -> float:
        """Trainable share of the total, in percent."""
        return 100 * self.trainable / self.total

    @property
    def denominator(self) -> str:
        return DENOMINATOR.format(backbone=self.backbone)

    def describe_method(self) -> str:
        """E.g. ``top-n-adapters (size 256, top 6 of 12 layers)``, ``adapters (mms form, size 16, all 24 layers)``."""
        details = [f"size {self.adapter_size}"] if self.adapter_size is not None else []
        if self.adapter_form == "mms":  # the papers' houlsby form goes without saying
            details.insert(0, "mms form")
        if self.top_n is not None:
            details.append(f"top {self.top_n} of {self.layers} layers")
        elif self.method != "head-only":
            details.append(f"all {self.layers} layers")
        return f"{self.method} ({', '.join(details)})" if details else self.method

    def to_dict(self) -> dict:
        return {**asdict(self), "frozen": self.frozen, "percent": self.percent, "denominator": self.denominator}


def count_parameters(model: nn.Module, base_model_prefix: str = "backbone") -> dict:
    """Total, trainable and frozen parameters of ``model``, and per component (`backbone.component_of`
    on names below ``base_model_prefix``): ``{"total", "trainable", "frozen", "components": {component:
    {"trainable", "frozen"}}}``. Shared parameters count once; works on meta-device models."""
    components: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        row = components.setdefault(component_of(name, base_model_prefix), {"trainable": 0, "frozen": 0})
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
    order = list(LABELS)
    components = dict(sorted(components.items(), key=lambda item: order.index(item[0])))
    trainable = sum(row["trainable"] for row in components.values())
    frozen = sum(row["frozen"] for row in components.values())
    return {"total": trainable + frozen, "trainable": trainable, "frozen": frozen, "components": components}


def placeholder_vocabulary(size: int = LIBRISPEECH_VOCAB_SIZE) -> Vocabulary:
    """A vocabulary of ``size`` tokens (specials, ``|``, then placeholder letters): only its size matters."""
    fixed = len(SPECIAL_TOKENS) + 1
    if size < fixed + 1:
        raise WavadaptError(f"vocabulary size must be at least {fixed + 1} (4 specials, '|', a letter), got {size}")
    return Vocabulary([*SPECIAL_TOKENS, WORD_DELIMITER, *(f"<c{i}>" for i in range(size - fixed))])


def backbone_factory(source: str, family: str | None = None, trust_pickle: bool = False) -> BackboneFactory:
    """Fresh meta-device backbones shaped like ``source``: a preset (with ``family``, default wav2vec2),
    a Hugging Face checkpoint directory or a fairseq .pt. A checkpoint is loaded once, which checks it,
    then only its config is kept: every method adds its own adapters to its own copy."""
    if source in PRESETS:
        family = family or "wav2vec2"
        make_config(source, family)  # an unknown family fails here, before any method runs
        config_source = None
    elif family is not None:
        raise WavadaptError("--family applies to presets only: a checkpoint names its own family")
    else:
        if not resolve_checkpoint(source).exists():
            raise WavadaptError(f"{source}: neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint")
        loaded = load_backbone(source, trust_pickle=trust_pickle)
        config_source = (type(loaded), loaded.config)
        del loaded

    def build() -> PreTrainedModel:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            if config_source is None:
                return build_backbone(source, family)
            model_cls, config = config_source
            return model_cls(config)

    return build


def method_account(
    backbone: BackboneFactory, config: MethodConfig, vocab: Vocabulary | int = LIBRISPEECH_VOCAB_SIZE
) -> Account:
    """Prepare a fresh backbone from ``backbone()`` + CTC head for ``config`` and count what trains."""
    if config.method.endswith("adapters") and config.adapter_size < 1:
        raise WavadaptError(f"adapter size must be positive, got {config.adapter_size}")
    vocab = placeholder_vocabulary(vocab) if isinstance(vocab, int) else vocab
    model = CTCModel(backbone())
    prepare(model, TASK, vocab, config)
    counts = count_parameters(model)
    adapters = config.method.endswith("adapters")
    return Account(
        method=config.method,
        top_n=config.top_n,
        adapter_size=config.adapter_size if adapters else None,
        adapter_form=config.adapter_form if adapters else None,
        layers=model.backbone.config.num_hidden_layers,
        vocab_size=len(vocab),
        backbone=type(model.backbone).__name__,
        total=counts["total"],
        trainable=counts["trainable"],
        components=counts["components"],
    )


def all_accounts(
    backbone: BackboneFactory, adapter_size: int = 256, vocab: Vocabulary | int = LIBRISPEECH_VOCAB_SIZE,
    adapter_form: str = "houlsby",
) -> list[Account]:
    """Every method: full, adapters, head-only, then both top-N methods for N = 1 .. layers (top-n-full only
    for the mms form, which adapts every layer)."""
    layers = backbone().config.num_hidden_layers
    configs = [MethodConfig(m, adapter_size=adapter_size, adapter_form=adapter_form)
               for m in METHODS if not m.startswith("top-n")]
    configs += [
        MethodConfig(m, top_n=n, adapter_size=adapter_size)
        for m in METHODS if m.startswith("top-n") and not (m == "top-n-adapters" and adapter_form == "mms")
        for n in range(1, layers + 1)
    ]  # fmt: skip
    return [method_account(backbone, c, vocab) for c in configs]


def format_account(account: Account, source: str) -> str:
    """One account as text: the method, the trainable / frozen table by component, the share."""
    lines = [
        f"{account.describe_method()} on {source} ({account.backbone}), CTC head over {account.vocab_size} tokens",
        "",
        f"  {'component':<28}{'trainable':>14}{'frozen':>14}",
    ]
    lines += [f"  {LABELS[c]:<28}{row['trainable']:>14,}{row['frozen']:>14,}" for c, row in account.components.items()]
    lines += [
        "  " + "-" * 56,
        f"  {'total':<28}{account.trainable:>14,}{account.frozen:>14,}",
        "",
        f"  trainable {account.trainable:,} of {account.total:,} = {account.percent:.2f}%"
        f"  (frozen {100 - account.percent:.2f}%)",
        _wrapped(account.denominator),
    ]
    return "\n".join(lines)


def format_table(accounts: list[Account], source: str) -> str:
    """Several accounts as one table, one row per method (and N)."""
    first = accounts[0]
    sizes = {a.adapter_size for a in accounts} - {None}
    lines = [
        f"{source} ({first.backbone}, {first.layers} layers), CTC head over {first.vocab_size} tokens"
        + (f", adapter size {sizes.pop()}" if len(sizes) == 1 else ""),
        "",
        f"  {'method':<16}{'N':>4}{'trainable':>14}{'total':>14}{'trainable %':>13}",
    ]
    for a in accounts:
        n = a.top_n if a.top_n is not None else "-"
        lines.append(f"  {a.method:<16}{n:>4}{a.trainable:>14,}{a.total:>14,}{a.percent:>13.2f}")
    lines += ["", _wrapped(first.denominator)]
    return "\n".join(lines)


def _wrapped(text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="          ")
