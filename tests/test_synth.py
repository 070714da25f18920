"""The espeak-ng corpus: real LibriSpeech / Common Voice layouts, disjoint splits, determinism, CLI."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.corpora import open_corpus
from wavadapt.data.synth import COMMONVOICE_COLUMNS, LABELED_SPLITS, SPLITS, SynthError, synthesize_corpus
from wavadapt.data.text import Vocabulary, normalize_text

UTT_ID = re.compile(r"(\d+)-(\d+)-\d{4}")


def _corpus(root: Path) -> dict:
    return json.loads((root / "corpus.json").read_text())


def _librispeech_transcripts(root: Path, split: str) -> dict[str, str]:
    lines = [
        line for p in (root / "en/LibriSpeech" / split).rglob("*.trans.txt") for line in p.read_text().splitlines()
    ]
    return dict(line.split(" ", 1) for line in lines)


def _tsv(root: Path, language: str, split: str) -> list[dict[str, str]]:
    header, *rows = (root / language / f"{split}.tsv").read_text().splitlines()
    assert tuple(header.split("\t")) == COMMONVOICE_COLUMNS
    return [dict(zip(COMMONVOICE_COLUMNS, row.split("\t"), strict=True)) for row in rows]


def test_corpus_json(synth_corpus):
    corpus = _corpus(synth_corpus)
    assert corpus["seed"] == 0 and corpus["speakers"] == 4 and corpus["wavadapt_version"]
    assert corpus["languages"]["en"]["layout"] == "librispeech"
    assert corpus["languages"]["es"]["layout"] == "commonvoice"
    for entry in corpus["languages"].values():
        assert list(entry["splits"]) == list(SPLITS)
        assert len(entry["speakers"]) == 4
        for split, info in entry["splits"].items():
            assert info["utterances"] > 0 and info["seconds"] > 0 and info["labeled"] == (split in LABELED_SPLITS)
            assert (synth_corpus / info["path"]).exists()


def test_librispeech_layout(synth_corpus):
    splits = _corpus(synth_corpus)["languages"]["en"]["splits"]
    for split in SPLITS:
        flacs = sorted((synth_corpus / "en/LibriSpeech" / split).rglob("*.flac"))
        assert len(flacs) == splits[split]["utterances"]
        seconds = 0.0
        for flac in flacs:
            speaker, chapter = UTT_ID.fullmatch(flac.stem).groups()
            assert flac.parent.parts[-2:] == (speaker, chapter)
            info = sf.info(flac)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            seconds += info.frames / 16000
        assert seconds == pytest.approx(splits[split]["seconds"], abs=1e-2)
        transcripts = _librispeech_transcripts(synth_corpus, split)
        if split in LABELED_SPLITS:
            assert sorted(transcripts) == [f.stem for f in flacs]
            assert all(re.fullmatch(r"[A-Z']+( [A-Z']+)+", t) for t in transcripts.values())
        else:
            assert transcripts == {}  # pretrain is unlabeled


def test_common_voice_layout(synth_corpus):
    splits = _corpus(synth_corpus)["languages"]["es"]["splits"]
    for split in SPLITS:
        rows = _tsv(synth_corpus, "es", split)
        assert len(rows) == splits[split]["utterances"]
        assert all(r["locale"] == "es" and len(r["client_id"]) == 128 for r in rows)
        if split in LABELED_SPLITS:  # Common Voice keeps case and punctuation
            assert all(r["sentence"][0].isupper() and r["sentence"][-1] in ".!?" for r in rows)
        else:
            assert all(r["sentence"] == "" for r in rows)
    mp3 = synth_corpus / "es/clips" / rows[0]["path"]
    x, rate = sf.read(mp3, dtype="float32")
    assert rate == 48000 and x.ndim == 1 and len(x) > rate and np.isfinite(x).all()
    assert 0.01 < np.sqrt(np.mean(x**2)) < 0.5


def test_labeled_splits_never_share_a_sentence(synth_corpus):
    en = {s: set(_librispeech_transcripts(synth_corpus, s).values()) for s in LABELED_SPLITS}
    es = {s: {r["sentence"] for r in _tsv(synth_corpus, "es", s)} for s in LABELED_SPLITS}
    for texts in (en, es):
        assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"]
        assert not texts["dev"] & texts["test"]


def test_corpus_readers_open_the_synthetic_corpus(synth_corpus):
    corpus = _corpus(synth_corpus)
    for language in ("en", "es"):
        utterances = open_corpus(synth_corpus, "train", language)
        assert len(utterances) == corpus["languages"][language]["splits"]["train"]["utterances"]
        assert all(u.text and u.path.is_file() for u in utterances)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    minutes = {"train": 0.05, "test": 0.05}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synthesize_corpus(tmp_path / name, ("en", "es"), minutes=minutes, seed=seed, progress=False)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a["es/train.tsv"] != c["es/train.tsv"]
    assert set(a) != set(c)  # other speaker and chapter ids, other clips


def test_synth_errors(tmp_path, monkeypatch):
    with pytest.raises(SynthError, match="no espeak-ng voice configured for 'xx'"):
        synthesize_corpus(tmp_path, ("xx",), progress=False)
    with pytest.raises(SynthError, match="unknown splits"):
        synthesize_corpus(tmp_path, ("es",), minutes={"validation": 1}, progress=False)
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "train.tsv").write_text("x")
    with pytest.raises(SynthError, match="already exists"):
        synthesize_corpus(tmp_path, ("es",), progress=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SynthError, match="apt-get install espeak-ng"):
        synthesize_corpus(tmp_path / "new", ("es",), progress=False)


def test_cli_synth_and_vocab(synth_corpus, tmp_path):
    runner = CliRunner()
    minutes = ["--pretrain-minutes", "0", "--train-minutes", "0.03", "--dev-minutes", "0", "--test-minutes", "0"]
    result = runner.invoke(app, ["synth", str(tmp_path / "c"), "--languages", "it", *minutes, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^it\s+commonvoice\s+train\s+[1-9]", result.output, re.M)

    out, fairseq = tmp_path / "vocab.json", tmp_path / "dict.ltr.txt"
    args = ["vocab", str(synth_corpus), "--language", "es", "--out", str(out), "--fairseq-dict", str(fairseq)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    vocab = Vocabulary.load_json(out)
    assert vocab.tokens == Vocabulary.from_fairseq_dict(fairseq).tokens
    for row in _tsv(synth_corpus, "es", "train"):
        assert not vocab.oov_chars(normalize_text(row["sentence"], "es"))
