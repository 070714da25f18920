"""Live transcription over a real WebSocket (/v1/stream): a real client streams PCM frames and gets partial text as
it grows and a final text equal to the engine's streamed text of the same samples; streams in several languages at
once each get their own; every bad input is an error event or a close with its reason, never a crash."""

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import soxr
import websocket
from test_transcription import _two_task_model

from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.inference.registry import Registry
from wavadapt.inference.server import ServerConfig, create_app, serving
from wavadapt.inference.streaming import Stream, StreamEngine
from wavadapt.inference.transcription import Request, transcribe_requests

TIMEOUT = 60.0
KEY = "live-key"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(_two_task_model("layer"))


@pytest.fixture(scope="module")
def url(registry):
    with serving(create_app(registry, ServerConfig(api_key=KEY))) as address:
        yield address.replace("http://", "ws://") + "/v1/stream"


@pytest.fixture(scope="module")
def clips(synth_corpus) -> list[np.ndarray]:
    """Audio as PCM16 holds it (what the server decodes from the frames)."""
    audio = [read_audio(u.path) for lang in ("en", "es") for u in open_corpus(synth_corpus, "test", lang)[:2]]
    return [np.round(np.clip(x, -1, 1) * 32767).astype("<i2") for x in audio]


def connect(url: str, query: str, key: str | None = KEY) -> websocket.WebSocket:
    headers = [f"Authorization: Bearer {key}"] if key else []
    return websocket.create_connection(f"{url}?{query}", timeout=TIMEOUT, header=headers)


def events(socket: websocket.WebSocket) -> list[dict]:
    """Every event until the server closes the stream."""
    received = []
    while True:
        try:
            opcode, data = socket.recv_data()
        except websocket.WebSocketConnectionClosedException:
            return received
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            received.append({"type": "close", "code": int.from_bytes(data[:2], "big") if data else None})
            return received
        received.append(json.loads(data))


def stream_file(url: str, pcm: np.ndarray, task: str, frame: int = 1600, endpoints: bool = False) -> list[dict]:
    socket = connect(url, f"model={task}&endpoints={str(endpoints).lower()}")
    try:
        for i in range(0, len(pcm), frame):
            socket.send_binary(pcm[i : i + frame].tobytes())
        socket.send(json.dumps({"type": "end"}))
        return events(socket)
    finally:
        socket.close()


def offline_stream(registry: Registry, pcm: np.ndarray, task: str) -> str:
    """The final text of ``pcm`` streamed through the engine with the server's chunking, the audio pushed at once."""
    engine, stream = StreamEngine(registry.model), Stream(task, ServerConfig().stream)
    stream.push(pcm.astype(np.float32) / 32768)
    while stream.ready:
        engine.step([stream])
    stream.end()
    while stream.ready:
        engine.step([stream])
    return engine.text(stream)


def test_a_stream_gets_growing_partials_and_the_final_text(url, registry, clips):
    pcm = np.tile(clips[0], 3)  # long enough for several chunks
    received = stream_file(url, pcm, "en")
    partials = [e for e in received if e["type"] == "partial"]
    final = next(e for e in received if e["type"] == "final")
    assert received[-1] == {"type": "close", "code": 1000} and received[-2] is final
    assert len(partials) >= 2 and [p["end"] for p in partials] == sorted(p["end"] for p in partials)
    assert final["text"] == offline_stream(registry, pcm, "en") and final["end"] == pytest.approx(len(pcm) / 16000)


def test_streams_in_two_languages_at_once_each_get_their_own(url, registry, clips):
    jobs = [(clip, task) for clip in clips for task in ("en", "es")]
    start = threading.Barrier(len(jobs))

    def one(job):
        start.wait(TIMEOUT)
        return stream_file(url, *job, frame=3200)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(one, jobs))
    for (clip, task), received in zip(jobs, results, strict=True):
        assert received[-2]["type"] == "final" and received[-2]["text"] == offline_stream(registry, clip, task)


def test_a_stream_at_another_rate_and_in_float(url, clips):
    samples = clips[0].astype(np.float32) / 32768
    at_8k = samples[::2].astype("<f4")
    received = stream_file_raw(url, "model=en&format=f32&rate=8000&endpoints=false", at_8k.tobytes(), 4000)
    assert received[-2]["type"] == "final" and received[-2]["end"] == pytest.approx(len(samples) / 16000, abs=0.05)


def stream_file_raw(url: str, query: str, data: bytes, frame: int) -> list[dict]:
    socket = connect(url, query)
    try:
        for i in range(0, len(data), frame):
            socket.send_binary(data[i : i + frame])
        socket.send(json.dumps({"type": "end"}))
        return events(socket)
    finally:
        socket.close()


@pytest.mark.parametrize("query,key,code", [("model=fr", KEY, "model_not_found"), ("model=en", None, "invalid_api_key"),
                                            ("model=en&format=mp3", KEY, "invalid_format"),
                                            ("model=en&rate=4", KEY, "invalid_rate")])
def test_a_refused_stream_is_an_error_event_and_a_policy_close(url, query, key, code):
    received = events(connect(url, query, key))
    assert received[0]["type"] == "error" and received[0]["code"] == code and received[0]["message"]
    assert received[-1] == {"type": "close", "code": 1008}


def test_bad_frames_are_errors_and_the_stream_goes_on(url, registry, clips):
    socket = connect(url, "model=en&endpoints=false")
    try:
        socket.send_binary(b"\x01\x02\x03")  # not whole PCM16 samples
        assert json.loads(socket.recv())["code"] == "invalid_audio"
        socket.send("hello")
        assert json.loads(socket.recv())["code"] == "invalid_message"
        socket.send_binary(clips[1].tobytes())
        socket.send(json.dumps({"type": "end"}))
        received = events(socket)
    finally:
        socket.close()
    assert received[-2]["type"] == "final" and received[-2]["text"] == offline_stream(registry, clips[1], "en")
    big = connect(url, "model=en")
    big.send_binary(bytes(2 << 20))
    assert events(big)[-2:] == [{"type": "error", "code": "frame_too_large",
                                 "message": "a frame holds at most 1,048,576 bytes"}, {"type": "close", "code": 1009}]


def test_live_streams_share_their_steps(registry, clips):
    """Continuous batching: streams that are live at once run in shared mixed-task steps."""
    app = create_app(registry, ServerConfig())
    jobs = [(np.tile(clip, 2), task) for clip in clips for task in ("en", "es")]
    alone = 0
    for pcm, task in jobs:  # the steps each stream needs by itself
        engine, stream = StreamEngine(registry.model), Stream(task, ServerConfig().stream)
        stream.push(pcm.astype(np.float32) / 32768)
        for last in (False, True):
            if last:
                stream.end()
            while stream.ready:
                engine.step([stream])
                alone += 1
    with serving(app) as address:
        live = address.replace("http://", "ws://") + "/v1/stream"
        start = threading.Barrier(len(jobs))

        def one(job):
            start.wait(TIMEOUT)
            socket = websocket.create_connection(f"{live}?model={job[1]}&endpoints=false", timeout=TIMEOUT)
            try:
                socket.send_binary(job[0].tobytes())  # all of it at once: every stream has all its chunks ready
                socket.send(json.dumps({"type": "end"}))
                return events(socket)
            finally:
                socket.close()

        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(one, jobs))
        shared = app.state.live.steps
    assert all(r[-2]["type"] == "final" for r in results)
    assert [r[-2]["text"] for r in results] == [offline_stream(registry, *job) for job in jobs]
    assert shared < alone / 2, (shared, alone)


def test_the_official_clients_realtime_transcription(url, registry, clips):
    """openai's own realtime client, pointed at this server: deltas as the text grows, the utterance on commit."""
    http = url.replace("ws://", "http://").removesuffix("/v1/stream")
    client = openai.OpenAI(api_key=KEY, base_url=f"{http}/v1", websocket_base_url=url.removesuffix("/stream"))
    at_24k = soxr.resample(clips[0].astype(np.float32) / 32768, 16000, 24000)
    pcm = np.round(np.clip(at_24k, -1, 1) * 32767).astype("<i2")
    pieces = [pcm[i : i + 2400] for i in range(0, len(pcm), 2400)]  # 0.1 s each, as a microphone sends them
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        connection.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "es"}, "turn_detection": None}}})
        for piece in pieces:
            connection.input_audio_buffer.append(audio=base64.b64encode(piece.tobytes()).decode())
        connection.input_audio_buffer.commit()
        received = []
        for event in connection:
            received.append(event)
            if event.type in ("conversation.item.input_audio_transcription.completed", "error"):
                break
    kinds = [e.type for e in received]
    assert kinds[:2] == ["session.created", "session.updated"] and "input_audio_buffer.committed" in kinds
    completed = received[-1]
    assert completed.type == "conversation.item.input_audio_transcription.completed"
    deltas = [e.delta for e in received if e.type == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas) == completed.transcript
    resampler = soxr.ResampleStream(24000, 16000, 1, dtype="float32")  # what the server did with the pieces
    heard = [resampler.resample_chunk(p.astype(np.float32) / 32768) for p in pieces]
    heard.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    assert completed.transcript == offline_stream(registry, np.concatenate(heard) * 32768, "es")


@pytest.mark.parametrize("session,code", [
    ({"audio": {"input": {"transcription": {"model": "fr"}}}}, "model_not_found"),
    ({"audio": {"input": {"transcription": {"model": "en"}, "format": {"rate": 44100}}}}, "invalid_rate"),
    ({"audio": {"input": {"transcription": {"model": "en"}, "turn_detection": {"type": "semantic_vad"}}}},
     "unsupported_turn_detection"),
    ({"audio": {"input": {"transcription": {"model": "en"}, "turn_detection": {"type": "server_vad", "threshold": 2}}}},
     "invalid_turn_detection")])
def test_realtime_refusals_are_error_events_and_the_session_goes_on(url, session, code):
    socket = websocket.create_connection(url.removesuffix("/stream") + "/realtime?intent=transcription",
                                         timeout=TIMEOUT, header=[f"Authorization: Bearer {KEY}"])
    try:
        assert json.loads(socket.recv())["type"] == "session.created"
        socket.send(json.dumps({"type": "session.update", "session": session}))
        error = json.loads(socket.recv())
        assert error["type"] == "error" and error["error"]["code"] == code and error["error"]["message"]
        socket.send(json.dumps({"type": "response.create"}))
        assert json.loads(socket.recv())["error"]["code"] == "unknown_event"
        socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert json.loads(socket.recv())["error"]["code"] in ("no_session", "input_audio_buffer_commit_empty")
    finally:
        socket.close()


def test_streams_beyond_the_limit_and_idle_ones_are_closed_with_a_reason(registry, clips):
    app = create_app(registry, ServerConfig(max_streams=2, idle_seconds=1.0))
    with serving(app) as address:
        live = address.replace("http://", "ws://") + "/v1/stream?model=en&endpoints=false"
        first, second = (websocket.create_connection(live, timeout=TIMEOUT) for _ in range(2))
        try:
            first.send_binary(clips[0][:1600].tobytes())  # both are open and busy
            second.send_binary(clips[0][:1600].tobytes())
            third = websocket.create_connection(live, timeout=TIMEOUT)
            assert events(third) == [{"type": "error", "code": "too_many_streams", "message": "2 live streams are "
                                      "open, the most this server holds: retry later"}, {"type": "close", "code": 1013}]
            for socket in (first, second):  # then silent for longer than idle_seconds
                idle = events(socket)
                assert idle[-2]["code"] == "idle_timeout" and idle[-1] == {"type": "close", "code": 1000}
        finally:
            first.close()
            second.close()
        again = websocket.create_connection(live, timeout=TIMEOUT)  # a closed stream frees its slot
        again.send_binary(clips[1].tobytes())
        again.send(json.dumps({"type": "end"}))
        assert events(again)[-2]["text"] == offline_stream(registry, clips[1], "en")


def test_live_streams_and_file_requests_at_once_never_mix_their_tasks(url, registry, clips, synth_corpus, tmp_path):
    """A forward routes rows through adapter state on the model: live steps share the batcher's one thread."""
    files = [u.path for u in open_corpus(synth_corpus, "test", "es")[:2]]
    expected = {f: t.text for f, t in zip(files, transcribe_requests(registry.model, [Request(f, "es") for f in files]),
                                          strict=True)}
    client = openai.OpenAI(api_key=KEY, base_url=url.replace("ws://", "http://").removesuffix("/stream"),
                           max_retries=0, timeout=TIMEOUT)
    jobs = [("live", clip) for clip in clips] + [("file", f) for f in files * 2]
    start = threading.Barrier(len(jobs))

    def one(job):
        start.wait(TIMEOUT)
        if job[0] == "live":
            return stream_file(url, job[1], "en", frame=800)[-2]["text"]
        return client.audio.transcriptions.create(model="es", file=job[1].open("rb")).text

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(one, jobs))
    for (kind, what), answer in zip(jobs, answers, strict=True):
        assert answer == (offline_stream(registry, what, "en") if kind == "live" else expected[what])


def spoken(clips: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """The clips with a second of silence after each, and the sample where each clip's last sound is."""
    pieces = [np.concatenate([c, np.zeros(16000, "<i2")]) for c in clips[:2]]
    ends = np.cumsum([len(p) for p in pieces])
    return np.concatenate(pieces), [e - len(p) + np.flatnonzero(np.abs(p) > 300)[-1] for e, p in zip(ends, pieces,
                                                                                                       strict=True)]


def test_pauses_end_utterances_each_a_final_with_its_words(url, clips):
    pcm, sounds = spoken(clips)
    received = stream_file(url, pcm, "en", endpoints=True)
    finals = [e for e in received if e["type"] == "final"]
    assert received[-1] == {"type": "close", "code": 1000} and len(finals) >= 2
    assert received.index(finals[0]) < max(i for i, e in enumerate(received) if e["type"] == "partial")  # while live
    for final, sound in zip(finals, sounds, strict=False):
        assert final["end"] * 16000 > sound  # the pause after the clip, not inside it
    for before, after in zip(finals, finals[1:], strict=False):
        assert before["end"] == pytest.approx(after["start"], abs=0.02)
    for final in finals:
        assert final["text"] == " ".join(w["word"] for w in final["words"])
        assert all(final["start"] <= w["start"] < w["end"] <= final["end"] + 0.02 for w in final["words"])


def test_the_official_client_with_server_vad_gets_an_utterance_per_pause(url, clips):
    """Turn detection on the server: speech_started / stopped, then committed and completed, without a commit."""
    http = url.replace("ws://", "http://").removesuffix("/v1/stream")
    client = openai.OpenAI(api_key=KEY, base_url=f"{http}/v1", websocket_base_url=url.removesuffix("/stream"))
    pcm, sounds = spoken(clips)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        connection.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "transcription": {"model": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        for i in range(0, len(pcm), 1600):
            connection.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 1600].tobytes()).decode())
        received, completed = [], 0
        for event in connection:
            received.append(event)
            completed += event.type == "conversation.item.input_audio_transcription.completed"
            if completed == 2 or event.type == "error":
                break
    updated = next(e for e in received if e.type == "session.updated")
    assert updated.session.audio.input.turn_detection.type == "server_vad"
    started = [e for e in received if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in received if e.type == "input_audio_buffer.speech_stopped"]
    done = [e for e in received if e.type == "conversation.item.input_audio_transcription.completed"]
    assert len(done) == 2 and [e.item_id for e in started[:2]] == [e.item_id for e in done]
    assert [e.item_id for e in stopped[:2]] == [e.item_id for e in done]
    for begin, end, sound in zip(started, stopped, sounds, strict=False):
        assert begin.audio_start_ms < end.audio_end_ms <= sound / 16 + 1000
    for item in done:
        deltas = [e.delta for e in received if getattr(e, "delta", None) is not None and e.item_id == item.item_id]
        assert "".join(deltas) == item.transcript


def test_a_stream_killed_mid_utterance_does_not_disturb_the_others(url, registry, clips):
    start = threading.Barrier(3)

    def whole(clip):
        start.wait(TIMEOUT)
        return stream_file(url, clip, "es", frame=800)[-2]["text"]

    def killed():
        start.wait(TIMEOUT)
        socket = connect(url, "model=en")
        socket.send_binary(np.tile(clips[0], 2)[:40000].tobytes())
        socket.recv()  # a partial: the stream is live
        socket.sock.close()  # gone without a close frame, mid-utterance

    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(whole, clips[2]), pool.submit(killed), pool.submit(whole, clips[3])]
        texts = [jobs[0].result(), jobs[1].result(), jobs[2].result()]
    assert texts[0] == offline_stream(registry, clips[2], "es") and texts[2] == offline_stream(registry, clips[3], "es")
    assert stream_file(url, clips[1], "en")[-2]["text"] == offline_stream(registry, clips[1], "en")  # still serving


def test_a_browser_offers_its_key_as_a_subprotocol(url, registry, clips):
    """Browsers cannot set headers on a WebSocket: the key comes as a subprotocol, OpenAI's way for browsers."""
    def offering(key: str, path: str = "/stream?model=en&endpoints=false") -> websocket.WebSocket:
        return websocket.create_connection(url.removesuffix("/stream") + path, timeout=TIMEOUT,
                                           subprotocols=["realtime", f"openai-insecure-api-key.{key}"])

    right = offering(KEY)
    try:
        assert right.getsubprotocol() == "realtime"  # a browser fails a handshake that answers none of its offers
        right.send_binary(clips[1].tobytes())
        right.send(json.dumps({"type": "end"}))
        assert events(right)[-2]["text"] == offline_stream(registry, clips[1], "en")
    finally:
        right.close()
    received = events(offering("wrong"))
    assert received[0]["code"] == "invalid_api_key" and received[-1] == {"type": "close", "code": 1008}
    realtime = offering(KEY, "/realtime?intent=transcription")
    try:
        assert json.loads(realtime.recv())["type"] == "session.created"
    finally:
        realtime.close()
