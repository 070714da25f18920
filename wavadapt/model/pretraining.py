"""wav2vec 2.0 self-supervised pre-training with one projection head per task (language).

``PretrainingModel`` = ``backbone`` (transformers' Wav2Vec2Model, parameter names unchanged, so adapters
attach to it) + ``heads``: per task the Gumbel quantizer (transformers' module, G=2 codebooks of V=320),
``project_q`` (codevector -> final dim) and ``project_hid`` (context -> final dim). One head per task gives
the multi-head baselines and cwav2vec 2.0 of the second paper their task-specific projection heads.

The forward pass follows fairseq's ``Wav2Vec2Model.forward`` + ``wav2vec`` criterion in named stages::

    extract_features   CNN (gradient x feature_grad_mult) -> (B, C, T), then features_from_cnn:
                       (B, T, C) features, L2 feature penalty, layer norm + projection -> (B, T, D)
                       (a frozen CNN's output can come from a ``wavadapt.training.feature_cache`` instead)
    mask               span masking (objectives.masking) with the backbone's masked_spec_embed
    encode             transformer encoder (+ adapters of the active task) -> (B, T, D) context
    quantize_and_contrast
                       quantize the unmasked features of the N masked steps, project both sides,
                       K distractors per step -> (N, 1 + K) cosine logits / 0.1
    compute_loss       contrastive CE + 0.1 diversity + 10 feature penalty, all scaled to sums over the
                       N masked steps as fairseq's criterion does (fp32)

Checkpoints: :meth:`PretrainingModel.to_hf` exports one task as a transformers ``Wav2Vec2ForPreTraining``
(what ``load_pretraining_model`` reads); :func:`save_pretraining` / :func:`load_pretraining` keep every
head and adapter set (``pretraining.safetensors`` + ``pretraining.json``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.model.adapters import (
    AdapterConfig,
    adapter_config,
    adapter_names,
    add_adapter,
    base_state,
    set_active,
)
from wavadapt.objectives.contrastive import contrastive_logits, contrastive_loss, sample_negatives
from wavadapt.objectives.masking import compute_mask_indices

FORMAT = "wavadapt-pretraining"
VERSION = 1


@dataclass
class PretrainingConfig:
    """The objective's hyper-parameters (fairseq ``wav2vec2`` model / ``wav2vec`` criterion, Base values)."""

    mask_prob: float = 0.65
    """Probability of a frame starting a masked span (~49% of frames end up masked)."""
    mask_length: int = 10
    min_masks: int = 2
    require_same_masks: bool = True
    """fairseq: every utterance of a batch keeps the same number of masked steps (the batch's fewest)."""
    num_negatives: int = 100
    logit_temperature: float = 0.1
    """kappa of eq. 3."""
    diversity_weight: float = 0.1
    """alpha of eq. 4."""
    feature_penalty_weight: float = 10.0
    """L2 penalty on the CNN output (Base on LibriSpeech; 0 for Large on LV-60k)."""
    feature_grad_mult: float = 0.1
    """Scale of the gradient reaching the CNN; 0 freezes it (run without autograd)."""
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    """Gumbel temperature (start, floor, decay per update)."""


def gumbel_temperature(update: int, latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)) -> float:
    """fairseq's ``GumbelVectorQuantizer.set_num_updates``: max(start * decay**update, floor)."""
    start, floor, decay = latent_temp
    return max(start * decay**update, floor)


class GradMultiply(torch.autograd.Function):
    """Identity forward; the backward pass scales the gradient (fairseq's GradMultiply)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class ContrastiveHead(nn.Module):
    """A task's quantizer and projections, named as in ``Wav2Vec2ForPreTraining``."""

    def __init__(self, quantizer: Wav2Vec2GumbelVectorQuantizer, project_q: nn.Linear, project_hid: nn.Linear):
        super().__init__()
        self.quantizer = quantizer
        self.project_q = project_q
        self.project_hid = project_hid

    @classmethod
    def fresh(cls, config: Wav2Vec2Config) -> ContrastiveHead:
        """Randomly initialised as transformers' ``_init_weights`` and fairseq do."""
        quantizer = Wav2Vec2GumbelVectorQuantizer(config)
        nn.init.normal_(quantizer.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(quantizer.weight_proj.bias)
        nn.init.uniform_(quantizer.codevectors)
        return cls(quantizer, nn.Linear(config.codevector_dim, config.proj_codevector_dim),
                   nn.Linear(config.hidden_size, config.proj_codevector_dim))

    @property
    def num_codevectors(self) -> int:
        """G * V."""
        return self.quantizer.num_groups * self.quantizer.num_vars


@dataclass
class Quantized:
    codevectors: torch.Tensor
    """(N, codevector_dim) one codevector per group, concatenated."""
    prob_perplexity: torch.Tensor
    """() sum over groups of exp(entropy) of the mean softmax: what the diversity loss maximises."""
    code_perplexity: torch.Tensor
    """() the same for the hard (argmax) code assignments: how many codes are really used."""


def quantize(quantizer: Wav2Vec2GumbelVectorQuantizer, x: torch.Tensor) -> Quantized:
    """fairseq's ``GumbelVectorQuantizer.forward`` with transformers' module and weights: (N, C) -> (N, G*d).

    Written out because transformers' forward reports the hard-code perplexity in eval mode while fairseq's
    diversity loss always uses the softmax one, and we log both. Hard Gumbel-softmax samples (straight-through)
    in training, argmax in eval.
    """
    groups, entries = quantizer.num_groups, quantizer.num_vars
    logits = quantizer.weight_proj(x).view(-1, groups, entries)  # (N, C) -> (N, G, V)

    def perplexity(probs: torch.Tensor) -> torch.Tensor:  # (N, G, V) -> (), summed over groups
        marginal = probs.mean(0)
        return torch.exp(-(marginal * torch.log(marginal + 1e-7)).sum(-1)).sum()  # fairseq's +1e-7

    hard = nn.functional.one_hot(logits.argmax(-1), entries).float()  # (N, G, V)
    if quantizer.training:
        onehot = nn.functional.gumbel_softmax(logits.float(), tau=quantizer.temperature, hard=True)
    else:
        onehot = hard
    codevectors = onehot.type_as(logits).view(-1, groups * entries, 1) * quantizer.codevectors  # (N, G*V, d)
    codevectors = codevectors.view(-1, groups, entries, codevectors.shape[-1]).sum(2)  # (N, G, d)
    return Quantized(codevectors.flatten(1), perplexity(logits.float().softmax(-1)), perplexity(hard))


@dataclass
class FeatureOutput:
    features: torch.Tensor
    """(B, T, C) layer-normed CNN features: the quantizer's (unmasked) input."""
    hidden: torch.Tensor
    """(B, T, D) projected features: the transformer's input."""
    frame_mask: torch.Tensor | None
    """(B, T) True on real frames; None when the batch has no padding mask."""
    penalty: torch.Tensor
    """() fp32 mean squared CNN output over the real frames."""


@dataclass
class ContrastOutput:
    logits: torch.Tensor
    """(N, 1 + K) fp32 logits of the N masked steps, the true target at index 0."""
    prob_perplexity: torch.Tensor
    code_perplexity: torch.Tensor
    num_codevectors: int


class PretrainingOutput(NamedTuple):  # a tuple, so DistributedDataParallel finds its tensors
    """Losses are fp32 sums over the N masked steps (the training loop divides by N)."""

    loss: torch.Tensor
    contrastive: torch.Tensor
    diversity: torch.Tensor
    """N * (GV - prob_perplexity) / GV (unweighted)."""
    feature_penalty: torch.Tensor
    """N * mean squared CNN output (unweighted)."""
    logits: torch.Tensor
    prob_perplexity: torch.Tensor
    code_perplexity: torch.Tensor


class PretrainingModel(nn.Module):
    """``backbone`` (transformers Wav2Vec2Model) + ``heads`` (a :class:`ContrastiveHead` per task).

    A task names a head and the adapter stack the backbone runs for it (``()`` for plain pre-training,
    ``("es",)`` for a cwav2vec 2.0 language adapter); :meth:`activate` switches both.
    """

    def __init__(self, backbone: Wav2Vec2Model, config: PretrainingConfig | None = None):
        super().__init__()
        if backbone.config.model_type != "wav2vec2":
            raise WavadaptError(f"pre-training needs a wav2vec2 backbone, not {backbone.config.model_type}")
        if not hasattr(backbone, "masked_spec_embed"):
            raise WavadaptError("the backbone has no mask embedding: build it with mask_time_prob > 0")
        self.backbone = backbone
        self.heads = nn.ModuleDict()
        self.dropout_features = nn.Dropout(backbone.config.feat_quantizer_dropout)
        self.config = config or PretrainingConfig()
        self.stacks: dict[str, tuple[str, ...]] = {}
        self.active: str | None = None
        self.source: dict | None = None
        """Where the model came from, set by its builder: training records it in run.json."""

    # --- tasks ---

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    @property
    def normalize_waveforms(self) -> bool:
        """fairseq's convention: models with layer-norm CNNs were trained on normalised waveforms."""
        return self.backbone.config.feat_extract_norm == "layer"

    def add_head(self, task: str, init_from: str | None = None, adapters: Sequence[str] = ()) -> None:
        """Add a head for ``task``: a copy of head ``init_from`` or freshly initialised; the task runs the
        backbone with adapter stack ``adapters``."""
        if task in self.heads:
            raise WavadaptError(f"the model already has a head named {task!r}")
        if init_from is not None and init_from not in self.heads:
            raise WavadaptError(f"unknown head {init_from!r}; the model has {self.tasks}")
        if init_from is not None:
            head = copy.deepcopy(self.heads[init_from])
        else:
            ref = self.backbone.masked_spec_embed
            head = ContrastiveHead.fresh(self.backbone.config).to(device=ref.device, dtype=ref.dtype)
        self.heads[task] = head
        self.stacks[task] = tuple(adapters)

    def activate(self, task: str) -> None:
        if task not in self.heads:
            raise WavadaptError(f"unknown task {task!r}; the model has {self.tasks}")
        set_active(self.backbone, self.stacks[task])
        self.active = task

    def set_num_updates(self, update: int) -> None:
        """Anneal every head's Gumbel temperature to ``update`` (call before each update)."""
        for head in self.heads.values():
            head.quantizer.temperature = gumbel_temperature(update, self.config.latent_temp)

    # --- transformers checkpoints ---

    @classmethod
    def from_pretraining(cls, model: Wav2Vec2ForPreTraining, task: str,
                         config: PretrainingConfig | None = None) -> PretrainingModel:
        """Wrap a transformers (or fairseq-converted) pre-training model: its quantizer and projections
        become ``heads[task]`` (the modules are moved, not copied)."""
        wrapped = cls(model.wav2vec2, config)
        wrapped.heads[task] = ContrastiveHead(model.quantizer, model.project_q, model.project_hid)
        wrapped.stacks[task] = ()
        wrapped.dropout_features.p = model.dropout_features.p
        return wrapped.train(model.training)

    def to_hf(self, task: str) -> Wav2Vec2ForPreTraining:
        """A transformers ``Wav2Vec2ForPreTraining`` with the backbone's own weights (no adapters) and
        ``heads[task]``, as independent copies; ``save_pretrained`` writes what ``load_pretraining_model``
        reads."""
        if task not in self.heads:
            raise WavadaptError(f"unknown task {task!r}; the model has {self.tasks}")
        with torch.device("meta"):  # no random init: every tensor is assigned below
            hf = Wav2Vec2ForPreTraining(copy.deepcopy(self.backbone.config))
        state = {f"wav2vec2.{k}": v for k, v in base_state(self.backbone).items()}
        state |= self.heads[task].state_dict()
        hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True, assign=True)
        hf.quantizer.temperature = self.heads[task].quantizer.temperature
        hf.dropout_features.p = self.dropout_features.p
        return hf.train(self.training)

    # --- the forward stages ---

    @property
    def cnn_frozen(self) -> bool:
        """Whether the CNN gets no gradient (``feature_grad_mult`` 0 or no CNN parameter trains): its
        output then only depends on the waveform and can be cached."""
        scale = self.config.feature_grad_mult
        return not (scale > 0 and any(p.requires_grad for p in self.backbone.feature_extractor.parameters()))

    def extract_features(self, waveforms: torch.Tensor, attention_mask: torch.Tensor | None = None) -> FeatureOutput:
        """(B, S) waveforms -> CNN features, projected features, frame mask and feature penalty."""
        cnn = self.backbone.feature_extractor
        if self.cnn_frozen:  # no activations kept for backward
            with torch.no_grad():
                x = cnn(waveforms)  # (B, S) -> (B, C, T)
        else:
            x = cnn(waveforms)
            if self.config.feature_grad_mult != 1.0:
                x = GradMultiply.apply(x, self.config.feature_grad_mult)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self.backbone._get_feature_vector_attention_mask(x.shape[2], attention_mask,
                                                                          add_adapter=False)  # (B, T)
        return self.features_from_cnn(x, frame_mask)

    def features_from_cnn(self, cnn_out: torch.Tensor, frame_mask: torch.Tensor | None = None) -> FeatureOutput:
        """(B, C, T) CNN output (and the (B, T) bool mask of its real frames) -> feature penalty, layer-normed
        features and projected features: the part of :meth:`extract_features` after the CNN."""
        x = cnn_out.transpose(1, 2)  # (B, C, T) -> (B, T, C)
        # fairseq averages over every frame; padding frames (absent there: it crops batches) are left out.
        squares = x.float().pow(2)
        penalty = (squares[frame_mask] if frame_mask is not None else squares).mean()
        hidden, features = self.backbone.feature_projection(x)  # (B, T, C) -> (B, T, D), (B, T, C)
        return FeatureOutput(features, hidden, frame_mask, penalty)

    def mask(self, features: FeatureOutput, mask_indices: torch.Tensor | None = None,
             rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace masked steps of the projected features by the mask embedding.

        Returns the (B, T, D) transformer input and the (B, T) bool mask (drawn with ``rng`` unless
        ``mask_indices`` is given; never on padding).
        """
        hidden = features.hidden
        if mask_indices is None:
            c = self.config
            lengths = None if features.frame_mask is None else features.frame_mask.sum(1).cpu().numpy()
            mask_indices = torch.from_numpy(compute_mask_indices(
                tuple(hidden.shape[:2]), lengths, c.mask_prob, c.mask_length, c.min_masks, c.require_same_masks,
                rng)).to(hidden.device)
        mask_indices = mask_indices.bool()
        embed = self.backbone.masked_spec_embed.to(hidden.dtype)
        return torch.where(mask_indices[..., None], embed, hidden), mask_indices

    def encode(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) masked features -> (B, T, D) context (the active adapter stack runs inside)."""
        return self.backbone.encoder(hidden, attention_mask=frame_mask).last_hidden_state

    def quantize_and_contrast(self, task: str, features: FeatureOutput, context: torch.Tensor,
                              mask: torch.Tensor, negatives: torch.Tensor | None = None,
                              generator: torch.Generator | None = None) -> ContrastOutput:
        """Quantize the unmasked features of the masked steps with ``heads[task]`` and score each step's
        context against its target and K distractors (drawn with ``generator`` unless given as (N, K))."""
        head = self.heads[task]
        quantized = quantize(head.quantizer, self.dropout_features(features.features[mask]))  # (N, C) -> (N, G*d)
        targets = head.project_q(quantized.codevectors)  # (N, G*d) -> (N, F)
        predictions = head.project_hid(context[mask])  # (B, T, D) -> (N, D) -> (N, F)
        if negatives is None:
            negatives = sample_negatives(mask, self.config.num_negatives, generator)
        logits = contrastive_logits(predictions, targets, negatives, self.config.logit_temperature)
        return ContrastOutput(logits, quantized.prob_perplexity, quantized.code_perplexity, head.num_codevectors)

    def compute_loss(self, contrast: ContrastOutput, feature_penalty: torch.Tensor) -> PretrainingOutput:
        """L = L_m + alpha L_d + lambda * penalty, the extra terms scaled by N as fairseq's criterion does
        (``coef * loss * sample_size``) so the whole loss is a sum over the N masked steps."""
        n = len(contrast.logits)
        contrastive = contrastive_loss(contrast.logits)
        num_codes = contrast.num_codevectors
        diversity = (num_codes - contrast.prob_perplexity.float()) / num_codes * n
        penalty = feature_penalty.float() * n
        loss = contrastive + self.config.diversity_weight * diversity + self.config.feature_penalty_weight * penalty
        return PretrainingOutput(loss, contrastive, diversity, penalty, contrast.logits, contrast.prob_perplexity,
                                 contrast.code_perplexity)

    def forward(self, waveforms: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                cnn_features: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                mask_indices: torch.Tensor | None = None, negatives: torch.Tensor | None = None,
                rng: np.random.Generator | None = None,
                generator: torch.Generator | None = None) -> PretrainingOutput:
        """(B, S) 16 kHz waveforms -> the active task's losses. Masks are drawn with ``rng`` and distractors
        with ``generator`` (default: numpy's and torch's global RNGs) unless given.

        Instead of waveforms, a frozen CNN's (B, C, T) output can be given as ``cnn_features`` (cached:
        ``wavadapt.training.feature_cache``) with the (B, T) bool ``frame_mask`` of its real frames."""
        if self.active is None:
            raise WavadaptError("no active task: call activate(task) first")
        if (waveforms is None) == (cnn_features is None):
            raise WavadaptError("give either waveforms or cnn_features")
        if cnn_features is None:
            features = self.extract_features(waveforms, attention_mask)
        else:
            if not self.cnn_frozen:
                raise WavadaptError("cached CNN features need a frozen CNN (feature_grad_mult 0): this model trains it")
            ref = self.backbone.masked_spec_embed
            features = self.features_from_cnn(cnn_features.to(device=ref.device, dtype=ref.dtype),
                                              None if frame_mask is None else frame_mask.to(ref.device))
        hidden, mask = self.mask(features, mask_indices, rng)
        context = self.encode(hidden, features.frame_mask)
        contrast = self.quantize_and_contrast(self.active, features, context, mask, negatives, generator)
        return self.compute_loss(contrast, features.penalty)


# --- the full state: every head and adapter set ---


def save_pretraining(model: PretrainingModel, out_dir: str | Path) -> Path:
    """Write ``pretraining.safetensors`` (backbone, adapter sets, every head) and ``pretraining.json``
    (backbone config, objective, tasks with their adapter stacks, adapter configs); return the JSON's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    save_file(tensors, out_dir / "pretraining.safetensors", metadata={"format": "pt"})
    info = {
        "format": FORMAT,
        "version": VERSION,
        "tasks": {t: {"adapters": list(model.stacks[t]), "temperature": model.heads[t].quantizer.temperature}
                  for t in model.tasks},
        "adapters": {name: asdict(adapter_config(model.backbone, name)) for name in adapter_names(model.backbone)},
        "objective": asdict(model.config),
        "backbone": model.backbone.config.to_dict(),
    }
    path = out_dir / "pretraining.json"
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return path


def load_pretraining(path: str | Path, **overrides) -> PretrainingModel:
    """Rebuild a :func:`save_pretraining` directory (or its JSON) strictly: every tensor must match.

    ``overrides`` change backbone config fields that leave the weights alone (dropouts, layerdrop).
    The model comes back in eval mode.
    """
    path = Path(path)
    json_path = path / "pretraining.json" if path.is_dir() else path
    weights = json_path.with_suffix(".safetensors")
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise CheckpointError(f"{json_path}: not a {FORMAT} v{VERSION} file")
        config = Wav2Vec2Config.from_dict({**info["backbone"], **overrides})
        objective = PretrainingConfig(**{**info["objective"], "latent_temp": tuple(info["objective"]["latent_temp"])})
        state = load_file(weights)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{json_path}: cannot read the pre-training checkpoint ({e})") from None
    model = PretrainingModel(Wav2Vec2Model(config), objective)
    for name, adapter in info["adapters"].items():
        add_adapter(model.backbone, name, AdapterConfig(**adapter))
    for task, entry in info["tasks"].items():
        model.add_head(task, adapters=entry["adapters"])
        model.heads[task].quantizer.temperature = entry["temperature"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: missing keys {sorted(missing)[:5]}, unexpected keys "
                              f"{sorted(unexpected)[:5]}")
    return model.eval()
