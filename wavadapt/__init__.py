"""wavadapt: bottleneck adapters for self-supervised speech models.

The Python API, in three calls (each imports what it needs when called, so ``import wavadapt`` stays instant)::

    import wavadapt

    model = wavadapt.load("tiny-nl-real", adapters=["runs/nl/adapter.nl.json"])  # or wavadapt.load("runs/nl")
    print(wavadapt.transcribe(model, "clip.wav").text)                         # a file, a waveform, or a list
    wavadapt.finetune(model, "corpus/nl", language="nl", out="runs/nl-2", max_updates=1000, lr=1e-3)

Everything else lives in the stage packages (``wavadapt.data``, ``.model``, ``.training``, ``.evaluation``,
``.inference``, ...), which the command line uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = version("wavadapt")  # pyproject.toml says it
__all__ = ["__version__", "finetune", "load", "transcribe"]

if TYPE_CHECKING:
    import numpy as np

    from wavadapt.inference.transcription import Transcript
    from wavadapt.model.ctc import CTCModel


def load(model: str | Path, adapters: Sequence[str | Path] = (), *, task: str | None = None,
         trust_pickle: bool = False) -> CTCModel:
    """A model with its tasks, in eval mode: a shipped model's name (``tiny-nl-real``), a fine-tuning run's folder,
    a Hugging Face, MMS or fairseq checkpoint, or a preset (``tiny``: random weights), with the task files of
    ``adapters`` (``FILE:NAME`` loads one under another name); ``task`` picks the active one."""
    from wavadapt.interop.loading import load_asr_model

    return load_asr_model(model, list(adapters), task=task, trust_pickle=trust_pickle)


def transcribe(model: CTCModel, audio: str | Path | np.ndarray | list, *, task: str | None = None,
               sample_rate: int = 16000) -> Transcript | list[Transcript]:
    """Transcribe an audio file (any format soundfile reads, any rate), a mono float waveform at ``sample_rate``,
    or a list of them, with ``task`` (default: the active one), greedily: a :class:`Transcript` (``text``, ``words``
    with their times, or ``error`` for a file that could not be read) for each, in batches."""
    import numpy as np
    import soxr

    from wavadapt.errors import WavadaptError
    from wavadapt.inference.transcription import Request, transcribe_requests, transcribe_waveforms

    items = audio if isinstance(audio, list) else [audio]
    task = task or model.active
    if task is None:
        known = ", ".join(model.heads) or "none"
        raise WavadaptError(f"no task to transcribe with: pass task= (the model has {known})")
    arrays = {i: np.asarray(x, dtype=np.float32) for i, x in enumerate(items) if not isinstance(x, str | Path)}
    if sample_rate != 16000:
        arrays = {i: soxr.resample(x, sample_rate, 16000, quality="HQ") for i, x in arrays.items()}
    files = [i for i in range(len(items)) if i not in arrays]
    results = dict(zip(files, transcribe_requests(model, [Request(Path(items[i]), task) for i in files]),
                       strict=True))
    results |= zip(arrays, transcribe_waveforms(model, [(x, task) for x in arrays.values()]), strict=True)
    ordered = [results[i] for i in range(len(items))]
    return ordered if isinstance(audio, list) else ordered[0]


def finetune(model: CTCModel, corpus: str | Path, *, language: str, out: str | Path, method: str = "adapters",
             task: str | None = None, max_updates: int = 1000, lr: float | None = None, adapter_size: int | None = None,
             split: str = "train", valid_split: str | None = "dev", max_seconds_per_batch: float = 100.0,
             resume: bool = False, overwrite: bool = False) -> list[dict]:
    """Fine-tune ``model`` on a corpus split (``wavadapt finetune`` from Python) with one of the papers' methods
    (full, top-n-full, adapters, top-n-adapters, head-only); the run goes to ``out`` and the task (default: the
    language) stays on ``model``; the learning rate, adapter size and masking default by method and model size
    (``training.methods.SMALL_MODEL``). Returns the training log's rows."""
    from wavadapt.data.corpora import open_corpus
    from wavadapt.training.finetune import AugmentConfig
    from wavadapt.training.finetune import finetune as run
    from wavadapt.training.loop import TrainConfig
    from wavadapt.training.methods import MethodConfig, default_adapter_size, default_lr
    from wavadapt.training.run_folder import data_source

    hidden = model.backbone.config.hidden_size
    config = TrainConfig(max_updates=max_updates, lr=lr or default_lr(method, hidden),
                         max_seconds_per_batch=max_seconds_per_batch)
    valid = open_corpus(corpus, valid_split, language) if valid_split else None
    return run(model, task or language, open_corpus(corpus, split, language),
               MethodConfig(method, adapter_size=adapter_size or default_adapter_size(hidden)), config, Path(out),
               valid=valid, augment=AugmentConfig.for_size(hidden), resume=resume, overwrite=overwrite,
               data_source=data_source(corpus, split, language))
