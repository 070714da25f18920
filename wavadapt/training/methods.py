"""Fine-tuning methods: which parameters of a CTCModel train for a new ASR task.

=================  ======================================================================================
``full``           everything but the CNN feature encoder; the transformer waits ``freeze_updates`` updates
                   while only the head trains (fairseq's freeze_finetune_updates)
``top-n-full``     the top N transformer layers and everything between the CNN and the layers (feature
                   projection, positional conv, mask embedding, encoder layer norm) + head: this is the
                   reading that reproduces the first paper's 65.5% for N = 8
``adapters``       an adapter set in every layer with its own copies of the encoder layer norms + head
``top-n-adapters`` the same in the top N layers only; the layers below run without autograd
``head-only``      the CTC head on a frozen encoder (the SUPERB-style baseline)
=================  ======================================================================================

Adapter methods never change a base parameter: the set owns its layer-norm copies, so the adapter
file alone (adapters + norms + head) reproduces the model on the same backbone. ``stack_on`` names a
language adapter that the new task adapter sits on (cwav2vec 2.0 fine-tuning, MAD-X style); the
language adapter stays frozen and the task's layer norms start from the language's.

``adapter_form`` picks the adapter: ``houlsby`` (the papers') or ``mms`` (MMS's one adapter per pre-LN layer,
exportable to transformers' MMS layout; every layer, so ``adapters`` only, and no layer-norm copies).
"""

from dataclasses import dataclass

from torch import nn

from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import (
    FORMS,
    AdapterConfig,
    adapted_layers,
    adapter_parameters,
    add_adapter,
    encoder_of,
    is_adapter_key,
)
from wavadapt.model.ctc import CTCModel

METHODS = ("full", "top-n-full", "adapters", "top-n-adapters", "head-only")


@dataclass
class MethodConfig:
    """What trains: the method, N for the top-N methods, the adapter size, the freeze phase of ``full``."""

    method: str = "adapters"
    top_n: int | None = None
    adapter_size: int = 256
    freeze_updates: int = 0
    """``full`` only: updates during which the transformer stays frozen and only the head trains."""
    stack_on: str | None = None
    """Adapter methods only: an existing (language) adapter set the new task adapter is stacked on."""
    adapter_form: str = "houlsby"
    """Adapter methods only: ``houlsby`` or ``mms`` (see `wavadapt.model.adapters`)."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise WavadaptError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        needs_n = self.method.startswith("top-n")
        if needs_n and self.top_n is None:
            raise WavadaptError(f"method {self.method} needs --top-n")
        if not needs_n and self.top_n is not None:
            raise WavadaptError(f"--top-n applies to top-n-full and top-n-adapters, not {self.method}")
        if self.stack_on is not None and "adapters" not in self.method:
            raise WavadaptError(f"--stack-on applies to the adapter methods, not {self.method}")
        if self.adapter_form not in FORMS:
            raise WavadaptError(f"unknown adapter form {self.adapter_form!r}; choose from {', '.join(FORMS)}")
        if self.adapter_form == "mms" and needs_n:
            raise WavadaptError(f"the mms adapter form adapts every layer: use method adapters, not {self.method}")


SMALL_MODEL = 256
"""Hidden sizes up to this are the tiny models (the shipped ones, 192): they need other settings than Base, as the
demo measured (with the papers' Base settings its Dutch adapters stayed at 100% CER, all blank, after 1000
updates; with these, 75.9%)."""


def default_lr(method: str, hidden_size: int) -> float:
    """The peak learning rate a method gets unless told: fairseq's 5e-5 for full fine-tuning of a Base-size model
    and 1e-3 for adapters (MMS's); 1e-3 and 1e-2 for the tiny models."""
    full = method in ("full", "top-n-full")
    if hidden_size <= SMALL_MODEL:
        return 1e-3 if full else 1e-2
    return 5e-5 if full else 1e-3


def default_adapter_size(hidden_size: int) -> int:
    """The papers' 256 for Base and larger; 64 for the tiny models, whose layers are 192 wide."""
    return 64 if hidden_size <= SMALL_MODEL else 256


def prepare(model: CTCModel, task: str, vocab: Vocabulary, config: MethodConfig) -> dict[str, nn.Parameter]:
    """Add the task (head, and adapters for the adapter methods) and set ``requires_grad`` so exactly the
    method's parameters train; returns them by name.

    A task the model already has without adapters (the head of a fine-tuned checkpoint) is continued: its head
    and vocabulary are kept and train on with ``full``, ``top-n-full`` or ``head-only``."""
    backbone = model.backbone
    encoder = encoder_of(backbone)
    adapters = config.method.endswith("adapters")
    if task in model.heads:
        if adapters or model.stacks[task]:
            raise WavadaptError(f"the model already has a task {task!r}: continue it with full, top-n-full or "
                                "head-only, or give the new adapters a task name of their own (--task)")
    elif adapters:
        form = config.adapter_form
        add_adapter(backbone, task, AdapterConfig(size=config.adapter_size, top_n=config.top_n, form=form,
                                                  layer_norms=form == "houlsby"),
                    init_layer_norms_from=config.stack_on)
    if task not in model.heads:
        model.add_task(task, vocab, ((config.stack_on,) if config.stack_on else ()) + ((task,) if adapters else ()))
    model.activate(task)

    model.requires_grad_(False)
    # Also stops transformers' CNN from marking its output as requiring grad (for gradient checkpointing),
    # which would make every frozen layer above it record autograd state. (HubertModel lacks the public
    # freeze_feature_encoder; every family's feature encoder has this.)
    backbone.feature_extractor._freeze_parameters()
    names = {f"heads.{task}.{k}" for k, _ in model.heads[task].named_parameters()}
    if adapters:
        names |= {f"backbone.{k}" for k in adapter_parameters(backbone, task)}
    elif config.method in ("full", "top-n-full"):
        frozen = list(backbone.feature_extractor.parameters())
        if config.top_n is not None:
            top = adapted_layers(len(encoder.layers), config.top_n)
            frozen += [p for i, layer in enumerate(encoder.layers) if i not in top for p in layer.parameters()]
        frozen_ids = {id(p) for p in frozen}
        # Base parameters only: other tasks' adapters and layer-norm copies are theirs.
        names |= {f"backbone.{k}" for k, p in backbone.named_parameters()
                  if id(p) not in frozen_ids and not is_adapter_key(k)}
    params = {k: p for k, p in model.named_parameters() if k in names}
    for p in params.values():
        p.requires_grad_(True)
    return params
