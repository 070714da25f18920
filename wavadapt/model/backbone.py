"""The backbone: transformers' wav2vec 2.0 / HuBERT / WavLM models, built from presets or loaded from
Hugging Face checkpoint directories and fairseq .pt files, with a parameter account by component.

Models keep transformers' parameter names, so real checkpoints load without remapping and adapters
(later) attach to named modules.
"""

import json
import re
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    HubertModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMForCTC,
    WavLMModel,
)
from transformers.utils import logging as hf_logging

from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.model.fairseq import format_conv_spec, read_fairseq_checkpoint

SAMPLE_RATE = 16_000

FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
    "wavlm": (WavLMConfig, WavLMModel),
}

CTC_MODELS: dict[str, type[PreTrainedModel]] = {
    "wav2vec2": Wav2Vec2ForCTC, "hubert": HubertForCTC, "wavlm": WavLMForCTC,
}

# The papers' feature encoder: 7 convs, 400-sample receptive field, 320-sample (20 ms) hop.
_CNN = {"conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}
_POST_LN = {"feat_extract_norm": "group", "conv_bias": False, "do_stable_layer_norm": False}

# Architecture shapes only: dropout and masking keep transformers' defaults (override them per recipe).
PRESETS: dict[str, dict] = {
    # CPU tests and the demo (~2.2M parameters): Base's structure and frame rate, narrower and shallower.
    "tiny": {
        "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 768,
        "conv_dim": (128,) * 7, **_CNN, **_POST_LN,
        "num_conv_pos_embeddings": 32, "num_conv_pos_embedding_groups": 16,
    },
    # wav2vec 2.0 / HuBERT / WavLM Base: post-LN, group norm in the first conv only.
    "base": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "conv_dim": (512,) * 7, **_CNN, **_POST_LN,
        "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    },
    # Large (LV-60, XLS-R 300M shape): pre-LN ("stable layer norm"), layer norm and bias in every conv.
    "large": {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
        "conv_dim": (512,) * 7, **_CNN,
        "feat_extract_norm": "layer", "conv_bias": True, "do_stable_layer_norm": True,
        "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    },
}  # fmt: skip

# wav2vec 2.0's quantizer: G=2 codebooks of V=320 entries; codevector / projection dims as released
# (Base 256, Large 768; tiny 64). Tiny has V=64: pre-trained on 20 minutes of synthetic speech, V=320
# collapsed to ~21 codes per group, V=64 kept ~45 in use at the same held-out loss.
QUANTIZER_PRESETS: dict[str, dict] = {
    name: {"num_codevector_groups": 2, "num_codevectors_per_group": v, "codevector_dim": d, "proj_codevector_dim": d}
    for name, v, d in (("tiny", 64, 64), ("base", 320, 256), ("large", 320, 768))
}


def _check_overrides(config_cls: type[PretrainedConfig], overrides: dict) -> None:
    # transformers configs accept any keyword silently; a typo would build the wrong model.
    unknown = sorted(set(overrides) - {f.name for f in fields(config_cls)})
    if unknown:
        raise WavadaptError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)}")


def conv_geometry(config: PretrainedConfig) -> tuple[int, int]:
    """(receptive field, hop) of the CNN in samples: (400, 320) for wav2vec 2.0."""
    field, hop = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


def make_config(preset: str = "tiny", family: str = "wav2vec2", **overrides) -> PretrainedConfig:
    """A transformers config for a preset ("tiny", "base", "large") and family ("wav2vec2", "hubert",
    "wavlm"); `overrides` set any other config field (dropouts, masking, ...)."""
    if preset not in PRESETS:
        raise WavadaptError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if family not in FAMILIES:
        raise WavadaptError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    config_cls = FAMILIES[family][0]
    _check_overrides(config_cls, overrides)
    quantizer = QUANTIZER_PRESETS[preset] if family == "wav2vec2" else {}
    return config_cls(**{**PRESETS[preset], **quantizer, **overrides})


def build_backbone(preset: str = "tiny", family: str = "wav2vec2", **overrides) -> PreTrainedModel:
    """A freshly initialised base model (Wav2Vec2Model / HubertModel / WavLMModel) for a preset.

    Build under `with torch.device("meta"):` to count parameters without allocating them.
    """
    config = make_config(preset, family, **overrides)
    return FAMILIES[family][1](config)


def build_pretraining_model(preset: str = "tiny", **overrides) -> Wav2Vec2ForPreTraining:
    """A freshly initialised wav2vec 2.0 model with quantizer and projections (for pre-training)."""
    return Wav2Vec2ForPreTraining(make_config(preset, "wav2vec2", **overrides))


# --- loading ---

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


SHIPPED = Path(__file__).parent / "shipped"
"""Checkpoints shipped with wavadapt, loadable by name (``tiny-en-synth``: see its README.md)."""


def resolve_checkpoint(source: str | Path) -> Path:
    """``source`` as a path: itself when it exists, else the shipped checkpoint of that name (if any)."""
    path = Path(source)
    if not path.exists() and path.name == str(source) and (SHIPPED / path.name).is_dir():
        return SHIPPED / path.name
    return path


def source_of(model: str | Path, seed: int, **preset) -> dict:
    """What builds or loads ``model`` again from anywhere, for a run's record: a preset with its ``seed`` (and
    ``preset``'s fields, e.g. its family), an absolute path, or a shipped checkpoint's name."""
    if str(model) in PRESETS:
        return {"model": str(model), **preset, "seed": seed}
    return {"model": str(Path(model).resolve()) if Path(model).exists() else str(model)}


def load_backbone(path: str | Path, *, trust_pickle: bool = False, **overrides) -> PreTrainedModel:
    """Load the base encoder (Wav2Vec2Model / HubertModel / WavLMModel) from a checkpoint.

    `path` is a Hugging Face checkpoint directory (config.json + model.safetensors or pytorch_model.bin,
    saved from the base model or from a ForPreTraining / ForCTC model), a fairseq wav2vec 2.0 .pt file
    (a pickle: needs `trust_pickle=True`) or a `wavadapt pretrain` run directory (pretraining.json). Head
    weights (CTC head, quantizer) are dropped; any other missing or unexpected key raises CheckpointError
    listing them. `overrides` change config fields that do not alter the weights (dropouts, masking). The
    model comes back in eval mode, in float32. A shipped checkpoint's name (:data:`SHIPPED`) stands for its
    directory.
    """
    path = resolve_checkpoint(path)
    if (path / "pretraining.json").is_file():  # a `wavadapt pretrain` run: its backbone with any adapter sets
        from wavadapt.model.pretraining import load_pretraining  # it builds on this module

        return load_pretraining(path, **overrides).backbone
    if _is_fairseq_file(path):
        config, state = read_fairseq_checkpoint(path, trust_pickle=trust_pickle)
        return model_from_state(path, Wav2Vec2Model, config, state, overrides)
    family = _hf_family(path)
    model = _from_hf_dir(path, FAMILIES[family][1], overrides)
    split_adapter_layers(model)
    return model


def load_ctc_model(path: str | Path) -> PreTrainedModel:
    """Load a Hugging Face CTC directory as its transformers model (Wav2Vec2ForCTC / HubertForCTC / WavLMForCTC,
    ``lm_head`` included, MMS adapter layers where the config has ``adapter_attn_dim``), with the checks of
    `load_backbone`: a missing ``lm_head`` is a missing key."""
    path = resolve_checkpoint(path)
    if _is_fairseq_file(path):
        raise CheckpointError(f"{path}: not a Hugging Face CTC checkpoint directory")
    return _from_hf_dir(path, CTC_MODELS[_hf_family(path)], {})


def split_adapter_layers(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Take MMS's adapter layers (``config.adapter_attn_dim``) out of ``model``, leaving the bare backbone, and
    return their tensors by ``model``'s state-dict names (``wav2vec2.encoder.layers.<i>.adapter_layer.*`` in a
    Wav2Vec2ForCTC): they hold one language (MMS's ``eng``), like its ``adapter.<lang>.safetensors``."""
    if getattr(model.config, "adapter_attn_dim", None) is None:
        return {}
    owners = [(name, m) for name, m in model.named_modules() if getattr(m, "adapter_layer", None) is not None]
    tensors = {}
    for name, module in owners:
        prefix = f"{name}.adapter_layer."
        tensors |= {prefix + k: t.detach() for k, t in module.adapter_layer.state_dict().items()}
        module.adapter_layer = None
    model.config.adapter_attn_dim = None
    return tensors


def load_pretraining_model(path: str | Path, *, trust_pickle: bool = False, **overrides) -> Wav2Vec2ForPreTraining:
    """Load a wav2vec 2.0 model with its quantizer, `project_q` and `project_hid`, for continual pre-training.

    Same sources and checks as `load_backbone`; a checkpoint without the quantizer weights (a base-model
    or fine-tuned checkpoint) raises CheckpointError.
    """
    path = resolve_checkpoint(path)
    if _is_fairseq_file(path):
        config, state = read_fairseq_checkpoint(path, trust_pickle=trust_pickle)
        return model_from_state(path, Wav2Vec2ForPreTraining, config, state, overrides)
    family = _hf_family(path)
    if family != "wav2vec2":
        raise CheckpointError(f"{path}: a {family} checkpoint has no wav2vec 2.0 quantizer to pre-train with")
    return _from_hf_dir(path, Wav2Vec2ForPreTraining, overrides)


def _is_fairseq_file(path: Path) -> bool:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        return False
    if path.suffix in (".safetensors", ".bin", ".json"):
        raise CheckpointError(f"{path}: pass the Hugging Face checkpoint directory, not one of its files")
    return True


def _hf_family(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json, so not a Hugging Face checkpoint directory")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{config_file}: not a JSON config ({e})") from e
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{config_file}: model_type {model_type!r} is not supported (known: {', '.join(FAMILIES)})"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(f"{path}: no weights ({' or '.join(_WEIGHT_FILES[::2])})")
    return model_type


@contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (problems are reported by _check_keys)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _from_hf_dir(path: Path, model_cls: type[PreTrainedModel], overrides: dict) -> PreTrainedModel:
    _check_overrides(model_cls.config_class, overrides)
    with quiet_transformers():
        try:
            model, info = model_cls.from_pretrained(
                path,
                local_files_only=True,
                output_loading_info=True,
                dtype=torch.float32,
                ignore_mismatched_sizes=True,  # reported below, with the key names
                **overrides,
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{path}: cannot load as {model_cls.__name__}: {str(e).strip().splitlines()[0]}"
            ) from e
    _check_keys(path, model, info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"])
    return model.eval()


def model_from_state(
    path: Path, model_cls: type[PreTrainedModel], config: Wav2Vec2Config, state: dict, overrides: dict
) -> PreTrainedModel:
    _check_overrides(type(config), overrides)
    config.update(overrides)
    model = model_cls(config)
    if model.base_model is model:  # the converted dict has the ForPreTraining layout: drop the prefix
        prefix = model.base_model_prefix + "."
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = model.state_dict()
    mismatched = [
        (k, v.shape, expected[k].shape) for k, v in state.items() if k in expected and v.shape != expected[k].shape
    ]
    _check_keys(path, model, expected.keys() - state.keys(), state.keys() - expected.keys(), mismatched)
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
    return model.eval()


def _few(keys: Iterable[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


_HEAD_PREFIXES = ("quantizer.", "project_q.", "project_hid.")


def _check_keys(path: Path, model: PreTrainedModel, missing, unexpected, mismatched) -> None:
    """Fail loudly on missing keys, on shape mismatches (key, checkpoint shape, model shape) and on
    unexpected keys within the model's own modules.

    Unexpected keys of modules the model does not have (a CTC head, the quantizer when loading the base
    model) are the point of loading a backbone from a bigger checkpoint, so they are dropped.
    """
    own = {name for name, _ in model.named_children()} | {name for name, _ in model.named_parameters(recurse=False)}
    own.add(model.base_model_prefix)
    unexpected = [k for k in unexpected if k.split(".")[0] in own]
    if missing and all(k.startswith(_HEAD_PREFIXES) for k in missing):
        raise CheckpointError(
            f"{path}: no quantizer weights ({_few(missing)}); pre-training needs a "
            "pre-training checkpoint, not a base-model or fine-tuned one"
        )
    mismatched = [
        f"{key} {tuple(found)} in the checkpoint, {tuple(wanted)} in the model" for key, found, wanted in mismatched
    ]
    problems = [
        f"{what}: {_few(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: does not match {type(model).__name__}; " + "; ".join(problems))


# --- accounting ---

# (component, label, pattern on the parameter name below the base model), in forward order.
COMPONENTS: list[tuple[str, str, str]] = [
    ("feature_encoder", "CNN feature encoder", r"feature_extractor\."),
    ("feature_projection", "feature projection", r"feature_projection\."),
    ("mask_embedding", "mask embedding", r"masked_spec_embed$"),
    ("positional_conv", "positional conv", r"encoder\.pos_conv_embed\."),
    ("attention", "attention", r"encoder\.layers\.\d+\.attention\."),
    ("feed_forward", "feed-forward", r"encoder\.layers\.\d+\.feed_forward\."),
    ("layer_norms", "layer norms (in layers)", r"encoder\.layers\.\d+\.(final_)?layer_norm\.(weight|bias)$"),
    ("encoder_layer_norm", "encoder layer norm", r"encoder\.layer_norm\.(weight|bias)$"),
    ("quantizer", "quantizer + projections", r"(quantizer|project_q|project_hid)\."),
    # Added per task (wavadapt.model.adapters, CTCModel): adapter sets, their layer-norm copies, heads.
    ("adapters", "adapters", r"encoder\.layers\.\d+\.adapters\.sets\."),
    ("task_layer_norms", "layer-norm copies (tasks)", r"encoder\.(layers\.\d+\.)?(final_)?layer_norm\.tasks\."),
    ("ctc_head", "CTC head", r"(lm_head|heads)\."),
]
_LABELS = {name: label for name, label, _ in COMPONENTS} | {"other": "other"}


def component_of(name: str, base_model_prefix: str = "") -> str:
    """The accounting component of a parameter name ("other" when no rule matches)."""
    name = name.removeprefix(base_model_prefix + ".") if base_model_prefix else name
    for component, _, pattern in COMPONENTS:
        if re.match(pattern, name):
            return component
    return "other"


def describe(model: PreTrainedModel) -> dict:
    """Architecture summary and parameter counts by component (works on meta-device models).

    Frame figures assume 16 kHz audio. `backbone_parameters` counts the base model only (no quantizer,
    projections or heads); `parameters` maps each present component to its count.
    """
    c = model.config
    counts = dict.fromkeys([*_LABELS], 0)
    for name, p in model.named_parameters():
        counts[component_of(name, model.base_model_prefix)] += p.numel()
    hop, field = 1, 1
    for kernel, stride in zip(c.conv_kernel, c.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return {
        "family": c.model_type,
        "model": type(model).__name__,
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "heads": c.num_attention_heads,
        "ffn": c.intermediate_size,
        "layer_norm": "pre" if c.do_stable_layer_norm else "post",
        "conv": format_conv_spec(zip(c.conv_dim, c.conv_kernel, c.conv_stride, strict=True)),
        "conv_norm": c.feat_extract_norm,
        "conv_bias": c.conv_bias,
        "pos_conv_kernel": c.num_conv_pos_embeddings,
        "pos_conv_groups": c.num_conv_pos_embedding_groups,
        "samples_per_frame": hop,
        "frame_ms": 1000 * hop / SAMPLE_RATE,
        "receptive_field_ms": 1000 * field / SAMPLE_RATE,
        "parameters": {k: n for k, n in counts.items() if n},
        "backbone_parameters": sum(p.numel() for p in model.base_model.parameters()),
        "total_parameters": sum(counts.values()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def format_description(d: dict) -> str:
    """`describe`'s result as a text summary and parameter table."""
    total = d["total_parameters"]
    lines = [
        f"{d['family']} ({d['model']})",
        f"  transformer   {d['layers']} layers, hidden {d['hidden']}, {d['heads']} heads, ffn {d['ffn']}, "
        f"{d['layer_norm']}-LN",
        f"  feature CNN   {d['conv']}, {d['conv_norm']} norm, {'with' if d['conv_bias'] else 'no'} bias",
        f"  frames        {d['samples_per_frame']} samples = {d['frame_ms']:g} ms at 16 kHz "
        f"({1000 / d['frame_ms']:g} Hz), receptive field {d['receptive_field_ms']:g} ms",
        f"  pos. conv     kernel {d['pos_conv_kernel']}, {d['pos_conv_groups']} groups",
        "",
        f"  {'component':<26}{'parameters':>14}{'share':>9}",
    ]
    lines += [f"  {_LABELS[k]:<26}{n:>14,}{100 * n / total:>8.2f}%" for k, n in d["parameters"].items()]
    lines += [
        "  " + "-" * 49,
        f"  {'base model':<26}{d['backbone_parameters']:>14,}{100 * d['backbone_parameters'] / total:>8.2f}%",
        f"  {'total':<26}{total:>14,}{100.0:>8.2f}%",
        f"  {'trainable':<26}{d['trainable_parameters']:>14,}{100 * d['trainable_parameters'] / total:>8.2f}%",
    ]
    return "\n".join(lines)
