"""Task files (adapter set + CTC head, a few MB), full backbones, strict loading and backbone fingerprints.

A task is saved as two files, as HF MMS and peft do::

    adapter.<task>.safetensors   the task's own trainable tensors, under their CTCModel names
    adapter.<task>.json          what the tensors need to run: stack, AdapterConfig, vocabulary, backbone

The tensors are exactly the task's CTC head (``heads.<task>.*``) and, for the adapter methods, its adapter
set with its layer-norm copies (``backbone.<...>.adapters.sets.<task>.*``, ``backbone.<...>.tasks.<task>.*``;
an mms-form set has no copies). The JSON's ``adapter`` records the set's form; files from before forms existed
have none and are houlsby.
A wav2vec 2.0 Base adapter set in all 12 layers with a 32-letter head is 9.56M parameters: 38.2 MB in fp32
(10.1% of the 94.4M backbone, 9.2% of the adapted model); top-8 adapters 25.5 MB; head-only 0.1 MB.

Full fine-tuning (``full``, ``top-n-full``) changes the backbone itself: the run saves it with
:func:`save_backbone` (HF format) and the task file holds only the head, fingerprinted against that backbone.

Loading is strict and never unpickles: a task file refuses a backbone whose fingerprint differs from the
one it was trained on, a stack whose lower sets are missing, and any missing, unexpected or mis-shaped
tensor, before the model is touched.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from wavadapt.data.text import Vocabulary, VocabularyError
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.model.adapters import (
    AdapterConfig,
    adapted_layers,
    adapter_config,
    adapter_names,
    adapter_parameters,
    add_adapter,
    base_state,
    encoder_of,
)
from wavadapt.model.backbone import quiet_transformers
from wavadapt.model.ctc import CTCModel
from wavadapt.model.language_id import LanguageId, check_layer

FORMAT = "wavadapt-task"
VERSION = 1

# Config fields that decide the function a backbone computes from its weights (shapes, norms, activations,
# positional buckets); dropouts and masking only act in training and stay out of the fingerprint.
ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm",
    "feat_extract_activation", "feat_proj_layer_norm", "do_stable_layer_norm", "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups", "num_buckets", "max_bucket_distance",
)  # fmt: skip



def safe_name(task: str) -> str:
    """``task`` as a file-name part, ``/`` written as ``--`` (HF's convention for repo names): ``es--asr``."""
    return task.replace("/", "--")


def task_name(part: str) -> str:
    """The task a file-name part (:func:`safe_name`) stands for: ``es--asr`` -> ``es/asr``."""
    return part.replace("--", "/")


# --- fingerprints ---


def backbone_fingerprint(backbone: PreTrainedModel, stack: tuple[str, ...] | list[str] = ()) -> str:
    """``sha256:<hex>`` of what a task trained on ``backbone`` depends on.

    Hashed: the architecture config fields (:data:`ARCHITECTURE_FIELDS`), every base tensor (adapter sets
    and layer-norm copies excluded), and the configs and tensors of the adapter sets in ``stack`` (the
    sets a task adapter sits on). Tensors go in sorted name order as name, dtype, shape and their exact
    bytes, so the fingerprint is deterministic across runs and devices but not across dtypes: the same
    weights in fp16 are a different backbone (they compute a different function). ~0.3 s per 100M fp32
    parameters on CPU.
    """
    config = {f: getattr(backbone.config, f) for f in ARCHITECTURE_FIELDS if hasattr(backbone.config, f)}
    state = base_state(backbone)
    sets = {}
    for name in stack:
        sets[name] = _set_identity(adapter_config(backbone, name))
        state |= {k: p.detach() for k, p in adapter_parameters(backbone, name).items()}
    h = hashlib.sha256(json.dumps({"config": config, "stack": sets}, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().data)
    return "sha256:" + h.hexdigest()


def _set_identity(config: AdapterConfig) -> dict:
    # A houlsby set hashes as it did before forms existed, so stacked task files saved then still load.
    identity = asdict(config)
    if config.form == "houlsby":
        del identity["form"]
    return identity


# --- saving ---


def _head_tensors(model: CTCModel, task: str) -> dict[str, nn.Parameter]:
    return {f"heads.{task}.{k}": p for k, p in model.heads[task].named_parameters()}


def _set_tensors(backbone: nn.Module, name: str) -> dict[str, nn.Parameter]:
    return {f"backbone.{k}": p for k, p in adapter_parameters(backbone, name).items()}


def _own_set(model: CTCModel, task: str) -> bool:
    """The task trains an adapter set of its own (named like the task) rather than the backbone or nothing."""
    return task in model.stacks[task] and task in adapter_names(model.backbone)


def task_tensors(model: CTCModel, task: str) -> dict[str, nn.Parameter]:
    """The parameters a task file holds, by their CTCModel names: the head and the task's own adapter set."""
    if task not in model.heads:
        raise WavadaptError(f"unknown task {task!r}; the model has {sorted(model.heads)}")
    return _head_tensors(model, task) | (_set_tensors(model.backbone, task) if _own_set(model, task) else {})


def save_task(model: CTCModel, task: str, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``adapter.<task>.safetensors`` + ``.json`` into ``out_dir``; return the JSON's path.

    The tensors keep their dtype (fp32) unless ``dtype`` is given (``torch.float16`` halves the file;
    loading casts back to the model's dtype).
    """
    tensors = task_tensors(model, task)
    stack = model.stacks[task]
    own = _own_set(model, task)
    config = adapter_config(model.backbone, task) if own else None
    meta = {
        "stack": list(stack),
        "adapter": asdict(config) if config else None,
        "layers": adapted_layers(len(encoder_of(model.backbone).layers), config.top_n) if config else [],
        "vocabulary": model.vocabularies[task].tokens,
        "special_tokens": {"blank": model.vocabularies[task].blank, "unk": model.vocabularies[task].unk},
    }
    return _write(model.backbone, task, [n for n in stack if n != task], tensors, meta, Path(out_dir), dtype)


def save_adapter(backbone: PreTrainedModel, name: str, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write an adapter set without a head (a language adapter from continual pre-training) in the task file
    format; ``backbone`` is the base model (``Wav2Vec2ForPreTraining.wav2vec2``). Return the JSON's path."""
    config = adapter_config(backbone, name)
    meta = {
        "stack": [name],
        "adapter": asdict(config),
        "layers": adapted_layers(len(encoder_of(backbone).layers), config.top_n),
        "vocabulary": None,
    }
    return _write(backbone, name, [], _set_tensors(backbone, name), meta, Path(out_dir), dtype)


LANGUAGE_ID = "lid"
"""The task name of a language identifier's file (adapter.lid.json)."""


def save_language_id(model: CTCModel, out_dir: str | Path) -> Path:
    """Write the model's language identifier as ``adapter.lid.safetensors`` + ``.json`` (its languages and layer
    in the JSON's ``language_id``); return the JSON's path."""
    lid = model.language_id
    meta = {"stack": [], "adapter": None, "layers": [], "vocabulary": None,
            "language_id": {"labels": lid.labels, "layer": lid.layer}}
    tensors = {f"language_id.{k}": p for k, p in lid.named_parameters()}
    return _write(model.backbone, LANGUAGE_ID, [], tensors, meta, Path(out_dir), None)


def _write(backbone, name, stacked_on, tensors, meta, out_dir: Path, dtype) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"adapter.{safe_name(name)}"
    data = {k: p.detach().to(dtype or p.dtype).contiguous().cpu() for k, p in tensors.items()}
    save_file(data, out_dir / f"{stem}.safetensors", metadata={"format": "pt", "task": name})
    info = {
        "format": FORMAT,
        "version": VERSION,
        "task": name,
        **meta,
        "backbone": {
            "family": backbone.config.model_type,
            "stacked_on": stacked_on,
            "fingerprint": backbone_fingerprint(backbone, stacked_on),
        },
        "dtype": str(next(iter(data.values())).dtype).removeprefix("torch."),
        "parameters": sum(t.numel() for t in data.values()),
    }
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def save_backbone(backbone: PreTrainedModel, out_dir: str | Path) -> Path:
    """Save the backbone's own weights (no adapter sets) as an HF directory (config.json + model.safetensors),
    readable by :func:`wavadapt.model.backbone.load_backbone`; used after full fine-tuning."""
    out_dir = Path(out_dir)
    # save_pretrained empties the dict it is given, so it gets a fresh one.
    with quiet_transformers():
        backbone.save_pretrained(out_dir, state_dict=base_state(backbone), safe_serialization=True)
    return out_dir


# --- loading ---


def _pair(path: Path) -> tuple[Path, Path]:
    if path.suffix not in (".json", ".safetensors"):
        raise CheckpointError(f"{path}: expected an adapter.<task>.json or .safetensors file")
    json_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
    for p in (json_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{p}: no such file (a task needs both its .json and .safetensors)")
    return json_path, weights


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read task file ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wavadapt task file (no \"format\": \"{FORMAT}\")")
    if info.get("version") != VERSION:
        raise CheckpointError(f"{path}: format version {info.get('version')}, this wavadapt reads {VERSION}")
    missing = [k for k in ("task", "stack", "adapter", "vocabulary") if k not in info]
    if "fingerprint" not in (info.get("backbone") or {}):
        missing.append("backbone.fingerprint")
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    return info


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a safetensors file's tensors, read from its header; CheckpointError if unreadable."""
    try:
        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _expected_shapes(backbone: PreTrainedModel, name: str, config: AdapterConfig | None,
                     vocab: Vocabulary | None) -> dict[str, tuple[int, ...]]:
    """Names and shapes the file must hold, from a weightless (meta) copy built by the same code paths."""
    with torch.device("meta"):
        probe = CTCModel(type(backbone)(backbone.config))
    if config is not None:
        add_adapter(probe.backbone, name, config)
    shapes = {k: tuple(p.shape) for k, p in _set_tensors(probe.backbone, name).items()} if config else {}
    if vocab is not None:
        probe.add_task(name, vocab)
        shapes |= {k: tuple(p.shape) for k, p in _head_tensors(probe, name).items()}
    return shapes


def _few(keys, n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_tensors(path: Path, found: dict, expected: dict, what: str = "its own description") -> None:
    """CheckpointError naming ``path`` and the keys unless ``found`` has exactly ``expected``'s names and shapes."""
    mismatched = [f"{k} {found[k]} in the file, {expected[k]} in the model"
                  for k in sorted(found.keys() & expected.keys()) if found[k] != expected[k]]
    problems = [f"{what}: {_few(keys)}" for what, keys in (
        ("missing keys", expected.keys() - found.keys()),
        ("unexpected keys", found.keys() - expected.keys()),
        ("shape mismatches", mismatched),
    ) if keys]  # fmt: skip
    if problems:
        raise CheckpointError(f"{path}: does not match {what}; " + "; ".join(problems))


def load_task(model: CTCModel, path: str | Path, name: str | None = None) -> str:
    """Add the task (or head-less adapter set) of a task file to ``model``, under ``name`` or the file's own
    task name; return the name.

    ``path`` is either file of the pair, or ``FILE:NAME`` (:func:`task_file_spec`). Refuses, with a
    CheckpointError naming the file, a backbone whose fingerprint differs from the one the task was trained on, a
    stack whose lower sets are not loaded yet, a name the model already has (naming the file it came from), and
    missing, unexpected or mis-shaped tensors; all before changing the model. Reads only JSON and safetensors
    (no pickle). A task with a head is left active.
    """
    path, given = task_file_spec(path)
    json_path, weights = _pair(path)
    info = _read_info(json_path)
    trained_as = info["task"]
    name, backbone = name or given or trained_as, model.backbone
    stack = tuple(name if n == trained_as else n for n in info["stack"])
    if name in model.heads or name in adapter_names(backbone):
        origin = model.task_files.get(name)
        raise CheckpointError(f"{json_path}: the model already has a task named {name!r}"
                              + (f" (from {origin})" if origin else "")
                              + f": load this one under another name, {json_path}:NAME")
    stacked_on = [n for n in stack if n != name]
    absent = [n for n in stacked_on if n not in adapter_names(backbone)]
    if absent:
        raise CheckpointError(
            f"{json_path}: {name!r} is stacked on adapter set(s) {absent} that the model lacks; load their files first"
        )
    saved = info["backbone"]["fingerprint"]
    actual = backbone_fingerprint(backbone, stacked_on)
    if saved != actual:
        raise CheckpointError(
            f"{json_path}: trained on a different backbone: the file's fingerprint is {saved} "
            f"({info['backbone'].get('family')}), this backbone's is {actual} ({backbone.config.model_type})"
            + (f" with {stacked_on}" if stacked_on else "")
        )
    if "language_id" in info:
        return _load_language_id(model, info, json_path, weights)
    try:
        config = AdapterConfig(**info["adapter"]) if info["adapter"] is not None else None
        vocab = Vocabulary.from_task_info(info)
    except (TypeError, VocabularyError) as e:
        raise CheckpointError(f"{json_path}: invalid adapter config or vocabulary ({e})") from None
    try:
        expected = _expected_shapes(backbone, name, config, vocab)
    except WavadaptError as e:  # an adapter config this backbone cannot take (a form, top_n)
        raise CheckpointError(f"{json_path}: {e}") from None
    check_tensors(weights, {_renamed(k, trained_as, name): s for k, s in file_shapes(weights).items()}, expected)

    if config is not None:
        add_adapter(backbone, name, config)
    if vocab is not None:
        model.add_task(name, vocab, stack)
    params = dict(model.named_parameters())
    with torch.no_grad(), safe_open(weights, "pt") as f:
        for key in f.keys():
            params[_renamed(key, trained_as, name)].copy_(f.get_tensor(key))
    model.task_files[name] = str(json_path)
    if vocab is not None:
        model.activate(name)
    return name


def _load_language_id(model: CTCModel, info: dict, json_path: Path, weights: Path) -> str:
    if model.language_id is not None:
        raise CheckpointError(f"{json_path}: the model already has a language identifier"
                              + (f" (from {model.task_files[LANGUAGE_ID]})" if LANGUAGE_ID in model.task_files else ""))
    try:
        spec = info["language_id"]
        check_layer(model.backbone, int(spec["layer"]))
        lid = LanguageId(model.hidden_size, [str(label) for label in spec["labels"]], int(spec["layer"]))
    except (KeyError, TypeError, ValueError, WavadaptError) as e:
        raise CheckpointError(f"{json_path}: invalid language identifier ({e})") from None
    expected = {f"language_id.{k}": tuple(p.shape) for k, p in lid.named_parameters()}
    check_tensors(weights, file_shapes(weights), expected)
    ref = next(model.parameters())
    lid.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad(), safe_open(weights, "pt") as f:
        for key, p in lid.named_parameters():
            p.copy_(f.get_tensor(f"language_id.{key}"))
    model.language_id = lid.eval()
    model.task_files[LANGUAGE_ID] = str(json_path)
    return LANGUAGE_ID


def task_file_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:NAME`` (a task file to load under another name) as the file and the name."""
    text = str(spec)
    head, _, tail = text.rpartition(":")
    if head and tail and "/" not in tail and not Path(text).exists():
        return Path(head), task_name(tail)
    return Path(spec), None


def _renamed(key: str, old: str, new: str) -> str:
    """A task file's tensor name with its task's part (after ``heads``, ``sets`` or ``tasks``) renamed."""
    if old == new:
        return key
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == old and i > 0 and parts[i - 1] in ("heads", "sets", "tasks"):
            parts[i] = new
    return ".".join(parts)
