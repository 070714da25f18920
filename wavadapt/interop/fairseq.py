"""fairseq wav2vec 2.0 checkpoints (.pt) as a CTCModel: a fine-tuned CTC checkpoint with its one task.

A ``Wav2VecCtc`` checkpoint (fairseq's ``audio_finetuning``, e.g. wav2vec_small_960h.pt) loads with its encoder as
the backbone and one task, :data:`TASK`, active, running no adapters, with ``w2v_encoder.proj`` as its head. Its
vocabulary is fairseq's Dictionary for the task's labels: ``<s> <pad> </s> <unk>`` then the symbols of
dict.<labels>.txt (dict.ltr.txt), read from beside the checkpoint (where fairseq's ``task.data`` directory usually
is) or from a file the caller names. The blank is fairseq's (its w2l and viterbi decoders): ``<ctc_blank>`` where the
dictionary has one, else ``<s>``; ``|`` is the word delimiter. Ids are fairseq's own, so the head is used as is.
transformers' converter keeps the ids too and renames ids 0 and 1 (``<pad>`` becomes the blank at id 0): the same
logits and transcripts under other names. The task's ``normalize`` decides the waveform normalisation.

A pre-training checkpoint loads as a backbone without tasks. Either way the backbone fingerprints like
`load_backbone` of the file, so wavadapt tasks trained on that load beside the checkpoint's own.
"""

import copy
from pathlib import Path

import torch
from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

from wavadapt.data.text import SPECIAL_TOKENS, Vocabulary, VocabularyError
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.hf import TASK
from wavadapt.model.adapters import base_state
from wavadapt.model.backbone import model_from_state
from wavadapt.model.ctc import CTCModel
from wavadapt.model.fairseq import open_fairseq_checkpoint, save_fairseq_checkpoint

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
"""fairseq's Dictionary: bos, pad, eos, unk at ids 0-3, before the symbols of its file."""
CTC_BLANK = "<ctc_blank>"


def is_fairseq_file(path: Path) -> bool:
    """Whether ``path`` is a file other than a Hugging Face directory's (weights, JSON): a fairseq .pt to try."""
    return path.is_file() and path.suffix not in (".safetensors", ".bin", ".json")


def read_fairseq_dictionary(path: Path) -> Vocabulary:
    """fairseq's Dictionary of a dict.<labels>.txt as a Vocabulary in its ids, with fairseq's CTC blank."""
    try:
        symbols = Vocabulary.from_fairseq_dict(path)  # the file's symbols, in its order, after wavadapt's specials
    except VocabularyError as e:
        raise CheckpointError(str(e)) from None
    tokens = [*FAIRSEQ_SPECIALS, *symbols.tokens[len(SPECIAL_TOKENS) :]]
    return Vocabulary(tokens, symbols.counts, blank=CTC_BLANK if CTC_BLANK in tokens else "<s>")


def load_fairseq_file(path: Path, *, trust_pickle: bool = False, vocab: Path | None = None) -> CTCModel:
    """A fairseq checkpoint as a CTCModel (eval mode): a fine-tuned one with its task active (see above).

    ``vocab`` is the fine-tuned model's dictionary; without it, dict.<labels>.txt beside the checkpoint.
    """
    checkpoint = open_fairseq_checkpoint(path, trust_pickle=trust_pickle)
    model = CTCModel(model_from_state(path, Wav2Vec2Model, checkpoint.config, checkpoint.state, {})).eval()
    normalize = checkpoint.task.get("normalize")
    model.do_normalize = normalize if isinstance(normalize, bool) else None
    if "lm_head.weight" not in checkpoint.state:
        if vocab is not None:
            raise CheckpointError(f"{path}: a pre-training checkpoint, with no CTC head for the vocabulary {vocab}")
        return model
    if vocab is None:
        vocab = path.parent / f"dict.{checkpoint.task.get('labels') or 'ltr'}.txt"
        if not vocab.is_file():
            raise CheckpointError(f"{path}: no {vocab.name} beside the fine-tuned checkpoint; pass its fairseq "
                                  "dictionary with --vocab")
    vocabulary = read_fairseq_dictionary(vocab)
    weight, bias = checkpoint.state["lm_head.weight"], checkpoint.state["lm_head.bias"]
    if weight.shape[0] != len(vocabulary):
        raise CheckpointError(f"{path}: the CTC projection has {weight.shape[0]} outputs, the dictionary {vocab} "
                              f"{len(vocabulary)} tokens")
    model.add_task(TASK, vocabulary)
    model.heads[TASK].load_state_dict({"weight": weight, "bias": bias})
    model.activate(TASK)
    return model


def export_fairseq(model: CTCModel, task: str | None, path: str | Path) -> Path:
    """Write the backbone (``task`` None: a pre-training-layout checkpoint without a head) or a task that runs
    no adapters (the backbone + its head, with its dict.ltr.txt) as a fairseq checkpoint; return its path.

    Tasks on adapters have no fairseq model to hold them and are refused."""
    backbone = model.backbone
    if not isinstance(backbone, Wav2Vec2Model):
        raise WavadaptError(f"fairseq's wav2vec 2.0 cannot hold a {type(backbone).__name__}")
    if task is None:
        return save_fairseq_checkpoint(backbone, path)
    if task not in model.heads:
        raise WavadaptError(f"unknown task {task!r}; the model has {sorted(model.heads)}")
    if model.stacks[task]:
        raise WavadaptError(f"task {task!r} runs adapters {list(model.stacks[task])}, which fairseq's Wav2VecCtc "
                            "cannot hold: export it with --format mms (mms form) or keep its task file")
    vocab = model.vocabularies[task]
    config = copy.deepcopy(backbone.config)
    config.vocab_size = len(vocab)
    with torch.device("meta"):
        ctc = Wav2Vec2ForCTC(config)
    state = {f"wav2vec2.{k}": t for k, t in base_state(backbone).items()}
    state |= {f"lm_head.{k}": t for k, t in model.heads[task].state_dict().items()}
    ctc.load_state_dict(state, assign=True)
    return save_fairseq_checkpoint(ctc, path, vocab=vocab, normalize=model.normalize_waveforms)
