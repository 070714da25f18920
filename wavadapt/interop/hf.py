"""Fine-tuned transformers CTC directories as a CTCModel with one task.

A directory written by ``Wav2Vec2ForCTC`` / ``HubertForCTC`` / ``WavLMForCTC.save_pretrained`` and its processor
(vocab.json, tokenizer_config.json, preprocessor_config.json or processor_config.json) loads with its base model as
the backbone and one task, active: named by tokenizer_config.json's ``target_lang`` for a nested vocab.json
(``{lang: {token: id}}``) or :data:`TASK` for a flat one (``{token: id}``), running no adapters, with ``lm_head`` as
its head. The feature extractor's ``do_normalize`` decides the waveform normalisation. The backbone fingerprints
like `load_backbone` of the directory, so wavadapt tasks trained on that load beside the checkpoint's own.

The vocabulary keeps the checkpoint's order and names its tokenizer's pad token as the CTC blank and its unknown
token (``<pad>`` / ``<unk>`` in vocabularies converted from fairseq, ``[PAD]`` / ``[UNK]`` last in those of
transformers' CTC fine-tuning example); the word delimiter must be ``|``.
"""

import json
from pathlib import Path

from wavadapt.data.text import WORD_DELIMITER, Vocabulary, VocabularyError
from wavadapt.errors import CheckpointError
from wavadapt.model.backbone import load_ctc_model
from wavadapt.model.ctc import CTCModel

TASK = "ctc"
"""The task of a checkpoint whose vocab.json is flat."""


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; CheckpointError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _config(path: Path) -> dict:
    """config.json, or {} when unreadable (`load_backbone` reports that)."""
    try:
        return read_json(path / "config.json")
    except CheckpointError:
        return {}


def is_ctc_dir(path: Path) -> bool:
    """Whether ``path`` is a directory whose config.json names a ``*ForCTC`` architecture (as save_pretrained does)."""
    return path.is_dir() and any(a.endswith("ForCTC") for a in _config(path).get("architectures") or [])


def adapter_attn_dim(path: Path) -> int | None:
    """config.json's ``adapter_attn_dim``: set in MMS checkpoints (`wavadapt.interop.mms`)."""
    return _config(path).get("adapter_attn_dim") if path.is_dir() else None


def read_do_normalize(path: Path) -> bool | None:
    """The feature extractor's ``do_normalize`` (its default: True): preprocessor_config.json's, or that of
    processor_config.json's ``feature_extractor`` (how transformers 5 saves a processor); None without either."""
    if (path / "preprocessor_config.json").is_file():
        return bool(read_json(path / "preprocessor_config.json").get("do_normalize", True))
    if (path / "processor_config.json").is_file():
        extractor = read_json(path / "processor_config.json").get("feature_extractor")
        if isinstance(extractor, dict):
            return bool(extractor.get("do_normalize", True))
    return None


def _token(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value  # an AddedToken is saved as a dict


def target_lang(path: Path) -> str | None:
    """tokenizer_config.json's ``target_lang`` (the language of a nested vocab.json the tokenizer uses)."""
    file = path / "tokenizer_config.json"
    return read_json(file).get("target_lang") if file.is_file() else None


def read_vocabularies(path: Path) -> Vocabulary | dict[str, Vocabulary]:
    """The directory's vocab.json: one Vocabulary (flat) or one per language (nested).

    The tokenizer's pad token is the blank and its unk token the unknown token. Refuses a word delimiter other than
    ``|`` and a config whose ``pad_token_id`` (the blank of transformers' CTC loss) is not the blank's id."""
    file = path / "tokenizer_config.json"
    tokenizer = read_json(file) if file.is_file() else {}
    pad, unk = _token(tokenizer.get("pad_token", "<pad>")), _token(tokenizer.get("unk_token", "<unk>"))
    delimiter = tokenizer.get("word_delimiter_token", WORD_DELIMITER)
    if delimiter != WORD_DELIMITER:
        raise CheckpointError(f"{file}: word delimiter {delimiter!r}; wavadapt reads {WORD_DELIMITER!r}")
    file = path / "vocab.json"
    if not file.is_file():
        raise CheckpointError(f"{path}: no vocab.json (save the processor or tokenizer beside the model)")
    data = read_json(file)
    if data and all(isinstance(v, dict) for v in data.values()):
        vocabularies = {lang: _vocabulary(f"{file} ({lang!r})", ids, pad, unk) for lang, ids in data.items()}
    else:
        vocabularies = _vocabulary(str(file), data, pad, unk)
    pad_id = _config(path).get("pad_token_id")
    blanks = {v.blank_id for v in (vocabularies.values() if isinstance(vocabularies, dict) else [vocabularies])}
    if pad_id is not None and blanks != {pad_id}:
        raise CheckpointError(f"{path / 'config.json'}: pad_token_id {pad_id} is not the id of the CTC blank <pad>")
    return vocabularies


def _vocabulary(where: str, ids, blank: str, unk: str) -> Vocabulary:
    try:
        return Vocabulary.from_token_ids(where, ids, blank, unk)
    except VocabularyError as e:
        raise CheckpointError(str(e)) from None


def load_ctc_dir(path: Path) -> CTCModel:
    """A fine-tuned transformers CTC directory as a CTCModel (eval mode) with its one task active (see above)."""
    vocabularies = read_vocabularies(path)
    if isinstance(vocabularies, Vocabulary):
        task, vocab = TASK, vocabularies
    else:
        task = target_lang(path)
        if task not in vocabularies:
            raise CheckpointError(f"{path / 'vocab.json'}: languages {sorted(vocabularies)}; tokenizer_config.json's "
                                  f"target_lang {task!r} names none of them")
        vocab = vocabularies[task]
    ctc = load_ctc_model(path)
    if ctc.lm_head.out_features != len(vocab):
        raise CheckpointError(f"{path}: lm_head has {ctc.lm_head.out_features} outputs, the vocabulary {len(vocab)} "
                              "tokens")
    model = CTCModel(ctc.base_model).eval()
    model.add_task(task, vocab)
    model.heads[task].load_state_dict(ctc.lm_head.state_dict())
    model.activate(task)
    model.do_normalize = read_do_normalize(path)
    return model
