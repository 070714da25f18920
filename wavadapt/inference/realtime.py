"""OpenAI's Realtime transcription over WebSocket (``/v1/realtime?intent=transcription``), as its official client
speaks it: ``session.update`` chooses the task (``audio.input.transcription.model``, or its ``language``) and the
input rate (``audio.input.format.rate``: OpenAI's 24 kHz, or 16 kHz); ``input_audio_buffer.append`` brings base64
PCM16; ``input_audio_buffer.commit`` ends an utterance. The server answers ``session.created`` / ``.updated``,
``input_audio_buffer.committed``, ``conversation.item.input_audio_transcription.delta`` as the final text grows and
``.completed`` with the utterance's transcript, and ``error`` events in OpenAI's shape. With ``turn_detection``
``server_vad`` (OpenAI's default, and its ``threshold``, ``prefix_padding_ms`` and ``silence_duration_ms``) the
server ends utterances where silero-vad hears a pause, with ``input_audio_buffer.speech_started`` / ``.stopped``;
with ``null`` each commit ends one. The utterances run through the live-stream scheduler, in steps shared with every
other stream.
"""

import asyncio
import base64
import binascii
import itertools
import json
from collections.abc import Callable

from fastapi import WebSocket, WebSocketDisconnect

from wavadapt.inference.endpointing import EndpointConfig, Speech
from wavadapt.inference.streaming import PcmInput, Stream, StreamConfig, StreamScheduler, Utterance

RATES = (16000, 24000)
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


class RealtimeSession:
    """One connection's session: its task, rate and turn detection, and the stream under way (one per commit)."""

    def __init__(self, socket: WebSocket, live: StreamScheduler, task_of: Callable[[str | None, str | None], str],
                 config: StreamConfig):
        self.socket, self.live, self.task_of, self.config = socket, live, task_of, config
        self.task: str | None = None
        self.rate = 24000
        self.endpoints: EndpointConfig | None = EndpointConfig()
        self.stream: Stream | None = None
        self.pcm: PcmInput | None = None
        self.items: dict[int, str] = {}
        """Item ids of the stream's utterances, by number."""
        self.previous: str | None = None
        self.sent = ""

    async def send(self, event: dict) -> None:
        await self.socket.send_json({"event_id": _id("event"), **event})

    async def error(self, code: str, message: str, param: str | None = None) -> None:
        await self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message,
                                                     "param": param}})

    def session(self) -> dict:
        e = self.endpoints
        turns = e and {"type": "server_vad", "threshold": e.threshold, "prefix_padding_ms": round(e.padding_seconds
                       * 1000), "silence_duration_ms": round(e.silence_seconds * 1000)}
        return {"type": "transcription", "object": "realtime.transcription_session", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": self.rate}, "transcription": {"model": self.task},
            "turn_detection": turns}}}

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
            task = self.task_of(transcription.get("model"), transcription.get("language"))
        except Exception as e:  # the task lookup's refusal: unknown model, contradicting language
            return await self.error(getattr(e, "code", "invalid_model"), getattr(e, "message", str(e)),
                                    "session.audio.input.transcription.model")
        rate = (audio.get("format") or {}).get("rate", self.rate)
        if rate not in RATES:
            return await self.error("invalid_rate", f"rate {rate}: this server takes PCM16 at {RATES[0]} or "
                                    f"{RATES[1]} Hz", "session.audio.input.format.rate")
        endpoints = self.endpoints
        if "turn_detection" in audio:
            turns = audio["turn_detection"]
            if turns is not None and (not isinstance(turns, dict) or turns.get("type") != "server_vad"):
                return await self.error("unsupported_turn_detection", "turn_detection is server_vad (silero-vad) or "
                                        "null (each commit ends an utterance)", "session.audio.input.turn_detection")
            try:
                endpoints = turns and _endpoint_config(turns)
            except (TypeError, ValueError) as e:
                return await self.error("invalid_turn_detection", str(e), "session.audio.input.turn_detection")
        if self.stream is not None and (rate, endpoints) != (self.rate, self.endpoints):
            return await self.error("conversation_already_has_audio", "commit or clear the audio before changing "
                                    "the rate or the turn detection", "session.audio.input")
        self.task, self.rate, self.endpoints = task, rate, endpoints
        await self.send({"type": "session.updated", "session": self.session()})

    async def append(self, event: dict) -> None:
        if self.task is None:
            return await self.error("no_session", "send session.update with a transcription model first")
        if self.pcm is None:  # one resampler per stream
            self.pcm = PcmInput("pcm16", self.rate)
        try:
            samples = self.pcm(base64.b64decode(event.get("audio", ""), validate=True))
        except (binascii.Error, ValueError):
            return await self.error("invalid_audio", "audio must be base64 of 16-bit little-endian PCM", "audio")
        if self.stream is None:
            self.stream = Stream(self.task, self.config, self.endpoints and Speech(self.endpoints))
        self.stream.push(samples)
        await self.live.advance(self.stream)
        await self.answer()

    async def commit(self, event: dict) -> None:
        if self.stream is None:
            return await self.error("input_audio_buffer_commit_empty", "nothing to commit: the buffer is empty")
        self.stream.push(self.pcm.flush())
        self.stream.end()
        await self.live.advance(self.stream)
        await self.answer()
        self.stream, self.pcm, self.items, self.sent = None, None, {}, ""

    async def clear(self, event: dict) -> None:
        self.stream, self.pcm, self.items, self.sent = None, None, {}, ""
        await self.send({"type": "input_audio_buffer.cleared"})

    def item(self, number: int) -> str:
        return self.items.setdefault(number, _id("item"))

    async def answer(self) -> None:
        """What the last step found: speech starting and stopping, utterances ending, the open one's text growing."""
        stream, engine = self.stream, self.live.engine
        for kind, sample, number in stream.speech.take_events() if stream.speech else []:
            await self.send({"type": f"input_audio_buffer.speech_{kind}", "item_id": self.item(number),
                             f"audio_{'start' if kind == 'started' else 'end'}_ms": round(sample / 16)})
        for utterance in engine.utterances(stream):
            await self.complete(stream.closed - 1, utterance)
        if not stream.ended:
            await self.delta(stream.closed, engine.text(stream))

    async def delta(self, number: int, text: str) -> None:
        """The final text's growth since the last delta (final text only grows, so deltas concatenate to it)."""
        if text != self.sent and text.startswith(self.sent):
            await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": self.item(number),
                             "content_index": 0, "delta": text[len(self.sent):]})
            self.sent = text

    async def complete(self, number: int, utterance: Utterance) -> None:
        item = self.item(number)
        await self.send({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": self.previous})
        await self.delta(number, utterance.text)
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                         "content_index": 0, "transcript": utterance.text})
        self.previous, self.sent = item, ""


def _endpoint_config(turns: dict) -> EndpointConfig:
    """OpenAI's server_vad fields as an endpointer's settings."""
    defaults = EndpointConfig()
    config = EndpointConfig(float(turns.get("threshold", defaults.threshold)),
                            float(turns.get("silence_duration_ms", defaults.silence_seconds * 1000)) / 1000,
                            float(turns.get("prefix_padding_ms", defaults.padding_seconds * 1000)) / 1000)
    if not 0 < config.threshold < 1 or config.silence_seconds <= 0 or config.padding_seconds < 0:
        raise ValueError("server_vad takes a threshold between 0 and 1, a positive silence_duration_ms and no "
                         "negative prefix_padding_ms")
    return config
