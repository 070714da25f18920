"""Fine-tuned fairseq CTC checkpoints (Wav2VecCtc, dict.ltr.txt beside them) load as one wavadapt task computing the
logits and greedy transcripts of the transformers model that transformers' converter makes of them; wavadapt tasks
train and load beside it."""

import argparse
import json

import pytest
import torch
from model_probes import AUDIO, LARGE_STYLE, task_logits
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.fairseq import read_fairseq_dictionary
from wavadapt.interop.hf import TASK
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import load_backbone, make_config
from wavadapt.model.checkpoint import backbone_fingerprint, save_task
from wavadapt.model.fairseq import to_fairseq_state_dict
from wavadapt.training.methods import MethodConfig, prepare

# dict.ltr.txt as fairseq's fine-tuning recipes write it: "<symbol> <count>", most frequent first (lowercase letters:
# the case wavadapt's normalised text has, so both decoders spell the same)
DICT_LTR = "| 94802\ne 51860\nt 38431\na 33152\no 31495\nn 28855\ni 28794\nh 27187\ns 26071\nr 23546\n"
FAIRSEQ_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "|", *"etaonihsr"]  # fairseq's Dictionary: specials, then the file


def converter_vocab(tokens: list[str]) -> dict[str, int]:
    """vocab.json as transformers' convert_wav2vec2_original_pytorch_checkpoint_to_pytorch writes it: the
    Dictionary's indices with <pad> and <s> swapped ("CTC symbol is <pad> and not <s> as in fairseq"); it copies
    w2v_encoder.proj to lm_head unchanged, so HF's blank <pad> (pad_token_id 0) is fairseq's blank <s>."""
    ids = {t: i for i, t in enumerate(tokens)}
    ids["<pad>"], ids["<s>"] = 0, 1
    return ids


def _write_checkpoint(path, overrides=None, seed=0, normalize=None, dictionary=DICT_LTR):
    """A fine-tuning run's checkpoint_best.pt and its data directory's dict.ltr.txt; and the transformers model the
    converter makes of them (the same weights)."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(make_config("tiny", vocab_size=len(FAIRSEQ_TOKENS), pad_token_id=0,
                                       **(overrides or {}))).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(std=1.0)  # a varied best path
        # never fairseq's <pad> </s> <unk>: transformers' decode spells them out, wavadapt's and fairseq's drop them
        model.lm_head.bias[1:4] = -1e4
        model.lm_head.bias[[0, 4]] = 12.0  # some blanks and word boundaries
    checkpoint = to_fairseq_state_dict(model, normalize=normalize)
    torch.save(checkpoint, path / "checkpoint_best.pt")
    (path / "dict.ltr.txt").write_text(dictionary)
    return path / "checkpoint_best.pt", model, checkpoint


def _hf_transcripts(model: Wav2Vec2ForCTC, tmp_path) -> tuple[torch.Tensor, list[str]]:
    (tmp_path / "vocab.json").write_text(json.dumps(converter_vocab(FAIRSEQ_TOKENS)))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), do_lower_case=False)
    with torch.no_grad():
        logits = model(AUDIO).logits
    return logits, tokenizer.batch_decode(logits.argmax(-1))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    return _write_checkpoint(tmp_path_factory.mktemp("ctc"))


@pytest.mark.parametrize("overrides", [{}, LARGE_STYLE], ids=["post-ln", "pre-ln"])
def test_finetuned_checkpoint_is_one_task_with_the_converted_models_logits_and_transcripts(tmp_path, overrides):
    path, reference, checkpoint = _write_checkpoint(tmp_path / "run", overrides)
    # fairseq's layout: Wav2VecCtc's keys, the pre-training run's config in w2v_args, the labels' task
    assert {k.split(".", 2)[1] for k in checkpoint["model"]} == {"w2v_model", "proj"}
    assert checkpoint["cfg"]["model"]["_name"] == "wav2vec_ctc"
    assert checkpoint["cfg"]["model"]["w2v_args"]["model"]["_name"] == "wav2vec2"
    assert checkpoint["cfg"]["task"]["labels"] == "ltr"

    model = load_asr_model(path, [], trust_pickle=True)
    assert list(model.heads) == [TASK] and model.active == TASK and model.stacks[TASK] == ()
    vocab = model.vocabularies[TASK]
    assert vocab.tokens == FAIRSEQ_TOKENS and vocab.blank == "<s>" and vocab.blank_id == 0
    with torch.no_grad():
        out = model(AUDIO)
    logits, texts = _hf_transcripts(reference, tmp_path)
    # wavadapt keeps fairseq's ids; the converter's are the same ids, <s> and <pad> renamed
    hf_ids = converter_vocab(FAIRSEQ_TOKENS)
    renamed = {"<s>": "<pad>", "<pad>": "<s>"}
    order = [hf_ids[renamed.get(t, t)] for t in vocab.tokens]
    assert order == list(range(len(vocab)))
    torch.testing.assert_close(out.logits, logits[..., order], atol=1e-5, rtol=0)
    assert all(texts)
    # wavadapt writes one space for a run of word delimiters, transformers one per delimiter
    assert model.greedy_decode(out) == [" ".join(t.split()) for t in texts]


@pytest.mark.parametrize("overrides, normalize", [({}, True), (LARGE_STYLE, False)], ids=["post-ln", "pre-ln"])
def test_task_normalize_decides_waveform_normalisation(tmp_path, overrides, normalize):
    # the opposite of what the CNN's norm suggests (group norm: not normalised; layer norm: normalised)
    path, _, checkpoint = _write_checkpoint(tmp_path, overrides, normalize=normalize)
    assert checkpoint["cfg"]["task"]["normalize"] is normalize
    assert load_asr_model(path, [], trust_pickle=True).normalize_waveforms is normalize


def test_argparse_era_checkpoint_reads_its_flat_args(finetuned, tmp_path):
    """Checkpoints of fairseq < 0.10 (wav2vec_small_960h.pt) keep task and model settings in one Namespace."""
    _, reference, checkpoint = finetuned
    inner = argparse.Namespace(**checkpoint["cfg"]["model"]["w2v_args"]["model"])
    args = argparse.Namespace(arch="wav2vec_ctc", task="audio_pretraining", labels="ltr", normalize=True,
                              w2v_args=inner)
    torch.save({"args": args, "model": checkpoint["model"]}, tmp_path / "old.pt")
    (tmp_path / "dict.ltr.txt").write_text(DICT_LTR)
    model = load_asr_model(tmp_path / "old.pt", [], trust_pickle=True)
    assert model.normalize_waveforms is True
    torch.testing.assert_close(task_logits(model), _hf_transcripts(reference, tmp_path)[0], atol=1e-5, rtol=0)


def test_dictionary_with_ctc_blank_names_it_the_blank(tmp_path):
    """fairseq's w2l / viterbi decoders take <ctc_blank> as the blank where the dictionary has one."""
    (tmp_path / "dict.ltr.txt").write_text("| 10\na 5\n<ctc_blank> 0\n")
    vocab = read_fairseq_dictionary(tmp_path / "dict.ltr.txt")
    assert vocab.tokens == ["<s>", "<pad>", "</s>", "<unk>", "|", "a", "<ctc_blank>"] and vocab.blank_id == 6
    assert vocab.ctc_decode([5, 6, 5, 0, 4, 5]) == "aa a"


def test_dictionary_beside_the_checkpoint_or_given(tmp_path):
    path, _, _ = _write_checkpoint(tmp_path / "run")
    moved = tmp_path / "elsewhere" / "dict.ltr.txt"
    moved.parent.mkdir()
    (path.parent / "dict.ltr.txt").rename(moved)
    with pytest.raises(CheckpointError, match=rf"{path}: no dict.ltr.txt beside the fine-tuned checkpoint; .* --vocab"):
        load_asr_model(path, [], trust_pickle=True)
    assert load_asr_model(path, [], trust_pickle=True, vocab=moved).vocabularies[TASK].tokens == FAIRSEQ_TOKENS
    with pytest.raises(WavadaptError, match="--vocab applies to fine-tuned fairseq checkpoints only"):
        load_asr_model("tiny", [], vocab=moved)


def test_projection_and_dictionary_must_agree(tmp_path):
    path, _, _ = _write_checkpoint(tmp_path, dictionary=DICT_LTR.replace("r 23546\n", ""))
    n = len(FAIRSEQ_TOKENS)
    expected = rf"{path}: the CTC projection has {n} outputs, the dictionary \S+ {n - 1} tokens"
    with pytest.raises(CheckpointError, match=expected):
        load_asr_model(path, [], trust_pickle=True)


def test_new_adapter_task_beside_the_checkpoints_leaves_it_unchanged(finetuned, tmp_path):
    path = finetuned[0]
    model = load_asr_model(path, [], trust_pickle=True)
    before = task_logits(model)
    params = prepare(model, "en", Vocabulary.build(["hello world"]), MethodConfig("adapters", adapter_size=16))
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    assert torch.equal(task_logits(model, TASK), before)
    # the task file fingerprints the checkpoint's backbone, the same as load_backbone's
    assert backbone_fingerprint(model.backbone) == backbone_fingerprint(load_backbone(path, trust_pickle=True))
    loaded = load_asr_model(path, [save_task(model, "en", tmp_path)], trust_pickle=True)
    assert sorted(loaded.heads) == [TASK, "en"] and loaded.active == "en"
    assert torch.equal(task_logits(loaded, "en"), task_logits(model, "en"))
    assert torch.equal(task_logits(loaded, TASK), before)


def test_export_to_fairseq_round_trips_the_checkpoints_task(finetuned, tmp_path):
    path = finetuned[0]
    out = tmp_path / "out" / "ctc.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--model", str(path), "--trust-pickle", "--task", TASK, "--format",
                                 "fairseq", "--out", str(out)])
    assert result.exit_code == 0, result.output
    original, exported = load_asr_model(path, [], trust_pickle=True), load_asr_model(out, [], trust_pickle=True)
    assert exported.vocabularies[TASK].tokens == original.vocabularies[TASK].tokens == FAIRSEQ_TOKENS
    assert (out.parent / "dict.ltr.txt").is_file()
    assert torch.equal(task_logits(exported), task_logits(original))
    model = load_asr_model(path, [], trust_pickle=True)
    prepare(model, "en", Vocabulary.build(["hello"]), MethodConfig("adapters", adapter_size=8))
    task_file = save_task(model, "en", tmp_path / "task")
    result = runner.invoke(app, ["export", str(task_file), "--model", str(path), "--trust-pickle", "--format",
                                 "fairseq", "--out", str(tmp_path / "x.pt")])
    assert result.exit_code != 0 and "runs adapters" in str(result.exception)
