"""OpenAI's Realtime transcription over WebSocket (``/v1/realtime?intent=transcription``), as its official client
speaks it: ``session.update`` chooses the task (``audio.input.transcription.model``, or its ``language``) and the
input rate (``audio.input.format.rate``: OpenAI's 24 kHz, or 16 kHz); ``input_audio_buffer.append`` brings base64
PCM16; ``input_audio_buffer.commit`` ends an utterance. The server answers ``session.created`` / ``.updated``,
``input_audio_buffer.committed``, ``conversation.item.input_audio_transcription.delta`` as the final text grows and
``.completed`` with the utterance's transcript, and ``error`` events in OpenAI's shape. The utterances run through
the live-stream scheduler, in steps shared with every other stream. Server-side voice activity detection is not
here yet: a session that asks for it is told so, and commits its utterances itself.
"""

import asyncio
import base64
import binascii
import itertools
import json
from collections.abc import Callable

from fastapi import WebSocket, WebSocketDisconnect

from wavadapt.inference.streaming import PcmInput, Stream, StreamConfig, StreamScheduler

RATES = (16000, 24000)
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


class RealtimeSession:
    """One connection's session: its task, rate and the utterance under way."""

    def __init__(self, socket: WebSocket, live: StreamScheduler, task_of: Callable[[str | None, str | None], str],
                 config: StreamConfig):
        self.socket, self.live, self.task_of, self.config = socket, live, task_of, config
        self.task: str | None = None
        self.rate = 24000
        self.stream: Stream | None = None
        self.pcm: PcmInput | None = None
        self.item = _id("item")
        self.previous: str | None = None
        self.sent = ""

    async def send(self, event: dict) -> None:
        await self.socket.send_json({"event_id": _id("event"), **event})

    async def error(self, code: str, message: str, param: str | None = None) -> None:
        await self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message,
                                                     "param": param}})

    def session(self) -> dict:
        return {"type": "transcription", "object": "realtime.transcription_session", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": self.rate}, "transcription": {"model": self.task},
            "turn_detection": None}}}

    async def run(self, idle_seconds: float) -> None:
        """Answer the client's events until it leaves or sends nothing for ``idle_seconds``."""
        await self.send({"type": "session.created", "session": self.session()})
        while True:
            try:
                event = json.loads(await asyncio.wait_for(self.socket.receive_text(), idle_seconds))
            except WebSocketDisconnect:
                return
            except TimeoutError:
                await self.error("idle_timeout", f"nothing received for {idle_seconds:g} s")
                return await self.socket.close(code=1000)
            except (ValueError, KeyError):
                await self.error("invalid_json", "each message is one JSON event")
                continue
            kind = event.get("type") if isinstance(event, dict) else None
            handler = {"session.update": self.update, "input_audio_buffer.append": self.append,
                       "input_audio_buffer.commit": self.commit, "input_audio_buffer.clear": self.clear}.get(kind)
            if handler is None:
                await self.error("unknown_event", f"event type {kind!r} is not one this transcription server takes")
                continue
            await handler(event)

    async def update(self, event: dict) -> None:
        audio = ((event.get("session") or {}).get("audio") or {}).get("input") or {}
        transcription = audio.get("transcription") or {}
        try:
            self.task = self.task_of(transcription.get("model"), transcription.get("language"))
        except Exception as e:  # the task lookup's refusal: unknown model, contradicting language
            return await self.error(getattr(e, "code", "invalid_model"), getattr(e, "message", str(e)),
                                    "session.audio.input.transcription.model")
        rate = (audio.get("format") or {}).get("rate", self.rate)
        if rate not in RATES:
            return await self.error("invalid_rate", f"rate {rate}: this server takes PCM16 at {RATES[0]} or "
                                    f"{RATES[1]} Hz", "session.audio.input.format.rate")
        if audio.get("turn_detection"):
            return await self.error("unsupported_turn_detection", "server-side turn detection is not available "
                                    "here: set turn_detection to null and commit each utterance",
                                    "session.audio.input.turn_detection")
        self.rate = rate
        await self.send({"type": "session.updated", "session": self.session()})

    async def append(self, event: dict) -> None:
        if self.task is None:
            return await self.error("no_session", "send session.update with a transcription model first")
        if self.pcm is None:  # one resampler per utterance
            self.pcm = PcmInput("pcm16", self.rate)
        try:
            samples = self.pcm(base64.b64decode(event.get("audio", ""), validate=True))
        except (binascii.Error, ValueError):
            return await self.error("invalid_audio", "audio must be base64 of 16-bit little-endian PCM", "audio")
        if self.stream is None:
            self.stream = Stream(self.task, self.config)
        self.stream.push(samples)
        await self.live.advance(self.stream)
        await self.delta()

    async def delta(self) -> None:
        """The final text's growth since the last delta (final text only grows, so deltas concatenate to it)."""
        text = self.live.engine.text(self.stream)
        if text != self.sent and text.startswith(self.sent):
            await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": self.item,
                             "content_index": 0, "delta": text[len(self.sent):]})
            self.sent = text

    async def commit(self, event: dict) -> None:
        if self.stream is None:
            return await self.error("input_audio_buffer_commit_empty", "nothing to commit: the buffer is empty")
        self.stream.push(self.pcm.flush())
        self.stream.end()
        await self.live.advance(self.stream)
        await self.send({"type": "input_audio_buffer.committed", "item_id": self.item,
                         "previous_item_id": self.previous})
        await self.delta()
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": self.item,
                         "content_index": 0, "transcript": self.live.engine.text(self.stream)})
        self.previous, self.item, self.stream, self.pcm, self.sent = self.item, _id("item"), None, None, ""

    async def clear(self, event: dict) -> None:
        self.stream, self.pcm, self.sent = None, None, ""
        await self.send({"type": "input_audio_buffer.cleared"})
