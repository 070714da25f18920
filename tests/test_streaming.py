"""Live streams: chunked CTC gives a file's offline transcript when one chunk holds it, a mixed-task step gives each
stream what it gets alone, the pieces the audio arrives in do not matter, and a stream keeps bounded audio."""

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_runner import run_cli
from test_transcription import _two_task_model

from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import WavadaptError
from wavadapt.inference.endpointing import Speech
from wavadapt.inference.engine import transcribe
from wavadapt.inference.streaming import PcmInput, Stream, StreamConfig, StreamEngine, transcribe_live
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.checkpoint import save_backbone, save_task

CHUNKED = StreamConfig(chunk_seconds=0.5, left_seconds=2.0, lookahead_seconds=0.2)


@pytest.fixture(scope="module")
def engine() -> StreamEngine:
    return StreamEngine(_two_task_model("layer"))


@pytest.fixture(scope="module")
def audio(synth_corpus) -> list[np.ndarray]:
    return [read_audio(u.path) for lang in ("en", "es") for u in open_corpus(synth_corpus, "test", lang)[:2]]


def streamed(engine: StreamEngine, stream: Stream, x: np.ndarray, piece: int) -> Stream:
    """Push ``x`` in pieces of ``piece`` samples, a step after each, then end and flush."""
    for i in range(0, len(x), piece):
        stream.push(x[i : i + piece])
        engine.step([stream])
    stream.end()
    while stream.ready:
        engine.step([stream])
    return stream


@pytest.mark.parametrize("task", ["en", "es"])
def test_one_chunk_holding_the_file_is_the_offline_transcript(engine, audio, task):
    engine.model.activate(task)
    for x in audio:
        stream = streamed(engine, Stream(task, StreamConfig(chunk_seconds=60.0)), x, len(x))
        assert engine.text(stream) == transcribe(engine.model, x)


def test_a_mixed_step_gives_each_stream_what_it_gets_alone(engine, audio):
    """Tasks mixed, and streams with and without an endpointer: the endpointer's batch is mixed too."""
    audio = [np.concatenate([x, np.zeros(16000, np.float32), x]) for x in audio]  # a pause to end an utterance
    kinds = [("en", None), ("es", Speech), ("es", None), ("en", Speech)]
    alone = [streamed(engine, Stream(task, CHUNKED, speech and speech()), x, 1600)
             for x, (task, speech) in zip(audio, kinds, strict=True)]
    together = [Stream(task, CHUNKED, speech and speech()) for task, speech in kinds]
    position = 0
    while any(not s.ended for s in together) or any(s.ready for s in together):
        for stream, x in zip(together, audio, strict=True):
            if position < len(x):
                stream.push(x[position : position + 1600])
            elif not stream.ended:
                stream.end()
        position += 1600
        engine.step(together)
    assert [s.final for s in together] == [s.final for s in alone]
    assert [engine.text(s) for s in together] == [engine.text(s) for s in alone]
    assert [s.speech and s.speech.cuts for s in together] == [s.speech and s.speech.cuts for s in alone]
    assert alone[1].speech.cuts and alone[3].speech.cuts


def test_the_pieces_audio_arrives_in_do_not_matter(engine, audio):
    x = audio[0]
    reference = streamed(engine, Stream("en", CHUNKED), x, 320)
    for piece in (480, 4000, 16000):
        assert streamed(engine, Stream("en", CHUNKED), x, piece).final == reference.final
    rng = np.random.default_rng(0)
    stream, at = Stream("en", CHUNKED), 0
    while at < len(x):
        size = int(rng.integers(1, 6000))
        stream.push(x[at : at + size])
        engine.step([stream])
        at += size
    stream.end()
    while stream.ready:
        engine.step([stream])
    assert stream.final == reference.final


def test_partial_text_runs_ahead_of_the_final_and_memory_stays_bounded(engine, audio):
    x = np.tile(audio[0], 4)
    stream, longest = Stream("en", CHUNKED), 0
    partial_ahead = False
    for i in range(0, len(x), 1600):
        stream.push(x[i : i + 1600])
        engine.step([stream])
        longest = max(longest, len(stream.audio))
        partial_ahead |= len(engine.text(stream, partial=True)) > len(engine.text(stream))
    bound = sum(CHUNKED.samples(s) for s in (CHUNKED.chunk_seconds, CHUNKED.left_seconds, CHUNKED.lookahead_seconds))
    assert partial_ahead and longest <= bound + 1600
    stream.end()
    with pytest.raises(WavadaptError, match="ended"):
        stream.push(x[:10])


def test_transcribe_live_prints_what_the_engine_hears_from_stdin(audio, tmp_path, capsys):
    """`wavadapt transcribe - --live` in a real process, PCM16 piped in: its lines are the events of the same
    frames through the engine (partials while live, a final per pause and at the end)."""
    model = _two_task_model("layer")
    backbone, task = save_backbone(model.backbone, tmp_path / "backbone"), save_task(model, "es", tmp_path / "tasks")
    x = np.concatenate([audio[2], np.zeros(16000, np.float32), audio[3]])
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    run = subprocess.run([sys.executable, "-m", "wavadapt", "transcribe", "-", "--live", "--model", str(backbone),
                          "--adapter", str(task), "--format", "jsonl"], input=pcm, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    printed = [json.loads(line) for line in run.stdout.decode().splitlines()]
    loaded = load_asr_model(backbone, [task])
    frames = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]  # 0.1 s, as the command reads them
    expected = list(transcribe_live(StreamEngine(loaded), Stream("es", StreamConfig(), Speech()), frames,
                                    PcmInput("pcm16", 16000)))
    assert json.loads(json.dumps(expected)) == printed
    assert [e["type"] for e in printed].count("final") >= 2 and printed[0]["type"] == "partial"
    code, _, err = run_cli(capsys, "transcribe", "-", "--live", "--model", backbone, "--raw-format", "mulaw:8000")
    assert code == 1 and err.strip() == "error: --raw-format mulaw:8000: live audio is mono s16le or f32le"
