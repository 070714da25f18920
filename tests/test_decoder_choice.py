"""The decoder choice where transcripts are made: evaluate scores a beam search with greedy's scores of the same
logits beside it; transcription and the server decode each row of a mixed batch with its own decoder exactly as
alone; the registry gives each task its LM; the command line takes --decoder / --lm and refuses bad files in one
line."""

import json
from pathlib import Path

import openai
import pytest
from cli_runner import run_cli
from test_server import _post
from test_transcription import _two_task_model
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import normalize_text
from wavadapt.decoding import DecoderConfig, LanguageModelError, make_decoder, texts
from wavadapt.decoding.ngram import build_arpa
from wavadapt.evaluation.corpus import evaluate
from wavadapt.inference.engine import evaluating, window_outputs
from wavadapt.inference.registry import Registry, format_tasks
from wavadapt.inference.server import create_app, serving
from wavadapt.inference.transcription import Request, transcribe_requests
from wavadapt.model.checkpoint import save_task

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return _two_task_model("layer")


@pytest.fixture(scope="module")
def lm_dir(synth_corpus, tmp_path_factory) -> Path:
    """An English 3-gram from the corpus's training transcripts, as the demo builds it, named for task en."""
    directory = tmp_path_factory.mktemp("decoding")
    text = [normalize_text(u.text, "en") for u in open_corpus(synth_corpus, "train", "en")]
    build_arpa(text, 3, directory / "lm.en.arpa", discount_fallback=True)
    return directory


@pytest.fixture(scope="module")
def test_set(synth_corpus):
    return open_corpus(synth_corpus, "test", "en") + open_corpus(synth_corpus, "test", "es")


def _alone(model, task: str, path: Path, config: DecoderConfig) -> str:
    """One file decoded by itself: its own forward, its own decoder."""
    model.activate(task)
    with evaluating(model):
        (output,) = window_outputs(model, read_audio(path), None)
    return texts(make_decoder(config, model.vocabularies[task]).decode(output))[0]


def test_evaluate_beam_scores_greedy_beside_and_decodes_each_utterance_as_alone(model, lm_dir, test_set, tmp_path):
    config = DecoderConfig("beam", beam_size=8, lm=lm_dir / "lm.en.arpa", word_score=1.0)
    greedy = evaluate(model, test_set, task="en", out_dir=tmp_path / "greedy")
    beam = evaluate(model, test_set, task="en", out_dir=tmp_path / "beam", decoder=config)
    assert greedy.decoder == "greedy" and greedy.greedy_wer is None
    assert beam.decoder == config.describe() and beam.decoder.startswith("beam 8 + lm.en.arpa")
    assert (beam.greedy_wer, beam.greedy_cer) == (greedy.wer, greedy.cer)
    for language, scores in beam.languages.items():
        assert (scores.greedy_wer, scores.greedy_cer) == (greedy.languages[language].wer,
                                                          greedy.languages[language].cer)
    assert (tmp_path / "beam" / "hyp.en.greedy.txt").read_text() == (tmp_path / "greedy" / "hyp.en.txt").read_text()
    lines = dict(line.split(" ", 1) for line in (tmp_path / "beam" / "hyp.en.txt").read_text().splitlines())
    for u in test_set:
        assert lines[u.id].rstrip("\n") == _alone(model, "en", u.path, config)
    assert "greedy WER" in beam.summary() and "greedy WER" not in greedy.summary()


def test_transcription_decodes_each_row_of_a_mixed_batch_with_its_own_decoder(model, lm_dir, test_set):
    lm = DecoderConfig("beam", beam_size=8, lm=lm_dir / "lm.en.arpa", word_score=1.0)
    choices = [None, DecoderConfig("beam", beam_size=8), lm]
    requests = [Request(u.path, "en" if i % 2 else "es", decoder=choices[i % 3]) for i, u in enumerate(test_set)]
    requests = [r if r.task == "en" or r.decoder is not lm else Request(r.path, "en", decoder=lm) for r in requests]
    batched = transcribe_requests(model, requests, max_seconds_per_batch=60)
    for r, t in zip(requests, batched, strict=True):
        assert t.text == _alone(model, r.task, r.path, r.decoder or DecoderConfig())
        (alone,) = transcribe_requests(model, [r])
        assert t.words == alone.words and all(0 <= w.start < w.end <= t.duration + 0.03 for w in t.words)
    # A beam of one without an LM is greedy: the same words at the same times.
    one = transcribe_requests(model, [Request(r.path, r.task, decoder=DecoderConfig("beam", beam_size=1))
                                      for r in requests])
    plain = transcribe_requests(model, [Request(r.path, r.task) for r in requests])
    assert [t.words for t in one] == [t.words for t in plain]


def test_registry_gives_each_task_its_lm_and_refuses_a_bad_one(model, lm_dir, tmp_path):
    registry = Registry(model, decoding_dir=lm_dir)
    assert registry.decoder("en").kind == "greedy"
    assert registry.decoder("en", "beam").lm == lm_dir / "lm.en.arpa"
    assert registry.decoder("es", "beam").lm is None  # no LM of its own: a beam without one
    assert registry.decoder("en", "beam", beam_size=3, lm_weight=None).beam_size == 3
    served = Registry(model, DecoderConfig("beam", lm_weight=1.5), decoding_dir=lm_dir)
    assert {t.task: t.decoder for t in served.tasks()}["en"] == "beam 50 + lm.en.arpa (weight 1.5, word score 2)"
    assert {t.task: t.lm for t in registry.tasks()} == {"en": "lm.en.arpa", "es": None}
    assert "greedy (LM lm.en.arpa)" in format_tasks(registry)
    # A task added at run time brings the LM beside its task file; a removed one takes its LM along.
    fresh = Registry(_two_task_model("layer"))
    task_file = save_task(fresh.model, "en", tmp_path / "tasks")
    (tmp_path / "tasks" / "lm.en.arpa").write_bytes((lm_dir / "lm.en.arpa").read_bytes())
    fresh.remove("en")
    assert fresh.add(task_file) == "en" and fresh.decoder("en", "beam").lm == tmp_path / "tasks" / "lm.en.arpa"
    fresh.remove("en")
    assert "en" not in fresh.language_models
    (tmp_path / "lm.es.arpa").write_text("not an ARPA file\n")
    with pytest.raises(LanguageModelError, match="lm.es.arpa"):
        Registry(model, decoding_dir=tmp_path)


def test_the_server_decodes_each_request_as_it_asks(model, lm_dir, test_set):
    registry = Registry(model, decoding_dir=lm_dir)
    paths = [u.path for u in test_set[:3]]
    with serving(create_app(registry)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=60.0)
        for path in paths:
            for kind in ("greedy", "beam"):
                got = client.audio.transcriptions.create(model="en", file=path.open("rb"),
                                                         extra_body={"decoder": kind, "beam_size": 8})
                expected = _alone(model, "en", path, registry.decoder("en", kind, beam_size=8))
                assert got.text == expected
        assert client.audio.transcriptions.create(model="en", file=paths[0].open("rb")).text == \
            _alone(model, "en", paths[0], DecoderConfig())
        refused = _post(url, paths[0], "en", key=None, decoder="viterbi")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "decoder"
        assert _post(url, paths[0], "en", key=None, decoder="beam", beam_size=0).status_code == 422
        assert _post(url, paths[0], "en", key=None, decoder="beam").status_code == 200  # still serving
        cards = {m.id: m for m in client.models.list().data}
        assert cards["en"].decoder == "greedy"


def test_command_line_decoder_options(synth_corpus, lm_dir, tmp_path, capsys):
    task_file = save_task(_two_task_model("group"), "en", tmp_path / "task")  # on the tiny preset's weights
    arpa = str(lm_dir / "lm.en.arpa")
    common = ["--model", "tiny", "--adapter", str(task_file)]
    result = runner.invoke(app, ["evaluate", str(synth_corpus), "--language", "en", *common, "--lm", arpa, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["decoder"].startswith("beam 50 + lm.en.arpa") and report["greedy_wer"] is not None
    files = [str(u.path) for u in open_corpus(synth_corpus, "test", "en")[:3]]
    greedy = runner.invoke(app, ["transcribe", *common, "--format", "jsonl", *files])
    one = runner.invoke(app, ["transcribe", *common, "--format", "jsonl", "--decoder", "beam", "--beam-size", "1",
                              *files])
    assert greedy.exit_code == one.exit_code == 0 and greedy.stdout == one.stdout
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=3\n")
    for command in (["transcribe", *common, "--lm", str(bad), files[0]],
                    ["evaluate", str(synth_corpus), "--language", "en", *common, "--lm", str(bad)]):
        code, out, err = run_cli(capsys, *command)  # the real entry point
        assert code == 1 and out == "" and err.startswith("error:") and str(bad) in err and err.count("\n") == 1
