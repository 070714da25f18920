"""MMS's adapter layout (Pratap et al. 2023; transformers' ``Wav2Vec2ForCTC`` with ``adapter_attn_dim``): read it
into a CTCModel with one task per language, and write wavadapt's mms-form tasks in it.

An MMS directory holds::

    config.json                  a pre-LN *ForCTC config with adapter_attn_dim
    model.safetensors            the backbone + the main language's adapter layers and lm_head
    adapter.<lang>.safetensors   per language: <base>.encoder.layers.<i>.adapter_layer.{norm,linear_1,linear_2}.*
                                 and lm_head.* (what transformers' load_adapter(lang) reads)
    vocab.json                   {lang: {token: id}} (or one {token: id} for every language)
    tokenizer_config.json        target_lang: the main language (transformers' default: eng)
    preprocessor_config.json     do_normalize

Each language becomes a task of its name running its own adapter set of that name (form mms) under its own head.
The main language comes from model.safetensors unless it also has an adapter file, which then wins, as with
transformers' ``from_pretrained(dir, target_lang=lang)``. The backbone is the base weights alone: its fingerprint,
like `load_backbone`'s of the directory, leaves every adapter out, so wavadapt task files trained on it load beside
the languages. `export_mms` records that fingerprint in each adapter file's metadata and loading checks it; MMS's
own files have none and are checked by their keys and shapes only.
"""

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.hf import adapter_attn_dim, is_ctc_dir, read_do_normalize, read_vocabularies, target_lang
from wavadapt.model.adapters import AdapterConfig, adapter_config, add_adapter, base_state
from wavadapt.model.backbone import CTC_MODELS, load_ctc_model, quiet_transformers, split_adapter_layers
from wavadapt.model.checkpoint import backbone_fingerprint, check_tensors, file_shapes, safe_name, task_tensors
from wavadapt.model.ctc import CTCModel

MAIN_LANGUAGE = "eng"
"""The main language when tokenizer_config.json names none (transformers' default target_lang)."""
FINGERPRINT_KEY = "wavadapt_backbone"
"""Metadata key of the backbone fingerprint in the adapter files `export_mms` writes."""


def is_mms_dir(path: Path) -> bool:
    """A transformers CTC directory whose config has ``adapter_attn_dim``."""
    return is_ctc_dir(path) and adapter_attn_dim(path) is not None


def mms_tensors(model: CTCModel, task: str) -> dict[str, nn.Parameter]:
    """The parameters of a task on its own mms-form set by MMS's names: the adapter layers
    (``wav2vec2.encoder.layers.<i>.adapter_layer.*``) and the head (``lm_head.*``)."""
    prefix = model.backbone.base_model_prefix
    own, head = f".adapters.sets.{task}.adapter_layer.", f"heads.{task}."
    return {
        "lm_head." + k.removeprefix(head) if k.startswith(head)
        else prefix + k.removeprefix("backbone").replace(own, ".adapter_layer."): p
        for k, p in task_tensors(model, task).items()
    }  # fmt: skip


def _adapter_files(path: Path) -> dict[str, Path]:
    # adapter.<task>.safetensors with a .json beside it is a wavadapt task file, not a language.
    files = sorted(p for p in path.glob("adapter.*.safetensors") if not p.with_suffix(".json").exists())
    return {p.name.removeprefix("adapter.").removesuffix(".safetensors"): p for p in files}


def load_mms_dir(path: str | Path, task: str | None = None, languages: Sequence[str] | None = None) -> CTCModel:
    """An MMS directory as a CTCModel (eval mode) with a task per language (see above): every language with a
    vocabulary and weights, or only ``languages``; the main language active, or ``task``.

    Refuses, with a CheckpointError naming the file, a language without a vocabulary or weights, an adapter file
    with missing, unexpected or mis-shaped tensors, and one exported from another backbone (both fingerprints)."""
    path = Path(path)
    main = target_lang(path) or MAIN_LANGUAGE
    vocabularies = read_vocabularies(path)
    files = _adapter_files(path)
    wanted = list(dict.fromkeys(languages if languages is not None else [main, *files]))
    for lang in wanted:
        if not lang or "." in lang:
            raise CheckpointError(f"{files.get(lang, path)}: {lang!r} is not a usable language name (no '.')")
        if lang not in files and lang != main:
            raise CheckpointError(f"{path}: no adapter.{lang}.safetensors (languages: {sorted({main, *files})})")
        if isinstance(vocabularies, dict) and lang not in vocabularies:
            raise CheckpointError(f"{path / 'vocab.json'}: no vocabulary for language {lang!r}")

    ctc = load_ctc_model(path)
    size = ctc.config.adapter_attn_dim
    main_tensors = split_adapter_layers(ctc) | {f"lm_head.{k}": t for k, t in ctc.lm_head.state_dict().items()}
    model = CTCModel(ctc.base_model).eval()
    model.do_normalize = read_do_normalize(path)
    fingerprint = backbone_fingerprint(model.backbone)
    for lang in wanted:
        vocab = vocabularies[lang] if isinstance(vocabularies, dict) else vocabularies
        try:
            add_adapter(model.backbone, lang, AdapterConfig(size=size, form="mms", layer_norms=False))
        except WavadaptError as e:  # a post-LN backbone
            raise CheckpointError(f"{path}: {e}") from None
        model.add_task(lang, vocab, (lang,))
        params = mms_tensors(model, lang)
        what = (f"the {lang!r} adapter of this {len(model.backbone.encoder.layers)}-layer backbone "
                f"(adapter_attn_dim {size}, {len(vocab)} tokens)")
        if lang in files:
            _load_file(files[lang], params, what, fingerprint)
        else:
            source = path / "model.safetensors"
            check_tensors(source, {k: tuple(t.shape) for k, t in main_tensors.items()},
                          {k: tuple(p.shape) for k, p in params.items()}, what)
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(main_tensors[k])
    model.activate(task or main)
    return model


def _load_file(file: Path, params: dict[str, nn.Parameter], what: str, fingerprint: str) -> None:
    found = file_shapes(file)  # a readable safetensors file, or a CheckpointError
    with torch.no_grad(), safe_open(file, "pt") as f:
        saved = (f.metadata() or {}).get(FINGERPRINT_KEY)
        if saved is not None and saved != fingerprint:
            raise CheckpointError(f"{file}: exported from a different backbone: the file's fingerprint is {saved}, "
                                  f"this backbone's is {fingerprint}")
        check_tensors(file, found, {k: tuple(p.shape) for k, p in params.items()}, what)
        for k, p in params.items():
            p.copy_(f.get_tensor(k))


def export_mms(model: CTCModel, tasks: Sequence[str], out_dir: str | Path) -> Path:
    """Write ``tasks`` (each running its own mms-form adapter set alone) in MMS's layout; return ``out_dir``.

    The first task is the main language: its adapters and head go into model.safetensors with the backbone, and
    tokenizer_config.json names it. Every task also gets its adapter.<lang>.safetensors and its vocabulary in the
    nested vocab.json; ``lang`` is the task name with ``/`` written ``--``. transformers loads the directory with
    ``Wav2Vec2ForCTC.from_pretrained(out_dir, target_lang=lang, ignore_mismatched_sizes=True)`` or
    ``load_adapter(lang)``, and its processor with ``AutoProcessor.from_pretrained(out_dir)`` +
    ``tokenizer.set_target_lang(lang)``.
    """
    if not tasks or len(set(tasks)) != len(tasks):
        raise WavadaptError(f"export_mms needs distinct tasks, got {list(tasks)}")
    sizes = {_mms_size(model, t) for t in tasks}
    if len(sizes) != 1:
        raise WavadaptError(f"tasks {list(tasks)} have adapters of sizes {sorted(sizes)}; an MMS directory has one")
    backbone = model.backbone
    languages = {t: safe_name(t) for t in tasks}
    first = model.vocabularies[tasks[0]]
    config = copy.deepcopy(backbone.config)
    config.update({"adapter_attn_dim": sizes.pop(), "vocab_size": len(first), "pad_token_id": first.blank_id})
    ctc_class = CTC_MODELS[config.model_type]
    config.architectures = [ctc_class.__name__]
    with torch.device("meta"):
        ctc = ctc_class(config)
    prefix = ctc.base_model_prefix
    state = {f"{prefix}.{k}": t for k, t in base_state(backbone).items()} | mms_tensors(model, tasks[0])
    unmatched = ctc.state_dict().keys() ^ state.keys()
    if unmatched:  # WavLM's transformers layers have no adapter_layer
        raise WavadaptError(f"transformers' {ctc_class.__name__} cannot hold this model as MMS does "
                            f"(keys {', '.join(sorted(unmatched)[:3])})")
    ctc.load_state_dict({k: t.detach() for k, t in state.items()}, assign=True)
    out_dir = Path(out_dir)
    with quiet_transformers():
        ctc.save_pretrained(out_dir, safe_serialization=True)
    fingerprint = backbone_fingerprint(backbone)
    for task, lang in languages.items():
        tensors = {k: p.detach().contiguous().cpu() for k, p in mms_tensors(model, task).items()}
        save_file(tensors, out_dir / f"adapter.{lang}.safetensors",
                  metadata={"format": "pt", FINGERPRINT_KEY: fingerprint})
    _save_processor(model, {lang: model.vocabularies[t] for t, lang in languages.items()}, out_dir)
    return out_dir


def _mms_size(model: CTCModel, task: str) -> int:
    if task not in model.heads:
        raise WavadaptError(f"unknown task {task!r}; the model has {sorted(model.heads)}")
    if model.stacks[task] != (task,) or adapter_config(model.backbone, task).form != "mms":
        what = (f"stacked on {' + '.join(s for s in model.stacks[task] if s != task)}" if len(model.stacks[task]) > 1
                else f"a {adapter_config(model.backbone, task).form}-form adapter set" if task in model.stacks[task]
                else "no adapter set of its own")
        raise WavadaptError(f"task {task!r} has {what}: the MMS layout holds only tasks with one mms-form adapter "
                            "set each; train one with `finetune --method adapters --adapter-form mms` on a pre-LN "
                            "backbone (an MMS or XLS-R checkpoint), or keep this task as a wavadapt task file")
    return adapter_config(model.backbone, task).size


def _save_processor(model: CTCModel, vocabularies: dict[str, Vocabulary], out_dir: Path) -> None:
    """Nested vocab.json, tokenizer and feature-extractor configs, written by transformers' own processor."""
    vocab_file = out_dir / "vocab.json"
    nested = {lang: {t: i for i, t in enumerate(v.tokens)} for lang, v in vocabularies.items()}
    vocab_file.write_text(json.dumps(nested, ensure_ascii=False), encoding="utf-8")
    specials = {(v.blank, v.unk) for v in vocabularies.values()}
    if len(specials) != 1:  # one tokenizer config serves every language
        raise WavadaptError(f"the languages' vocabularies name different blank / unknown tokens {sorted(specials)}")
    (blank, unk), = specials
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), target_lang=next(iter(vocabularies)), pad_token=blank,
                                     unk_token=unk)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=model.normalize_waveforms,
                                         return_attention_mask=model.backbone.config.feat_extract_norm == "layer")
    with quiet_transformers():
        Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
