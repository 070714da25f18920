import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.check import check_corpus
from wavadapt.data.corpora import read_manifest
from wavadapt.data.text import Vocabulary

RATE = 16000


def speechlike(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (round(seconds * rate), channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def plant(root: Path) -> dict[str, str | None]:
    """One file per problem (None: a good file), as a manifest; returns {utterance id: expected kind}."""
    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "good.flac", speechlike(1.0), RATE)
    sf.write(audio / "short.flac", speechlike(0.1), RATE)
    sf.write(audio / "stereo.flac", speechlike(1.0, channels=2), RATE)
    sf.write(audio / "narrowband.flac", speechlike(1.0, 8000), 8000)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), RATE)
    nan = speechlike(1.0)
    nan[100] = np.nan
    sf.write(audio / "nan.wav", nan, RATE, subtype="FLOAT")
    (audio / "corrupt.flac").write_bytes(b"this is not audio" * 50)
    sf.write(audio / "cut.mp3", speechlike(2.0), RATE)
    data = (audio / "cut.mp3").read_bytes()
    (audio / "cut.mp3").write_bytes(data[: len(data) // 3])  # an interrupted download
    sf.write(audio / "oov.flac", speechlike(1.0), RATE)
    rows = {
        "good": ("good.flac", "hello there", None),
        "short": ("short.flac", "hello", "too short"),
        "stereo": ("stereo.flac", "hello", "stereo"),
        "narrowband": ("narrowband.flac", "hello", "sample rate"),
        "empty": ("empty.wav", "hello", "empty"),
        "nan": ("nan.wav", "hello", "non-finite"),
        "corrupt": ("corrupt.flac", "hello", "unreadable"),
        "cut": ("cut.mp3", "hello", "truncated"),
        "oov": ("oov.flac", "hello zebra", "oov characters"),
        "punctuation": ("good.flac", "…?!", "empty transcript"),
        "foreign": ("good.flac", "hello 東京", "foreign letters"),
        "symbol": ("good.flac", "hello ©", "dropped characters"),
    }
    lines = ["id\tpath\ttext\tlanguage"] + [f"{k}\taudio/{p}\t{t}\ten" for k, (p, t, _) in rows.items()]
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return {k: kind for k, (_, _, kind) in rows.items()}


@pytest.fixture
def planted(tmp_path) -> tuple[Path, dict[str, str | None]]:
    expected = plant(tmp_path)
    Vocabulary.build(["hello there"], "en").save_json(tmp_path / "vocab.json")
    return tmp_path, expected


def test_check_corpus_finds_each_planted_problem_by_file(planted):
    root, expected = planted
    vocab = Vocabulary.load_json(root / "vocab.json")
    report = check_corpus(read_manifest(root / "train.tsv"), vocab, min_seconds=0.5, max_seconds=30)
    found = {p.id: p.kind for p in report.problems}
    assert found == {k: kind for k, kind in expected.items() if kind}
    by_id = {p.id: p for p in report.problems}
    assert by_id["corrupt"].path.endswith("corrupt.flac") and "Format not recognised" in by_id["corrupt"].detail
    assert by_id["oov"].detail == "a b z become <unk>"
    assert by_id["narrowband"].detail.startswith("8000 Hz")
    assert {p.id for p in report.unusable} == {"empty", "nan", "corrupt", "cut"} and not report.ok
    assert by_id["cut"].detail.startswith("decoded ") and by_id["cut"].detail.endswith(" its header declares")
    assert by_id["foreign"].detail.startswith("京 東 outside the en alphabet: fine-tuning skips this transcript")
    assert report.num_files == 12
    assert "4 unusable, 7 warnings" in report.summary().splitlines()[0]
    assert report.rates == {16000: 9, 8000: 1}  # unusable files (corrupt, cut) are not counted


def test_check_command_exit_status_and_json(planted):
    root, expected = planted
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(root / "train.tsv"), "--vocab", str(root / "vocab.json"), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert {p["id"] for p in report["problems"]} == {k for k, kind in expected.items() if kind}

    (root / "good.tsv").write_text("path\ttext\naudio/good.flac\thello there\n")
    result = runner.invoke(app, ["check", str(root / "good.tsv")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 files, 0.00 h of audio: 0 unusable, 0 warnings")


def test_check_synthetic_corpus_is_clean(synth_corpus):
    runner = CliRunner()
    for language in ("en", "es"):
        result = runner.invoke(app, ["check", str(synth_corpus), "--language", language, "--split", "train"])
        assert result.exit_code == 0, result.output
        assert " 0 unusable, 0 warnings" in result.stdout
    assert "at 48000 Hz" in result.stdout  # Common Voice mp3: counted, not a warning
