"""The one door to every model wavadapt reads: a preset, a backbone with task files, a fine-tuning run's folder, a
fine-tuned transformers CTC directory, an MMS directory or a fairseq checkpoint, whichever the path is."""

import json
import logging
from pathlib import Path

import torch

from wavadapt.errors import WavadaptError
from wavadapt.interop.fairseq import is_fairseq_file, load_fairseq_file
from wavadapt.interop.hf import is_ctc_dir, load_ctc_dir, read_do_normalize
from wavadapt.interop.mms import is_mms_dir, load_mms_dir
from wavadapt.interop.omniasr import is_omniasr_dir, load_omniasr_dir
from wavadapt.model.backbone import PRESETS, build_backbone, load_backbone, resolve_checkpoint, source_of
from wavadapt.model.checkpoint import load_task, safe_name, task_file_spec
from wavadapt.model.ctc import CTCModel

log = logging.getLogger(__name__)


def load_asr_model(model: str | Path, adapters: list[Path], *, trust_pickle: bool = False,
                   family: str | None = None, seed: int = 0, task: str | None = None,
                   vocab: Path | None = None) -> CTCModel:
    """A CTCModel in eval mode from a backbone and task files loaded in order (a language adapter before the
    task stacked on it); the last task with a head is active, or ``task``.

    ``model`` is a preset name (tiny, base, large: random weights drawn with ``seed``, for tests and demos; a
    warning says so), a Hugging Face directory (e.g. a run's ``backbone/``) or a fairseq .pt (needs
    ``trust_pickle``). A fine-tuning run's folder is the backbone it started from (or the one it trained) with
    the task files it stood on and its own, as its run.json records them. A fine-tuned transformers CTC directory
    brings its own task (`wavadapt.interop.hf`), an MMS directory one task per language (`wavadapt.interop.mms`), a
    fine-tuned fairseq CTC checkpoint its task with the dictionary beside it or ``vocab`` (`wavadapt.interop.fairseq`).
    ``adapters`` may name a file ``FILE:NAME`` to load its task under another name.
    """
    path = resolve_checkpoint(model)
    run = _finetuning_run(path)
    if run is not None:
        return _load_run(path, run, adapters, trust_pickle=trust_pickle, task=task)
    if vocab is not None and not is_fairseq_file(path):
        raise WavadaptError("--vocab applies to fine-tuned fairseq checkpoints only: other models bring their own")
    if str(model) in PRESETS:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = build_backbone(str(model), family or "wav2vec2")
        asr = CTCModel(backbone).eval()
        log.warning("%s is a preset: random weights (seed %d), not a trained model", model, seed)
    elif family is not None:
        raise WavadaptError("--family applies to presets only: a checkpoint names its own family")
    elif is_mms_dir(path):  # one language when only it is asked for: mms-1b-all holds 1162 (10 GB in fp32)
        asr = load_mms_dir(path, task, languages=[task] if task is not None and not adapters else None)
    elif is_omniasr_dir(path):
        asr = load_omniasr_dir(path)
    elif is_ctc_dir(path):
        asr = load_ctc_dir(path)
    elif is_fairseq_file(path):
        asr = load_fairseq_file(path, trust_pickle=trust_pickle, vocab=vocab)
    else:
        asr = CTCModel(load_backbone(path, trust_pickle=trust_pickle)).eval()
        asr.do_normalize = read_do_normalize(path)
    for adapter in adapters:
        load_task(asr, adapter)
    if task is not None:
        asr.activate(task)
    asr.source = _source(model, adapters, family, seed)
    return asr


def _source(model: str | Path, adapters: list[Path], family: str | None, seed: int) -> dict:
    """What loads this model again from anywhere: a preset with its family and seed, an absolute path, or a
    shipped checkpoint's name; and the task files, by absolute path."""
    files = [task_file_spec(a) for a in adapters]
    return source_of(model, seed, family=family or "wav2vec2") | {
        "adapters": [str(f.resolve()) + (f":{safe_name(name)}" if name else "") for f, name in files]}


def _finetuning_run(path: Path) -> dict | None:
    """The run.json of a `wavadapt finetune` folder (it names a method), else None."""
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "method" in info and "task" in info else None


def _load_run(path: Path, run: dict, adapters: list[Path], *, trust_pickle: bool, task: str | None) -> CTCModel:
    """A fine-tuning run's model: its start (or the backbone it trained, ``backbone/``), the task files it was
    stacked on, its own task file, then ``adapters``."""
    own = path / f"adapter.{safe_name(run['task'])}.json"
    start = run.get("backbone") or {}
    if not own.is_file():
        raise WavadaptError(f"{path}: the run has no task file {own.name} (it did not finish): --resume it first")
    if (path / "backbone").is_dir():  # full fine-tuning trained the backbone itself
        model, family, seed = path / "backbone", None, 0
    elif "model" in start:
        model, family, seed = start["model"], start.get("family"), start.get("seed", 0)
    else:
        raise WavadaptError(f"{path}: its run.json does not say which backbone the run started from (an older "
                            f"run): give the backbone with --model and the task with --adapter {own}")
    return load_asr_model(model, [*start.get("adapters", []), own, *adapters], trust_pickle=trust_pickle,
                          family=family, seed=seed, task=task)
