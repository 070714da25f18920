"""The Python API as the README shows it: its code block runs as written, on a corpus laid out where it looks."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import wavadapt
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import WavadaptError
from wavadapt.inference.transcription import Transcript

README = Path(__file__).parents[1] / "README.md"


def readme_api() -> str:
    """The indented code block of the README's "Python API" section."""
    section = "\n" + README.read_text().split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"\n\n((?:    .*\n|\n)+)", section).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


def test_the_readme_api_runs_as_written(synth_corpus, tmp_path, monkeypatch, capsys):
    """corpus/nl: train and dev manifests of real recordings' layout (the synthetic English audio, labelled nl)."""
    corpus = tmp_path / "corpus" / "nl"
    corpus.mkdir(parents=True)
    for split in ("train", "dev"):
        rows = [f"{u.path}\t{u.text}\tnl\n" for u in open_corpus(synth_corpus, split, "en")]
        (corpus / f"{split}.tsv").write_text("path\ttext\tlanguage\n" + "".join(rows))
    clip = open_corpus(synth_corpus, "test", "en")[0].path
    shutil.copy(clip, tmp_path / "clip.wav")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_api(), str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out.strip()
    reloaded = namespace["model"]
    assert (tmp_path / "runs" / "nl-api" / "adapter.nl.json").is_file() and reloaded.active == "nl"
    assert wavadapt.transcribe(reloaded, "clip.wav").text == printed  # the run's folder is the model it trained


def test_transcribe_takes_files_waveforms_and_lists_in_order(synth_corpus):
    model = wavadapt.load("tiny", [])
    model.add_task("en", model_vocabulary(synth_corpus))
    with pytest.raises(WavadaptError, match="no task to transcribe with: pass task= \\(the model has en\\)"):
        wavadapt.transcribe(model, "x.wav")
    model.activate("en")
    files = [u.path for u in open_corpus(synth_corpus, "test", "en")[:2]]
    from wavadapt.data.audio import read_audio

    waves = [read_audio(f) for f in files]
    one = wavadapt.transcribe(model, files[0])
    assert isinstance(one, Transcript) and one.path == str(files[0])
    mixed = wavadapt.transcribe(model, [files[0], waves[1], str(files[1]), waves[0]])
    assert [t.text for t in mixed] == [one.text, *(wavadapt.transcribe(model, w).text for w in (waves[1],)),
                                       wavadapt.transcribe(model, files[1]).text, one.text]
    at_8k = wavadapt.transcribe(model, waves[0][::2].copy(), sample_rate=8000)
    assert isinstance(at_8k.text, str) and at_8k.duration == pytest.approx(len(waves[0]) / 16000, abs=0.01)
    assert np.isfinite(at_8k.duration)


def model_vocabulary(corpus):
    from wavadapt.data.text import Vocabulary

    return Vocabulary.build([u.text for u in open_corpus(corpus, "train", "en")], "en")
