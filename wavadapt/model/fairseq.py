"""fairseq wav2vec 2.0 checkpoints (.pt) <-> transformers names, without fairseq installed.

A fairseq checkpoint is a pickle of `{"cfg": {"task": {...}, "model": {...}, ...}, "model": state_dict, ...}`
(hydra, fairseq >= 0.10) or `{"args": Namespace(...), "model": state_dict}` (argparse, older). Pre-training
checkpoints hold the fairseq `Wav2Vec2Model` keys; fine-tuned CTC checkpoints hold them under
`w2v_encoder.w2v_model.` plus the CTC projection `w2v_encoder.proj`, and nest the pre-training config in `w2v_args`.

Converted state dicts use the layout of transformers' `Wav2Vec2ForPreTraining` / `Wav2Vec2ForCTC`:
encoder keys under `wav2vec2.`, heads as `quantizer.*`, `project_q.*`, `project_hid.*`, `lm_head.*`.
"""

import argparse
import ast
import enum
import pickle
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model, Wav2Vec2PreTrainedModel

from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError

# --- key names ---

_FINETUNED_PREFIX = "w2v_encoder.w2v_model."
_LAYER = "encoder.layers.{i}."
_HF_LAYER = "wav2vec2.encoder.layers.{i}."


def _key_table(conv_norm: str, finetuned: bool) -> list[tuple[str, str]]:
    """(fairseq, transformers) module names; `{i}` stands for a layer index."""
    # fairseq conv block i is Sequential(conv, dropout, norm, gelu). Group norm (Base): Fp32GroupNorm at
    # index 2 of block 0 only. Layer norm (Large): Sequential(TransposeLast, Fp32LayerNorm, TransposeLast).
    conv_norm_key = "feature_extractor.conv_layers.{i}." + ("2" if conv_norm == "group" else "2.1")
    table = [
        ("feature_extractor.conv_layers.{i}.0", "wav2vec2.feature_extractor.conv_layers.{i}.conv"),
        (conv_norm_key, "wav2vec2.feature_extractor.conv_layers.{i}.layer_norm"),
        ("layer_norm", "wav2vec2.feature_projection.layer_norm"),
        ("post_extract_proj", "wav2vec2.feature_projection.projection"),
        ("mask_emb", "wav2vec2.masked_spec_embed"),
        ("encoder.pos_conv.0", "wav2vec2.encoder.pos_conv_embed.conv"),
        *((f"{_LAYER}self_attn.{p}", f"{_HF_LAYER}attention.{p}") for p in ("q_proj", "k_proj", "v_proj", "out_proj")),
        (f"{_LAYER}self_attn_layer_norm", f"{_HF_LAYER}layer_norm"),
        (f"{_LAYER}fc1", f"{_HF_LAYER}feed_forward.intermediate_dense"),
        (f"{_LAYER}fc2", f"{_HF_LAYER}feed_forward.output_dense"),
        (f"{_LAYER}final_layer_norm", f"{_HF_LAYER}final_layer_norm"),
        ("encoder.layer_norm", "wav2vec2.encoder.layer_norm"),
        ("quantizer.vars", "quantizer.codevectors"),
        ("quantizer.weight_proj", "quantizer.weight_proj"),
        ("project_q", "project_q"),
        ("final_proj", "project_hid"),
    ]
    if finetuned:
        table = [(_FINETUNED_PREFIX + fs, hf) for fs, hf in table] + [("w2v_encoder.proj", "lm_head")]
    return table


# Parameter names inside a module. fairseq's positional conv uses torch's legacy weight norm (weight_g,
# weight_v); transformers, and forks ported to torch's parametrizations API, use original0 / original1.
_PARAMS = (
    "weight",
    "bias",
    "weight_g",
    "weight_v",
    "parametrizations.weight.original0",
    "parametrizations.weight.original1",
)
_FAIRSEQ_TO_HF_PARAM = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}
_HF_TO_FAIRSEQ_PARAM = {hf: fs for fs, hf in _FAIRSEQ_TO_HF_PARAM.items()}


def _rename(
    state: Mapping[str, torch.Tensor], table: Iterable[tuple[str, str]], param_names: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename keys by (source, target) module-name templates; return the renamed dict and unmatched keys."""
    params = "|".join(re.escape(p) for p in _PARAMS)
    rules = [
        (re.compile(re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)") + rf"(?:\.(?P<param>{params}))?"), dst)
        for src, dst in table
    ]
    renamed, unmatched = {}, []
    for key, value in state.items():
        for pattern, dst in rules:
            if m := pattern.fullmatch(key):
                new = dst.replace("{i}", m["i"]) if "{i}" in dst else dst
                if m["param"]:
                    new += "." + param_names.get(m["param"], m["param"])
                renamed[new] = value
                break
        else:
            unmatched.append(key)
    return renamed, unmatched


# --- config ---

# fairseq's Wav2Vec2Config defaults, for keys that an older checkpoint's config lacks.
_FAIRSEQ_DEFAULTS = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "final_dim": 0,
    "latent_vars": 320,
    "latent_groups": 2,
    "latent_dim": 0,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "mask_prob": 0.65,
    "mask_length": 10,
    "mask_channel_prob": 0.0,
    "mask_channel_length": 10,
    "logit_temp": 0.1,
    "num_negatives": 100,
}
# Variants that transformers' wav2vec2 modules cannot express: a checkpoint using one is refused.
_UNSUPPORTED = {
    "quantize_input": False,
    "target_glu": False,
    "quantizer_depth": 1,
    "pos_conv_depth": 1,
    "conv_pos_batch_norm": False,
    "layer_type": "transformer",
}
# A fine-tuning run overrides these settings of the pre-trained model (fairseq's Wav2VecEncoder).
_FINETUNE_OVERRIDES = {
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "dropout_input": "dropout_input",
    "mask_prob": "mask_prob",
    "mask_length": "mask_length",
    "mask_channel_prob": "mask_channel_prob",
    "mask_channel_length": "mask_channel_length",
    "layerdrop": "encoder_layerdrop",
}
_EXTRACTOR_MODES = {"default": "group", "layer_norm": "layer"}


def parse_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `conv_feature_layers`, e.g. "[(512,10,5)] + [(512,3,2)] * 4", without `eval`.

    Returns one (channels, kernel, stride) per conv layer. Only list/tuple literals of ints, `+` and `*`
    are accepted.
    """

    def value(node: ast.AST):
        match node:
            case ast.Constant(value=int() as v):
                return v
            case ast.List(elts=elts) | ast.Tuple(elts=elts):
                return [value(e) for e in elts]
            case ast.BinOp(left=left, op=ast.Add(), right=right):
                return value(left) + value(right)
            case ast.BinOp(left=left, op=ast.Mult(), right=right):
                return value(left) * value(right)
        raise ValueError(f"unsupported expression {ast.unparse(node)!r}")

    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not all(isinstance(x, list) and len(x) == 3 for x in layers):
        raise ValueError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return [tuple(x) for x in layers]


def format_conv_spec(layers: Iterable[tuple[int, int, int]]) -> str:
    """Write conv layers in fairseq's run-length notation: "[(512, 10, 5)] + [(512, 3, 2)] * 4 + ..."."""
    runs: list[list] = []
    for layer in layers:
        if runs and runs[-1][0] == tuple(layer):
            runs[-1][1] += 1
        else:
            runs.append([tuple(layer), 1])
    return " + ".join(f"[{layer}]" + (f" * {n}" if n > 1 else "") for layer, n in runs)


def config_from_fairseq(cfg: Mapping) -> Wav2Vec2Config:
    """Build a transformers `Wav2Vec2Config` from a fairseq wav2vec2 model config (a plain dict)."""
    c = {**_FAIRSEQ_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    for key, supported in _UNSUPPORTED.items():
        if c.get(key, supported) != supported:
            raise ValueError(f"{key}={c[key]!r} is not supported by transformers' wav2vec2 (needs {supported!r})")
    if c["extractor_mode"] not in _EXTRACTOR_MODES:
        raise ValueError(f"extractor_mode {c['extractor_mode']!r} is not one of {sorted(_EXTRACTOR_MODES)}")
    conv = parse_conv_spec(c["conv_feature_layers"])
    final_dim = c["final_dim"] or c["encoder_embed_dim"]  # fairseq: final_dim <= 0 means encoder_embed_dim
    return Wav2Vec2Config(
        hidden_size=c["encoder_embed_dim"],
        num_hidden_layers=c["encoder_layers"],
        num_attention_heads=c["encoder_attention_heads"],
        intermediate_size=c["encoder_ffn_embed_dim"],
        hidden_act=c["activation_fn"],
        conv_dim=[d for d, _, _ in conv],
        conv_kernel=[k for _, k, _ in conv],
        conv_stride=[s for _, _, s in conv],
        conv_bias=c["conv_bias"],
        feat_extract_norm=_EXTRACTOR_MODES[c["extractor_mode"]],
        do_stable_layer_norm=c["layer_norm_first"],
        num_conv_pos_embeddings=c["conv_pos"],
        num_conv_pos_embedding_groups=c["conv_pos_groups"],
        num_codevectors_per_group=c["latent_vars"],
        num_codevector_groups=c["latent_groups"],
        codevector_dim=c["latent_dim"] or final_dim,  # fairseq's vq_dim
        proj_codevector_dim=final_dim,
        hidden_dropout=c["dropout"],
        attention_dropout=c["attention_dropout"],
        activation_dropout=c["activation_dropout"],
        layerdrop=c["encoder_layerdrop"],
        feat_proj_dropout=c["dropout_input"],
        feat_quantizer_dropout=c["dropout_features"],
        mask_time_prob=c["mask_prob"],
        mask_time_length=c["mask_length"],
        mask_feature_prob=c["mask_channel_prob"],
        mask_feature_length=c["mask_channel_length"],
        contrastive_logits_temperature=c["logit_temp"],
        num_negatives=c["num_negatives"],
    )


def fairseq_config(config: Wav2Vec2Config) -> dict:
    """The fairseq wav2vec2 model config (plain dict) for a transformers `Wav2Vec2Config`."""
    modes = {hf: fs for fs, hf in _EXTRACTOR_MODES.items()}
    return {
        "_name": "wav2vec2",
        "extractor_mode": modes[config.feat_extract_norm],
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": config.hidden_act,
        "layer_norm_first": config.do_stable_layer_norm,
        "conv_feature_layers": format_conv_spec(
            zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True)
        ),
        "conv_bias": config.conv_bias,
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
        "quantize_targets": True,
        "latent_vars": config.num_codevectors_per_group,
        "latent_groups": config.num_codevector_groups,
        "latent_dim": config.codevector_dim,
        "final_dim": config.proj_codevector_dim,
        "dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "encoder_layerdrop": config.layerdrop,
        "dropout_input": config.feat_proj_dropout,
        "dropout_features": config.feat_quantizer_dropout,
        "mask_prob": config.mask_time_prob,
        "mask_length": config.mask_time_length,
        "mask_channel_prob": config.mask_feature_prob,
        "mask_channel_length": config.mask_feature_length,
        "logit_temp": config.contrastive_logits_temperature,
        "num_negatives": config.num_negatives,
    }


# --- unpickling without fairseq / omegaconf ---

# Never import these even where installed, so a checkpoint reads the same everywhere.
_STAND_IN_PACKAGES = {"fairseq", "omegaconf"}


class _StandIn:
    """Takes the place of a class that cannot (or must not) be imported: keeps what pickle hands it."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.__dict__["_standin_args"] = args  # e.g. an enum member is pickled as Cls(value)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_standin_state"] = state


_stand_ins: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    if (module, name) not in _stand_ins:
        _stand_ins[module, name] = type(name, (_StandIn,), {"__module__": module})
    return _stand_ins[module, name]


class _PermissiveUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] in _STAND_IN_PACKAGES:
            return _stand_in(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stand_in(module, name)


def _load(file, **kwargs):
    return _PermissiveUnpickler(file, **kwargs).load()


# torch.load takes a "pickle module": anything with `Unpickler` and `load`.
_permissive_pickle = types.ModuleType("wavadapt_permissive_pickle")
_permissive_pickle.Unpickler = _PermissiveUnpickler
_permissive_pickle.load = _load


def _plain(obj):
    """Turn a checkpoint's config (dicts, Namespaces, omegaconf stand-ins, enums) into plain Python."""
    if isinstance(obj, argparse.Namespace):
        return _plain(vars(obj))
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, _StandIn):
        state = obj.__dict__
        if "_content" in state:  # omegaconf DictConfig / ListConfig
            return _plain(state["_content"])
        if "_val" in state:  # omegaconf value node
            return _plain(state["_val"])
        if len(state["_standin_args"]) == 1:  # enum member (fairseq ChoiceEnum)
            return _plain(state["_standin_args"][0])
        return {k: _plain(v) for k, v in state.items() if not k.startswith("_standin")}
    return obj


def _unpickle(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_permissive_pickle)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return ckpt


def _model_cfg(ckpt: dict, path: Path) -> tuple[dict, bool]:
    """The pre-training model config, with a fine-tuning run's overrides; and whether it is fine-tuned."""
    if ckpt.get("cfg") is not None:
        cfg = _plain(ckpt["cfg"]).get("model")
    elif ckpt.get("args") is not None:
        cfg = _plain(ckpt["args"])
    else:
        cfg = None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: no model config (neither cfg['model'] nor args)")
    if "w2v_args" not in cfg:
        return cfg, False
    inner = cfg["w2v_args"]
    if not isinstance(inner, dict):
        raise CheckpointError(f"{path}: fine-tuned checkpoint without the pre-training config (w2v_args)")
    inner = inner["model"] if isinstance(inner.get("model"), dict) else inner  # hydra nests it, argparse is flat
    overrides = {dst: cfg[src] for src, dst in _FINETUNE_OVERRIDES.items() if cfg.get(src) is not None}
    return {**inner, **overrides}, True


def _task_cfg(ckpt: dict) -> dict:
    """The task config (normalize, labels, ...): cfg['task'] (hydra), or the flat args (argparse); {} without."""
    if ckpt.get("cfg") is not None:
        task = _plain(ckpt["cfg"]).get("task")
    else:
        task = _plain(ckpt.get("args"))
    return task if isinstance(task, dict) else {}


class FairseqCheckpoint(NamedTuple):
    config: Wav2Vec2Config
    state: dict[str, torch.Tensor]
    """In transformers names, the layout of `Wav2Vec2ForPreTraining` / `Wav2Vec2ForCTC`."""
    task: dict
    """The task config as plain Python: ``normalize``, ``labels`` (a fine-tuned model's dict.<labels>.txt)."""


def open_fairseq_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> FairseqCheckpoint:
    """Read a fairseq wav2vec 2.0 checkpoint (pre-training or fine-tuned CTC) without fairseq installed.

    The file is a pickle, and unpickling can run arbitrary code, so `trust_pickle=True` is required. Classes
    of fairseq and omegaconf (and any other class that cannot be imported) are replaced by inert stand-ins;
    configs built from them are read back as plain dicts (omegaconf containers and nodes, enums, Namespaces).
    Interpolations such as "${...}" stay strings.
    """
    path = Path(path)
    if not trust_pickle:
        raise CheckpointError(
            f"{path}: a fairseq checkpoint is a pickle and unpickling can execute arbitrary code; "
            "only load files you trust, with trust_pickle=True (CLI: --trust-pickle)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    ckpt = _unpickle(path)
    cfg, finetuned = _model_cfg(ckpt, path)
    try:
        config = config_from_fairseq(cfg)
    except (ValueError, TypeError, SyntaxError) as e:
        raise CheckpointError(f"{path}: unsupported model config: {e}") from e
    state, unmatched = _rename(ckpt["model"], _key_table(config.feat_extract_norm, finetuned), _FAIRSEQ_TO_HF_PARAM)
    if unmatched:
        raise CheckpointError(
            f"{path}: keys with no transformers counterpart: {', '.join(unmatched[:8])}"
            + (f" (+{len(unmatched) - 8} more)" if len(unmatched) > 8 else "")
        )
    if "lm_head.weight" in state:
        config.vocab_size = state["lm_head.weight"].shape[0]
    return FairseqCheckpoint(config, state, _task_cfg(ckpt))


def read_fairseq_checkpoint(
    path: str | Path, *, trust_pickle: bool = False
) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor]]:
    """The transformers config and state dict of a fairseq wav2vec 2.0 checkpoint (see `open_fairseq_checkpoint`)."""
    checkpoint = open_fairseq_checkpoint(path, trust_pickle=trust_pickle)
    return checkpoint.config, checkpoint.state


# --- writing ---

_SAMPLE_RATE = 16_000  # fairseq's audio tasks' default, and wavadapt's rate


def _training_state(criterion: str) -> dict:
    """What fairseq's loader reads besides cfg and model (checkpoint_utils._upgrade_state_dict, and
    Trainer.load_checkpoint when training resumes): one optimizer-history entry, the epoch iterator, and no
    optimizer state, so a run starting from the file builds a fresh optimizer."""
    return {
        "optimizer_history": [
            {"criterion_name": criterion, "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": None},
             "num_updates": 0}
        ],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "val_loss": None},
        "last_optimizer_state": None,
    }


def _run_cfg(task: dict, model: dict, criterion: str) -> dict:
    """A fairseq run config around a task and model config, with the sections their fields interpolate:
    audio tasks' ``tpu`` (common.tpu), wav2vec_ctc's ``ddp_backend``, the ctc criterion's ``sentence_avg``."""
    return {
        "common": {"tpu": False},
        "distributed_training": {"ddp_backend": "legacy_ddp"},
        "task": task,
        "model": model,
        "criterion": {"_name": criterion},
        "optimization": {"sentence_avg": True},
        "checkpoint": {"no_save_optimizer_state": True},
    }


def to_fairseq_state_dict(model: Wav2Vec2PreTrainedModel, *, normalize: bool | None = None, data: str = ".") -> dict:
    """Express a transformers wav2vec2 model as a fairseq checkpoint; `torch.save` it to write a .pt.

    Accepts `Wav2Vec2Model`, `Wav2Vec2ForPreTraining` (an ``audio_pretraining`` run) and `Wav2Vec2ForCTC` (an
    ``audio_finetuning`` run with ``labels: ltr``: `w2v_encoder.*` keys, the pre-training run's config in
    ``w2v_args``). The state holds what fairseq 0.12's `checkpoint_utils.load_model_ensemble_and_task` reads: a
    hydra ``cfg`` (common, task, model, criterion, optimization, checkpoint), ``model`` with legacy weight-norm
    names (weight_g / weight_v) for the positional conv as fairseq writes them, ``optimizer_history``,
    ``extra_state`` and ``last_optimizer_state``. ``normalize`` (the task's waveform normalisation) defaults to
    fairseq's convention: on for layer-norm CNNs. ``data`` is the task's data directory, where fairseq looks for
    a fine-tuned model's dict.ltr.txt.
    """
    config = model.config
    if config.model_type != "wav2vec2":
        raise WavadaptError(f"only wav2vec2 models have a fairseq wav2vec 2.0 format, not {config.model_type}")
    state = model.state_dict()
    if isinstance(model, Wav2Vec2Model):
        state = {"wav2vec2." + k: v for k, v in state.items()}
    finetuned = "lm_head.weight" in state
    table = [(hf, fs) for fs, hf in _key_table(config.feat_extract_norm, finetuned)]
    fs_state, unmatched = _rename(state, table, _HF_TO_FAIRSEQ_PARAM)
    if unmatched:
        raise WavadaptError(f"{type(model).__name__} has weights fairseq cannot hold: {', '.join(unmatched[:8])}")
    if normalize is None:
        normalize = config.feat_extract_norm == "layer"
    task = {"_name": "audio_pretraining", "data": data, "normalize": normalize, "sample_rate": _SAMPLE_RATE}
    cfg = _run_cfg(task, fairseq_config(config), "wav2vec")
    criterion = "Wav2vecCriterion"
    if finetuned:
        # the fine-tuning run's settings of the encoder, which fairseq's Wav2VecEncoder applies over w2v_args
        overrides = {src: cfg["model"][dst] for src, dst in _FINETUNE_OVERRIDES.items()}
        ctc = {"_name": "wav2vec_ctc", "w2v_args": cfg, **overrides}
        cfg, criterion = _run_cfg({**task, "_name": "audio_finetuning", "labels": "ltr"}, ctc, "ctc"), "CtcCriterion"
    weights = {k: v.detach().clone() for k, v in fs_state.items()}
    return {"args": None, "cfg": cfg, "model": weights, **_training_state(criterion)}


def save_fairseq_checkpoint(model: Wav2Vec2PreTrainedModel, path: str | Path, *, vocab: Vocabulary | None = None,
                            normalize: bool | None = None) -> Path:
    """Write ``model`` as a fairseq checkpoint (`to_fairseq_state_dict`) to ``path``; return it.

    A `Wav2Vec2ForCTC` takes its ``vocab`` (the head's tokens, blank at id 0 as in fairseq's Dictionary),
    written as dict.ltr.txt beside the checkpoint, the task's data directory, so fairseq builds the head from it.
    """
    path = Path(path)
    finetuned = hasattr(model, "lm_head")
    if vocab is not None and not finetuned:
        raise WavadaptError(f"{type(model).__name__} has no CTC head for a vocabulary")
    if vocab is not None and (len(vocab), vocab.blank_id) != (model.lm_head.out_features, 0):
        raise WavadaptError(f"the vocabulary has {len(vocab)} tokens, blank at id {vocab.blank_id}; fairseq needs "
                            f"the head's {model.lm_head.out_features}, blank at id 0")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_fairseq_state_dict(model, normalize=normalize, data=str(path.parent.resolve())), path)
    if vocab is not None:
        vocab.save_fairseq_dict(path.parent / "dict.ltr.txt")
    return path
