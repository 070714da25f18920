"""The transcription server: OpenAI's own client gets the offline transcripts; 32 concurrent clients over mixed
tasks and bad files each get exactly their own answer; every refusal has its status; the server stays up."""

import asyncio
import contextlib
import io
import json
import logging
import random
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
from bad_files import UNUSABLE, write_bad_files
from test_transcription import _two_task_model

import wavadapt.inference.batcher as batcher_module
from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import AudioError, WavadaptError
from wavadapt.inference.batcher import Batcher
from wavadapt.inference.formats import subtitles
from wavadapt.inference.registry import Registry
from wavadapt.inference.server import ServerConfig, create_app, serve, serving
from wavadapt.inference.transcription import Request, transcribe_requests
from wavadapt.inference.uploads import TooLarge, read_upload

KEY = "test-key"
TIMEOUT = 60.0
"""Seconds any one request may take (a few batches on two shared cores)."""


@pytest.fixture(scope="module")
def registry(device) -> Registry:
    return Registry(_two_task_model("layer").to(device))


@pytest.fixture(scope="module")
def files(synth_corpus) -> list[Path]:
    return [u.path for split in ("train", "test") for lang in ("en", "es") for u in open_corpus(synth_corpus, split,
                                                                                                   lang)]


@pytest.fixture(scope="module")
def offline(registry, files) -> dict[tuple[Path, str], object]:
    """The offline transcript of every file by every task: what the server must answer."""
    requests = [Request(f, task) for f in files for task in ("en", "es")]
    return {(r.path, r.task): t for r, t in zip(requests, transcribe_requests(registry.model, requests), strict=True)}


@pytest.fixture(scope="module")
def url(registry):
    """A server on a free loopback port for the module's tests; always stopped."""
    with serving(create_app(registry, ServerConfig(api_key=KEY))) as address:
        yield address


def _client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


@dataclass
class Reply:
    status_code: int
    headers: Message
    body: bytes

    def json(self):
        return json.loads(self.body)


def _get(url: str, key: str | None = None) -> Reply:
    return _request(urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {}))


def _post(url: str, path: Path | None, task: str | None = "en", key: str | None = KEY, **fields) -> Reply:
    """A multipart transcription request as any HTTP client sends it (fields left out when None)."""
    boundary = uuid.uuid4().hex
    fields = {"model": task, **fields} if task is not None else fields
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if path is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return _request(urllib.request.Request(f"{url}/v1/audio/transcriptions", body, headers, method="POST"))


def _request(request: urllib.request.Request) -> Reply:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as e:
        with e:
            return Reply(e.code, e.headers, e.read())


def test_the_openai_client_gets_the_offline_transcripts(url, files, offline):
    client = _client(url)
    for i, f in enumerate(files[:6]):
        task = ("en", "es")[i % 2]
        expected = offline[f, task]
        with open(f, "rb") as audio:
            assert client.audio.transcriptions.create(model=task, file=audio).text == expected.text
    f, task = files[0], "es"
    expected = offline[f, task]
    verbose = client.audio.transcriptions.create(model=task, file=f.open("rb"), response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.text == expected.text and verbose.language == "es"
    assert verbose.duration == pytest.approx(expected.duration)
    assert [(w.word, w.start, w.end) for w in verbose.words] == [(w.word, w.start, w.end) for w in expected.words]
    assert " ".join(s.text for s in verbose.segments) == expected.text
    assert client.audio.transcriptions.create(model=task, file=f.open("rb"), response_format="text") == \
        expected.text + "\n"
    for kind in ("srt", "vtt"):
        assert client.audio.transcriptions.create(model=task, file=f.open("rb"), response_format=kind) == \
            subtitles(expected, kind)
    # A client that names a model of its own gets the task named like its language.
    assert client.audio.transcriptions.create(model="whisper-1", language="es", file=f.open("rb")).text == \
        expected.text


def test_models_health_and_metrics(url, registry):
    models = _client(url).models.list()
    tasks = {t.task: t for t in registry.tasks()}
    assert [m.id for m in models.data] == sorted(tasks) and all(m.object == "model" for m in models.data)
    for m in models.data:
        assert m.language == m.id and m.parameters == tasks[m.id].parameters > 0
    assert _client(url).models.retrieve("es").parameters == tasks["es"].parameters
    health = _get(f"{url}/health").json()
    assert health["status"] == "ok" and health["tasks"] == ["en", "es"]
    text = _get(f"{url}/metrics", KEY).body.decode()
    for name in ("wavadapt_requests_total", "wavadapt_request_latency_seconds_bucket", "wavadapt_batch_rows_bucket",
                 "wavadapt_batch_task_rows_bucket", "wavadapt_audio_seconds_per_second", "wavadapt_queue_depth"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name


def test_32_concurrent_clients_each_get_their_own_answer(url, files, offline, tmp_path):
    bad = write_bad_files(tmp_path / "bad", read_audio(files[0]))
    bad_names = ["corrupt.wav", "truncated.flac", "cut-copy.wav", "huge-header.wav", "text.wav", "nan.wav",
                 "header-only.wav", "zero-length.wav"]
    rng = random.Random(0)
    jobs = [(files[i % len(files)], rng.choice(["en", "es"])) for i in range(32 - len(bad_names))]
    jobs += [(bad[name], rng.choice(["en", "es"])) for name in bad_names]
    rng.shuffle(jobs)
    assert len(jobs) == 32 and sum(path.parent.name == "bad" for path, _ in jobs) == len(bad_names)
    assert len({offline[job].text for job in jobs if job in offline}) > 15  # a swapped answer would show
    start = threading.Barrier(len(jobs))

    def one(job):
        start.wait(TIMEOUT)
        return _post(url, *job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(one, jobs))
    for (path, task), response in zip(jobs, responses, strict=True):
        if path.parent.name == "bad":
            assert response.status_code == 400, (path.name, response.text)
            assert path.name in response.json()["error"]["message"] and UNUSABLE[path.name]
        else:
            assert response.status_code == 200, response.text
            assert response.json()["text"] == offline[path, task].text
    metrics = _get(f"{url}/metrics", KEY).body.decode()
    rows = _histogram(metrics, "wavadapt_batch_rows")
    assert rows["count"] < len(jobs) - len(bad_names)  # requests shared batches
    assert _histogram(metrics, "wavadapt_batch_task_rows")["count"] > rows["count"]  # batches mixed tasks
    assert _get(f"{url}/health").json()["queued"] == 0


def _histogram(text: str, name: str) -> dict[str, float]:
    return {"count": float(re.search(rf"^{name}_count (\S+)", text, re.M).group(1))}


def test_refusals_name_their_cause(url, files, tmp_path):
    f = files[0]
    assert _post(url, f, key=None).status_code == 401
    assert _post(url, f, key="wrong").status_code == 401
    assert _get(f"{url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _client(url, key="wrong").audio.transcriptions.create(model="en", file=f.open("rb"))
    response = _post(url, f, task="fr")
    assert response.status_code == 404 and "'fr'" in (message := response.json()["error"]["message"])
    assert "en, es" in message
    with pytest.raises(openai.NotFoundError):
        _client(url).audio.transcriptions.create(model="fr", file=f.open("rb"))
    missing = _post(url, None)
    assert missing.status_code == 422 and "file" in missing.json()["error"]["message"]
    no_model = _post(url, f, task=None)  # OpenAI answers a missing required field with 400
    assert no_model.status_code == 400 and no_model.json()["error"]["code"] == "missing_model"
    assert no_model.json()["error"]["message"].startswith("missing model: name a task")
    contradiction = _post(url, f, task="en", language="es")
    assert contradiction.status_code == 400 and contradiction.json()["error"]["param"] == "language"
    assert contradiction.json()["error"]["message"] == "language 'es' contradicts model 'en', which transcribes 'en'"
    assert _post(url, f, response_format="docx").status_code == 400
    assert _post(url, f, response_format="srt", stream="true").status_code == 400
    assert _get(f"{url}/health").json()["status"] == "ok"


def test_limits_give_413(registry, files, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([read_audio(f) for f in files[:3]]), SAMPLE_RATE)
    seconds = len(read_audio(long)) / SAMPLE_RATE
    size = files[0].stat().st_size
    config = ServerConfig(max_upload_mb=(size + 1) / 1e6, max_audio_seconds=seconds - 1)
    with serving(create_app(registry, config)) as url:
        assert _post(url, files[0], key=None).status_code == 200
        too_big = tmp_path / "big.wav"
        too_big.write_bytes(long.read_bytes() + b"\0" * size)
        response = _post(url, too_big, key=None)  # declared length over the limit: refused before reading
        assert response.status_code == 413 and f"{config.max_bytes:,} bytes" in response.json()["error"]["message"]
        with pytest.raises(openai.APIStatusError) as refused:
            _client(url).audio.transcriptions.create(model="en", file=too_big.open("rb"))
        assert refused.value.status_code == 413
        config_seconds = ServerConfig(max_audio_seconds=seconds - 1)
    with serving(create_app(registry, config_seconds)) as url:
        response = _post(url, long, key=None)
        assert response.status_code == 413 and f"limit is {seconds - 1:g} s" in response.json()["error"]["message"]


@contextlib.contextmanager
def _held_model(monkeypatch):
    """The model waits for ``release`` before each batch, so a test can fill the queue; yields (started, release)."""
    started, release = threading.Event(), threading.Event()
    real = batcher_module.transcribe_waveforms

    def held(*args, **kwargs):
        started.set()
        release.wait(TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(batcher_module, "transcribe_waveforms", held)
    try:
        yield started, release
    finally:
        release.set()


def test_a_full_queue_gives_429_and_health_answers_during_a_batch(registry, files, offline, monkeypatch):
    with _held_model(monkeypatch) as (started, release), \
            serving(create_app(registry, ServerConfig(max_queue=1, max_wait_ms=1))) as url, \
            ThreadPoolExecutor(2) as pool:
        running = pool.submit(_post, url, files[0], "en", None)
        assert started.wait(TIMEOUT)  # the first request's batch is in the model
        health = _get(f"{url}/health").json()
        assert health["busy"] and health["queued"] == 0
        queued = pool.submit(_post, url, files[1], "es", None)
        _wait_until(lambda: _get(f"{url}/health").json()["queued"] == 1)
        refused = _post(url, files[2], "en", None)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "queued" in refused.json()["error"]["message"]
        release.set()
        assert running.result(TIMEOUT).json()["text"] == offline[files[0], "en"].text
        assert queued.result(TIMEOUT).json()["text"] == offline[files[1], "es"].text


def test_a_request_the_model_fails_on_fails_alone(registry, files, offline, monkeypatch):
    poison = len(read_audio(files[1]))
    real = batcher_module.transcribe_waveforms

    def fragile(model, items, *args, **kwargs):
        if any(len(audio) == poison for audio, _ in items):
            raise RuntimeError("a row the model cannot take")
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(batcher_module, "transcribe_waveforms", fragile)
    jobs = [(files[0], "en"), (files[1], "es"), (files[2], "es"), (files[3], "en")]
    with serving(create_app(registry, ServerConfig(max_wait_ms=500, max_batch_seconds=1000))) as url, \
            ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: _post(url, *job, key=None), jobs))
        assert _get(f"{url}/health").json()["status"] == "ok"
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    assert files[1].name in responses[1].json()["error"]["message"]
    for (path, task), response in zip(jobs, responses, strict=True):
        if response.status_code == 200:
            assert response.json()["text"] == offline[path, task].text


def _wait_until(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_engine_serves_from_python_without_http(registry, files, offline):
    jobs = list(zip(files[:4], ["en", "es", "es", "en"], strict=True))

    async def main():
        async with Batcher(registry.model, max_wait_s=0.05) as batcher:
            return await asyncio.gather(*(batcher.transcribe(read_audio(f), task, f.name) for f, task in jobs))

    assert [t.text for t in asyncio.run(main())] == [offline[job].text for job in jobs]
    with open(files[0], "rb") as f:
        assert len(read_upload(f, "a.flac", 10**9, 600)) == len(read_audio(files[0]))
    with open(files[0], "rb") as f, pytest.raises(TooLarge, match="a.flac: over the limit of 1,000 bytes"):
        read_upload(f, "a.flac", 1000, 600)  # an upload without a declared length is counted as it is copied
    with pytest.raises(AudioError, match=r"^notes\.wav: "):
        read_upload(io.BytesIO(b"not audio" * 100), "notes.wav", 10**9, 600)


def test_a_taken_port_is_one_clear_error(registry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(WavadaptError, match=f"cannot listen on 127.0.0.1:{port}"), \
                serving(create_app(registry), port=port):
            pass


def test_language_alone_picks_its_task_and_verbose_json_fakes_no_scores(url, files, offline):
    f = files[1]
    assert _post(url, f, task=None, language="es").json()["text"] == offline[f, "es"].text
    verbose = _post(url, f, task="es", response_format="verbose_json").json()
    assert verbose["segments"] and all(set(s) == {"id", "start", "end", "text"} for s in verbose["segments"])


def test_the_official_client_streams_the_text(url, files, offline):
    f = files[2]
    events = list(_client(url).audio.transcriptions.create(model="en", file=f.open("rb"), stream=True))
    deltas, done = events[:-1], events[-1]
    assert [e.type for e in deltas] == ["transcript.text.delta"] * len(offline[f, "en"].words)
    assert done.type == "transcript.text.done" and done.text == offline[f, "en"].text
    assert "".join(e.delta for e in deltas) == done.text


def test_a_headerless_upload_says_how_to_send_its_format(url, files, offline, tmp_path):
    raw = tmp_path / "speech.raw"
    (np.clip(read_audio(files[0]), -1, 1) * 32767).astype("<i2").tofile(raw)
    refused = _post(url, raw)
    assert refused.status_code == 400 and refused.json()["error"]["message"] == (
        "speech.raw: headerless PCM (.raw) has no header to give its rate and encoding: send them in the form field "
        "raw_format (e.g. raw_format=s16le:16000)")
    assert _post(url, raw, raw_format="s16le:16000").json()["text"] == offline[files[0], "en"].text


def test_each_request_is_one_log_line(url, files, caplog):
    with caplog.at_level(logging.INFO, logger="wavadapt.inference.server"):
        statuses = [_post(url, files[0]).status_code, _post(url, files[0], task="fr").status_code]
    lines = [r.getMessage() for r in caplog.records if r.name == "wavadapt.inference.server"]
    assert statuses == [200, 404] and len(lines) == 2
    assert re.fullmatch(r"POST /v1/audio/transcriptions task=en audio=\d+\.\d\ds status=200 latency=\d+\.\d{3}s",
                        lines[0])
    assert "status=404" in lines[1]


def test_https_with_a_certificate_and_its_key(registry, files, offline, tmp_path):
    """Browsers give the page's microphone to https (or localhost) only: serve --ssl-certfile --ssl-keyfile."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=TIMEOUT)
    with serving(create_app(registry), ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the certificate names an address, which Python checks by SAN only
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT,
                               http_client=openai.DefaultHttpxClient(verify=context))
        assert client.audio.transcriptions.create(model="en", file=files[0].open("rb")).text == \
            offline[files[0], "en"].text
    with pytest.raises(WavadaptError, match="both --ssl-certfile and --ssl-keyfile"):
        serve("tiny", ssl_certfile=cert)
