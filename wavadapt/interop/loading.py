"""The one door to every model wavadapt reads: a preset, a backbone with task files, a fine-tuned transformers
CTC directory, an MMS directory or a fairseq checkpoint, whichever the path is."""

from pathlib import Path

import torch

from wavadapt.errors import WavadaptError
from wavadapt.interop.fairseq import is_fairseq_file, load_fairseq_file
from wavadapt.interop.hf import is_ctc_dir, load_ctc_dir, read_do_normalize
from wavadapt.interop.mms import is_mms_dir, load_mms_dir
from wavadapt.model.backbone import PRESETS, build_backbone, load_backbone, resolve_checkpoint
from wavadapt.model.checkpoint import load_task
from wavadapt.model.ctc import CTCModel


def load_asr_model(model: str | Path, adapters: list[Path], *, trust_pickle: bool = False,
                   family: str | None = None, seed: int = 0, task: str | None = None,
                   vocab: Path | None = None) -> CTCModel:
    """A CTCModel in eval mode from a backbone and task files loaded in order (a language adapter before the
    task stacked on it); the last task with a head is active, or ``task``.

    ``model`` is a preset name (tiny, base, large: random weights drawn with ``seed``, for tests and demos),
    a Hugging Face directory (e.g. a run's ``backbone/``) or a fairseq .pt (needs ``trust_pickle``). A fine-tuned
    transformers CTC directory brings its own task (`wavadapt.interop.hf`), an MMS directory one task per language
    (`wavadapt.interop.mms`), a fine-tuned fairseq CTC checkpoint its task with the dictionary beside it or ``vocab``
    (`wavadapt.interop.fairseq`).
    """
    path = resolve_checkpoint(model)
    if vocab is not None and not is_fairseq_file(path):
        raise WavadaptError("--vocab applies to fine-tuned fairseq checkpoints only: other models bring their own")
    if str(model) in PRESETS:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = build_backbone(str(model), family or "wav2vec2")
        asr = CTCModel(backbone).eval()
    elif family is not None:
        raise WavadaptError("--family applies to presets only: a checkpoint names its own family")
    elif is_mms_dir(path):  # one language when only it is asked for: mms-1b-all holds 1162 (10 GB in fp32)
        asr = load_mms_dir(path, task, languages=[task] if task is not None and not adapters else None)
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
    return asr
