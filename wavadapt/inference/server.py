"""An OpenAI-compatible transcription server over a registry of adapter tasks on one backbone.

``POST /v1/audio/transcriptions`` takes what OpenAI's takes (multipart ``file``, ``model`` = a task, ``language``,
``response_format`` json | text | verbose_json | srt | vtt), so its clients work unchanged, and optionally the
decoder (``decoder`` greedy | beam, ``beam_size``, ``lm_weight``, ``word_score``: OpenAI clients send them as extra
body fields; a task's beam search uses its LM from the registry); ``GET /v1/models`` lists
the tasks, ``/health`` and ``/metrics`` (Prometheus) report, ``/`` is a page to try it. The server is a thin layer:
uploads pass the audio gate (`uploads.read_upload`), the `batcher.Batcher` runs them in mixed-task batches through
`transcription.transcribe_waveforms`, `formats` writes subtitles. Errors come back in OpenAI's shape, with the
status that says whose fault it is; nothing a client sends stops the server.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from wavadapt.decoding import DecoderConfig
from wavadapt.errors import AudioError, WavadaptError
from wavadapt.inference.batcher import Batcher, BatcherClosed, QueueFull
from wavadapt.inference.endpointing import Speech
from wavadapt.inference.engine import CHUNK_SECONDS
from wavadapt.inference.formats import cues, subtitles
from wavadapt.inference.metrics import ServerMetrics
from wavadapt.inference.realtime import RealtimeSession
from wavadapt.inference.registry import Registry, format_tasks
from wavadapt.inference.streaming import (
    PCM_FORMATS,
    PcmInput,
    Stream,
    StreamConfig,
    StreamEngine,
    StreamScheduler,
)
from wavadapt.inference.transcription import Transcript
from wavadapt.inference.uploads import TooLarge, read_upload
from wavadapt.model.auto_routing import AUTO, AUTO_DEFAULTS, AutoConfig, check_requests, task_of_language

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MAX_BEAM_SIZE = 500
"""A request's largest beam (its decoding time grows with the beam)."""
_MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
log = logging.getLogger(__name__)
"""One line per transcription request (task, seconds of audio, status, latency); `serve` prints them."""
_PAGE = Path(__file__).parent / "static" / "index.html"
_FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body carries besides the file (boundaries, the other fields)."""


@dataclass(frozen=True)
class ServerConfig:
    max_wait_ms: float = 10.0
    """How long a request waits for others to share its batch."""
    max_batch_seconds: float | None = None
    """Padded audio seconds per batch (longest x rows; default: 12.5 on CPU, 200 on GPU)."""
    max_queue: int = 256
    """Requests waiting beyond this are refused with 429."""
    max_upload_mb: float = 25.0
    max_audio_seconds: float = 600.0
    chunk_seconds: float = CHUNK_SECONDS
    """Longer audio is decoded in windows cut at pauses."""
    api_key: str | None = None
    """When set, /v1 and /metrics need ``Authorization: Bearer <api_key>`` (a WebSocket may instead offer the
    subprotocol ``openai-insecure-api-key.<api_key>``, as browsers must)."""
    stream: StreamConfig = StreamConfig()
    """Chunking of live streams (/v1/stream, /v1/realtime)."""
    max_streams: int = 64
    """Live streams open at once; one more is closed with code 1013 (try again later)."""
    idle_seconds: float = 30.0
    """A live stream that sends nothing for this long is closed."""
    auto: AutoConfig = AUTO_DEFAULTS
    """How ``model=auto`` and ``a+b`` requests are routed (with a language identifier loaded)."""

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


class _Refused(Exception):
    """A request answered with an error status, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def task_language(task: str) -> str:
    """The language a task transcribes: its name up to the first ``/`` (``es`` for ``es/asr``; MMS tasks are named
    by their language)."""
    return task.split("/")[0]


def create_app(registry: Registry, config: ServerConfig = ServerConfig()) -> FastAPI:
    """The server's FastAPI app over ``registry``; its batcher runs while the app's lifespan does."""
    if not registry.names:
        raise WavadaptError("no tasks to serve: the model has no task with a head; give a directory of task files")
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with Batcher(registry.model, max_wait_s=config.max_wait_ms / 1000,
                           max_batch_seconds=config.max_batch_seconds, max_queue=config.max_queue,
                           chunk_seconds=config.chunk_seconds, on_batch=metrics.record_batch,
                           pool=registry.pool, auto=config.auto) as batcher, \
                StreamScheduler(StreamEngine(registry.model), batcher.executor) as live:  # one thread for forwards
            app.state.batcher, app.state.live = batcher, live
            yield

    app = FastAPI(title="wavadapt", lifespan=lifespan, docs_url=None, redoc_url=None)
    metrics = ServerMetrics(lambda: app.state.batcher.queued if hasattr(app.state, "batcher") else 0)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Refuse before reading the body (a missing key, a declared size over the limit); count transcriptions."""
        start = time.perf_counter()
        path = request.url.path
        try:
            if config.api_key is not None and (path.startswith("/v1/") or path == "/metrics"):
                _check_key(request.headers.get("authorization", ""), config.api_key)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > config.max_bytes + _FORM_OVERHEAD:
                raise _Refused(413, f"the request is {int(declared):,} bytes; the limit is {config.max_bytes:,} "
                               "bytes of audio", "file_too_large", "file")
            response = await call_next(request)
        except _Refused as e:
            response = _error(e)
        if path == "/v1/audio/transcriptions":
            task, seconds = getattr(request.state, "task", "-"), time.perf_counter() - start
            metrics.record_request(task, response.status_code, seconds)
            log.info("%s %s task=%s audio=%.2fs status=%d latency=%.3fs", request.method, path, task,
                     getattr(request.state, "seconds", 0.0), response.status_code, seconds)
        return response

    @app.exception_handler(_Refused)
    async def refused(request: Request, e: _Refused) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors()]
        return _error(_Refused(422, "; ".join(problems), "invalid_request"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(_Refused(e.status_code, str(e.detail), "http_error", headers=e.headers))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request, file: Annotated[UploadFile, File()],
                             model: Annotated[str | None, Form()] = None,
                             language: Annotated[str | None, Form()] = None,
                             response_format: Annotated[str, Form()] = "json",
                             stream: Annotated[bool, Form()] = False,
                             raw_format: Annotated[str | None, Form()] = None,
                             decoder: Annotated[str | None, Form()] = None,
                             beam_size: Annotated[int | None, Form(ge=1, le=MAX_BEAM_SIZE)] = None,
                             lm_weight: Annotated[float | None, Form(ge=0, le=100)] = None,
                             word_score: Annotated[float | None, Form(ge=-100, le=100)] = None) -> Response:
        task = _task_of(registry, model, language)
        request.state.task = task
        if response_format not in RESPONSE_FORMATS:
            raise _Refused(400, f"response_format {response_format!r}: choose from {', '.join(RESPONSE_FORMATS)}",
                           "invalid_response_format", "response_format")
        if stream and response_format not in ("json", "text"):
            raise _Refused(400, f"stream=true sends text events; response_format {response_format!r} cannot stream "
                           "(use json or text)", "invalid_response_format", "response_format")
        if decoder not in (None, "greedy", "beam"):
            raise _Refused(400, f"decoder {decoder!r}: choose greedy or beam", "invalid_decoder", "decoder")
        decoding = registry.decoder(task, decoder, beam_size=beam_size, lm_weight=lm_weight, word_score=word_score)
        batcher: Batcher = request.app.state.batcher
        if batcher.queued >= config.max_queue:  # before spending a decode on it
            raise _busy(batcher)
        name = file.filename or "upload"
        try:
            audio = await run_in_threadpool(read_upload, file.file, name, config.max_bytes, config.max_audio_seconds,
                                            raw_format)
            transcript = await batcher.transcribe(audio, task, name, decoding)
            request.state.seconds = transcript.duration
        except TooLarge as e:
            raise _Refused(413, str(e), "file_too_large", "file") from None
        except AudioError as e:
            raise _Refused(400, str(e), "invalid_audio", "file") from None
        except QueueFull:
            raise _busy(batcher) from None
        except BatcherClosed as e:
            raise _Refused(503, str(e), "shutting_down") from None
        except Exception as e:  # the model failed on this request alone (the batcher reran its batch row by row)
            raise _Refused(500, f"{name}: transcription failed ({type(e).__name__}: {e})", "server_error") from None
        if stream:
            return StreamingResponse(_text_events(transcript), media_type="text/event-stream")
        return _transcription_response(transcript, response_format, transcript.language or task_language(task))

    @app.websocket("/v1/stream")
    async def live(socket: WebSocket, model: str | None = None, language: str | None = None, format: str = "pcm16",
                   rate: int = 16000, endpoints: bool = True) -> None:
        """Live transcription: binary frames of PCM16 (or ``format=f32``) at ``rate`` in; JSON ``partial`` events as
        the open utterance's text grows, a ``final`` one with its words where a pause ends it (silero-vad; with
        ``endpoints=false`` the whole stream is one utterance) and after the client's ``{"type": "end"}``."""
        authorization, subprotocol = _socket_key(socket)
        await socket.accept(subprotocol=subprotocol)
        try:
            if config.api_key is not None:
                _check_key(authorization, config.api_key)
            task = _task_of(registry, model, language, live=True)
            decode = _pcm_input(format, rate)
        except _Refused as e:
            await socket.send_json({"type": "error", "code": e.code, "message": e.message})
            return await socket.close(code=1008)
        async with live_slot(socket, lambda code, message: socket.send_json(
                {"type": "error", "code": code, "message": message})) as admitted:
            if admitted:
                await _stream_live(socket, Stream(task, config.stream, Speech() if endpoints else None), decode)

    async def _stream_live(socket: WebSocket, stream: Stream, decode: PcmInput) -> None:
        while True:
            try:
                message = await asyncio.wait_for(socket.receive(), config.idle_seconds)
            except TimeoutError:
                await socket.send_json({"type": "error", "code": "idle_timeout", "message": f"nothing received for "
                                        f"{config.idle_seconds:g} s"})
                return await socket.close(code=1000)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                if len(message["bytes"]) > MAX_FRAME_BYTES:
                    await socket.send_json({"type": "error", "code": "frame_too_large", "message": f"a frame holds "
                                            f"at most {MAX_FRAME_BYTES:,} bytes"})
                    return await socket.close(code=1009)
                try:
                    stream.push(decode(message["bytes"]))
                except ValueError as e:
                    await socket.send_json({"type": "error", "code": "invalid_audio", "message": str(e)})
                    continue
            elif _is_end(message.get("text")):
                stream.push(decode.flush())
                stream.end()
            else:
                await socket.send_json({"type": "error", "code": "invalid_message",
                                        "message": 'send audio as binary frames, then {"type": "end"}'})
                continue
            live: StreamScheduler = socket.app.state.live
            await live.advance(stream)  # in steps shared with every other live stream
            for event in live.engine.events(stream):
                await socket.send_json(event)
            if stream.ended:
                return await socket.close()

    @app.websocket("/v1/realtime")
    async def realtime(socket: WebSocket, model: str | None = None) -> None:
        """OpenAI's Realtime transcription (`realtime.RealtimeSession`)."""
        authorization, subprotocol = _socket_key(socket)
        await socket.accept(subprotocol=subprotocol)
        session = RealtimeSession(socket, socket.app.state.live,
                                  lambda m, lang: _task_of(registry, m, lang, live=True), config.stream)
        try:
            if config.api_key is not None:
                _check_key(authorization, config.api_key)
            session.task = _task_of(registry, model, None, live=True) if model else None
        except _Refused as e:
            await session.error(e.code, e.message, e.param)
            return await socket.close(code=1008)
        async with live_slot(socket, session.error) as admitted:
            if admitted:
                await session.run(config.idle_seconds)

    open_streams = 0

    @contextlib.asynccontextmanager
    async def live_slot(socket: WebSocket, refuse):
        """Admit a live stream if fewer than ``max_streams`` are open (else refuse it, close 1013)."""
        nonlocal open_streams
        if open_streams >= config.max_streams:
            await refuse("too_many_streams", f"{config.max_streams} live streams are open, the most this server "
                         "holds: retry later")
            await socket.close(code=1013)
            yield False
            return
        open_streams += 1
        try:
            yield True
        finally:
            open_streams -= 1

    @app.get("/v1/models")
    async def models() -> dict:
        auto = [_auto_card(registry, started)] if registry.model.language_id is not None else []
        return {"object": "list", "data": [_model_card(t, started) for t in registry.tasks()] + auto}

    @app.get("/v1/models/{task:path}")
    async def model_card(task: str) -> dict:
        if task == AUTO and registry.model.language_id is not None:
            return _auto_card(registry, started)
        for t in registry.tasks():
            if t.task == task:
                return _model_card(t, started)
        raise _unknown(registry, task)

    @app.get("/health")
    async def health(request: Request) -> dict:
        batcher: Batcher = request.app.state.batcher
        return {"status": "ok", "tasks": registry.names, "queued": batcher.queued, "busy": batcher.busy}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"))

    return app


MAX_FRAME_BYTES = 1 << 20
"""The largest binary frame a live stream takes (32 s of 16 kHz PCM16)."""


def _pcm_input(kind: str, rate: int) -> PcmInput:
    try:
        return PcmInput(kind, rate)
    except WavadaptError as e:
        param = "format" if kind not in PCM_FORMATS else "rate"
        raise _Refused(400, str(e), f"invalid_{param}", param) from None


def _is_end(text: str | None) -> bool:
    try:
        return json.loads(text or "").get("type") == "end"
    except (ValueError, AttributeError):
        return False


_KEY_PROTOCOL = "openai-insecure-api-key."


def _socket_key(socket: WebSocket) -> tuple[str, str | None]:
    """A WebSocket's authorization (``Bearer <key>`` for a key offered as a subprotocol, else its Authorization
    header) and the subprotocol to accept. A browser cannot set headers on a WebSocket, so it offers the key as a
    subprotocol, as OpenAI's browser clients do (``realtime``, ``openai-insecure-api-key.<key>``); the answer must
    name a subprotocol it offered, or Chromium fails the handshake."""
    offered = [p.strip() for p in socket.headers.get("sec-websocket-protocol", "").split(",")]
    keys = [p.removeprefix(_KEY_PROTOCOL) for p in offered if p.startswith(_KEY_PROTOCOL)]
    authorization = f"Bearer {keys[0]}" if keys else socket.headers.get("authorization", "")
    return authorization, "realtime" if "realtime" in offered else None


def _check_key(header: str, key: str) -> None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise _Refused(401, "missing or incorrect API key: send Authorization: Bearer <key>", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def _task_of(registry: Registry, model: str | None, language: str | None, live: bool = False) -> str:
    """``model`` names the task, and ``language`` must be the one it transcribes; a client that names no task of
    this server (whisper-1, or none) gets the task of its ``language`` (``es``, else the one ``es/...``). Files may
    ask for ``auto`` or ``a+b`` (routed by language, combined); live streams name their task."""
    names = registry.names
    if model == AUTO or (model and "+" in model):  # routed by the language identified, or a combination
        if live:
            raise _Refused(400, f"model {model!r} routes whole files; a live stream names its task ("
                           f"{', '.join(names)})", "invalid_model", "model")
        try:
            check_requests(registry.model, {model})
        except WavadaptError as e:
            raise _Refused(400, str(e), "invalid_model", "model") from None
        return model
    if model in names:
        if language and language != task_language(model):
            raise _Refused(400, f"language {language!r} contradicts model {model!r}, which transcribes "
                           f"{task_language(model)!r}", "invalid_language", "language")
        return model
    if language:
        of_language = [n for n in names if task_language(n) == language]
        if language in names:
            return language
        if len(of_language) == 1:
            return of_language[0]
        if of_language:
            raise _Refused(400, f"language {language!r} has several tasks here ({', '.join(of_language)}): name "
                           "one as the model", "ambiguous_language", "language")
    if model is None:
        raise _Refused(400, "missing model: name a task (GET /v1/models lists them) or send a language",
                       "missing_model", "model")
    raise _unknown(registry, model)


def _unknown(registry: Registry, task: str) -> _Refused:
    return _Refused(404, f"unknown model {task!r}; this server has {', '.join(registry.names)}", "model_not_found",
                    "model")


def _busy(batcher: Batcher) -> _Refused:
    # Time to work off what waits, at the throughput the tiny shape reaches on CPU; a client's retry spreads load.
    retry = max(1, round(batcher.queued_seconds / 30))
    return _Refused(429, f"{batcher.queued} requests are queued, the most this server holds; retry in {retry} s",
                    "queue_full", headers={"Retry-After": str(retry)})


def _error(e: _Refused) -> JSONResponse:
    body = {"error": {"message": e.message, "type": "invalid_request_error" if e.status < 500 else "server_error",
                      "param": e.param, "code": e.code}}
    return JSONResponse(body, e.status, headers=e.headers)


def _model_card(info, created: int) -> dict:
    return {"id": info.task, "object": "model", "created": created, "owned_by": "wavadapt",
            "language": task_language(info.task), **{k: v for k, v in info.to_dict().items() if k != "task"}}


def _auto_card(registry: Registry, created: int) -> dict:
    languages = registry.model.language_id.labels
    return {"id": AUTO, "object": "model", "created": created, "owned_by": "wavadapt", "languages": languages,
            "routes": {lang: task_of_language(registry.model, lang) for lang in languages}}


def verbose_json(t: Transcript, language: str) -> dict:
    """OpenAI's verbose transcription: the text with segments (subtitle cues) and word timestamps; the scores a
    CTC model does not compute (log-probabilities, no-speech probability) are left out, not faked."""
    segments = [{"id": i, "start": c[0].start, "end": c[-1].end, "text": " ".join(w.word for w in c)}
                for i, c in enumerate(cues(t.words))]
    identified = {"language_probability": t.language_probability, "model": t.task} if t.language else {}
    return {"task": "transcribe", "language": language, **identified, "duration": t.duration, "text": t.text,
            "segments": segments, "words": [{"word": w.word, "start": w.start, "end": w.end} for w in t.words]}


def _text_events(t: Transcript) -> Iterator[str]:
    """OpenAI's streamed transcription (server-sent events): the text word by word, then the whole."""
    for i, w in enumerate(t.words):
        yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': (' ' if i else '') + w.word})}\n\n"
    done = {"type": "transcript.text.done", "text": t.text, "usage": {"type": "duration", "seconds": t.duration}}
    yield f"data: {json.dumps(done)}\n\n"


def _transcription_response(t: Transcript, response_format: str, language: str) -> Response:
    if response_format == "json":
        return JSONResponse({"text": t.text, "usage": {"type": "duration", "seconds": t.duration}})
    if response_format == "verbose_json":
        return JSONResponse(verbose_json(t, language))
    body = t.text + "\n" if response_format == "text" else subtitles(t, response_format)
    return PlainTextResponse(body, media_type=_MEDIA_TYPES[response_format])


# --- running ---


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket, so a taken port is one clear error and port 0 picks a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise WavadaptError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def _server(app: FastAPI, **ssl) -> uvicorn.Server:
    """uvicorn for ``app``; ``ssl``: its ssl_certfile and ssl_keyfile, for https."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10,
                                         **ssl))


def _url(sock: socket.socket, https: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    return f"{'https' if https else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0, **ssl) -> Iterator[str]:
    """Run ``app`` on a background thread while the block runs (tests, benchmarks, embedding); yields its URL.
    ``ssl``: uvicorn's ssl_certfile and ssl_keyfile, for https."""
    sock = _listen(host, port)
    server = _server(app, **ssl)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="wavadapt-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise WavadaptError("the server did not start")
            time.sleep(0.01)
        yield _url(sock, https=bool(ssl))
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def serve(model_path: str | Path, adapters_dir: Path | None = None, host: str = "127.0.0.1", port: int = 8000, *,
          trust_pickle: bool = False, echo: Callable[[str], None] = print, decoder: DecoderConfig | None = None,
          ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None, device: torch.device | str = "cpu",
          **options) -> None:
    """Serve the backbone's tasks and those of ``adapters_dir`` (with their LMs and lexicons) until interrupted,
    over https with ``ssl_certfile`` and ``ssl_keyfile``; ``decoder`` is every task's default, ``options`` are
    ServerConfig's. Each transcription request is logged in one line."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise WavadaptError("https needs both --ssl-certfile and --ssl-keyfile")
    registry = Registry.load(model_path, Registry.task_files(adapters_dir) if adapters_dir else [],
                             trust_pickle=trust_pickle, decoder=decoder, decoding_dir=adapters_dir, device=device)
    app = create_app(registry, ServerConfig(**options))
    requests = logging.StreamHandler()
    requests.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(requests)
    log.setLevel(logging.INFO)
    sock = _listen(host, port)
    url = _url(sock, https=ssl_certfile is not None)
    echo(f"serving {len(registry.names)} task(s) at {url} (OpenAI API at {url}/v1)")
    echo(format_tasks(registry))
    if registry.model.language_id is not None:
        echo(f"model=auto identifies {', '.join(registry.model.language_id.labels)} and routes each file to its task")
    ssl = {"ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile)} if ssl_certfile else {}
    with contextlib.closing(sock):
        _server(app, **ssl).run(sockets=[sock])
