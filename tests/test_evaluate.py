"""Evaluation: jiwer scores, padded batch == unbatched (layer-norm CNN), per-language results, CLI."""

import json
from dataclasses import replace

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import Wav2Vec2Model
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.audio import read_audio
from wavadapt.data.batching import collate
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.evaluation.corpus import evaluate, score
from wavadapt.inference.engine import forward_padded, transcribe
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import build_backbone, load_backbone, make_config
from wavadapt.model.checkpoint import save_task
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

runner = CliRunner()


def _asr(backbone, vocab: Vocabulary) -> CTCModel:
    """A task on ``backbone`` with trained-looking (non-initial) adapters and head."""
    model = CTCModel(backbone).eval()
    params = prepare(model, "en", vocab, MethodConfig("adapters", adapter_size=16))
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.5)
    return model


@pytest.fixture(scope="module")
def vocab(synth_corpus) -> Vocabulary:
    texts = [u.text for lang in ("en", "es") for u in open_corpus(synth_corpus, "train", lang)]
    return Vocabulary.build(texts, "es")


@pytest.fixture(scope="module")
def test_set(synth_corpus):
    return open_corpus(synth_corpus, "test", "en") + open_corpus(synth_corpus, "test", "es")


@pytest.fixture(scope="module")
def layer_norm_model(vocab) -> CTCModel:
    torch.manual_seed(0)
    return _asr(Wav2Vec2Model(make_config("tiny", feat_extract_norm="layer", conv_bias=True)), vocab)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory, vocab):
    torch.manual_seed(0)  # load_asr_model("tiny") draws the preset's weights with seed 0 as well
    return save_task(_asr(build_backbone("tiny"), vocab), "en", tmp_path_factory.mktemp("task"))


def test_scores_equal_jiwer():
    refs, hyps = ["the cat sat", "hello world"], ["the cat sit", "hello"]
    s = score(refs, hyps)
    assert s.wer == pytest.approx(2 / 5) == jiwer.wer(refs, hyps)  # 1 substitution + 1 deletion of 5 words
    assert s.cer == pytest.approx(7 / 22) == jiwer.cer(refs, hyps)  # 1 substitution + " world" of 22 characters


def test_padded_batch_equals_unbatched_with_layer_norm_cnn(layer_norm_model, test_set):
    model = layer_norm_model
    waveforms = [torch.from_numpy(read_audio(u.path)) for u in test_set[:3]]
    assert len({len(w) for w in waveforms}) == 3  # really padded
    batch = collate([{"id": str(i), "waveform": w} for i, w in enumerate(waveforms)])
    with torch.no_grad():
        padded = forward_padded(model, batch["waveforms"], batch["attention_mask"])
        for i, w in enumerate(waveforms):
            alone = model(w[None])
            n = int(padded.lengths[i])
            assert n == alone.lengths[0]
            torch.testing.assert_close(padded.logits[i, :n], alone.logits[0], atol=1e-4, rtol=1e-4)
        assert model.greedy_decode(padded) == [model.greedy_decode(model(w[None]))[0] for w in waveforms]


def test_padded_batch_equals_unbatched_with_group_norm_cnn(vocab, test_set):
    """Their first conv's GroupNorm takes each row's statistics over its own frames (tests/test_exact_batching.py)."""
    torch.manual_seed(0)
    model = _asr(build_backbone("tiny"), vocab)
    short, long = sorted((torch.from_numpy(read_audio(u.path)) for u in test_set[:2]), key=len)
    batch = collate([{"id": "a", "waveform": short}, {"id": "b", "waveform": long}])
    with torch.no_grad():
        padded = forward_padded(model, batch["waveforms"], batch["attention_mask"])
        alone = model(short[None])
    assert padded.lengths[0] == alone.lengths[0]
    torch.testing.assert_close(padded.logits[0, : alone.lengths[0]], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_group_norm_models_are_scored_as_if_unbatched(vocab, test_set, tmp_path):
    """Their transcripts must not depend on the batch size (the padding their CNN would see). The pre-trained
    shipped backbone, whose features are not a fresh model's near-constant ones: batched, 6 of 7 differ."""
    torch.manual_seed(0)
    model = _asr(load_backbone("tiny-en-synth"), vocab)
    alone = [transcribe(model, read_audio(u.path)) for u in test_set]
    for seconds in (1.0, 1000.0):
        evaluate(model, test_set, max_seconds_per_batch=seconds, out_dir=tmp_path / str(seconds))
        lines = (tmp_path / str(seconds) / f"hyp.{model.active}.txt").read_text().splitlines()
        assert [line.partition(" ")[2] for line in lines] == alone


def test_evaluate_groups_languages_writes_files_and_skips_bad_audio(layer_norm_model, test_set, tmp_path):
    model = layer_norm_model
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"not audio" * 100)
    utterances = test_set + [replace(test_set[0], id="corrupt", path=corrupt)]
    model.train()
    # a 3 s cap: several batches, and the 4.7 s utterance in one of its own
    result = evaluate(model, utterances, max_seconds_per_batch=3, out_dir=tmp_path / "out")
    assert model.training  # the caller's mode is back
    assert result.skipped == ["corrupt"] and result.utterances == len(test_set)
    assert set(result.languages) == {"en", "es"}

    def read(kind):
        lines = (tmp_path / "out" / f"{kind}.en.txt").read_text(encoding="utf-8").splitlines()
        return dict(line.partition(" ")[::2] for line in lines)

    hyps, refs = read("hyp"), read("ref")
    assert list(hyps) == [u.id for u in test_set]  # input order, bad file left out
    for u in test_set:  # batched decoding == one file at a time
        assert hyps[u.id] == transcribe(model, read_audio(u.path))
    for lang, scores in result.languages.items():
        ids = [u.id for u in test_set if u.language == lang]
        assert scores.utterances == len(ids)
        assert scores.wer == jiwer.wer([refs[i] for i in ids], [hyps[i] for i in ids])
        assert scores.cer == jiwer.cer([refs[i] for i in ids], [hyps[i] for i in ids])
    assert result.wer == jiwer.wer(list(refs.values()), list(hyps.values()))
    assert json.loads(json.dumps(result.to_dict()))["languages"]["es"]["utterances"] > 0


def test_evaluate_cli_json(synth_corpus, task_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", str(synth_corpus), "--split", "test", "--language", "es",
                                 "--model", "tiny", "--adapter", str(task_file), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "en" and set(report["languages"]) == {"es"}
    assert report["utterances"] == len(open_corpus(synth_corpus, "test", "es")) and 0 <= report["cer"]
    assert (out / "hyp.en.txt").is_file() and (out / "ref.en.txt").is_file()
    table = runner.invoke(app, ["evaluate", str(synth_corpus), "--language", "en", "--model", "tiny",
                                "--adapter", str(task_file)])
    assert table.exit_code == 0 and "WER" in table.stdout and "\nen " in table.stdout


def test_transcribe_cli_stereo_44k_and_corrupt_file(synth_corpus, task_file, tmp_path):
    u = open_corpus(synth_corpus, "test", "en")[0]
    mono = read_audio(u.path)
    stereo = tmp_path / "stereo44k.wav"
    up = soxr.resample(mono, 16000, 44100)
    sf.write(stereo, np.stack([up, 0.5 * up], axis=1), 44100)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really")
    result = runner.invoke(app, ["transcribe", "--model", "tiny", "--adapter", str(task_file),
                                 str(corrupt), str(stereo), str(u.path)])
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if not line.startswith("warning:")][0].startswith(
        f"error: {corrupt}: ")
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(stereo), str(u.path)]  # the rest still transcribed
    model = load_asr_model("tiny", [task_file])
    assert lines[0].split("\t")[1] == transcribe(model, read_audio(stereo))
    assert lines[1].split("\t")[1] == transcribe(model, mono)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_audio_shorter_than_one_frame_decodes_to_nothing(vocab, norm):
    torch.manual_seed(0)
    model = _asr(Wav2Vec2Model(make_config("tiny", feat_extract_norm=norm, conv_bias=norm == "layer")), vocab)
    assert transcribe(model, np.zeros(200, np.float32)) == ""
    batch = collate([{"id": "short", "waveform": torch.randn(200)}, {"id": "long", "waveform": torch.randn(4000)}])
    mask = batch["attention_mask"].clone()
    with torch.no_grad():
        out = forward_padded(model, batch["waveforms"], batch["attention_mask"])
    assert out.lengths.tolist() == [0, 12] and model.greedy_decode(out)[0] == ""
    assert torch.equal(batch["attention_mask"], mask)  # the caller's mask is untouched
