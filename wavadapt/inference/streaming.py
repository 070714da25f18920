"""Live transcription: chunked CTC over a bidirectional encoder, many streams in one mixed-task batch per step.

A stream's audio arrives in pieces. Each step encodes, per stream, a window of its newest chunk with some left
context before it and a look-ahead after it; the frames of the chunk see context on both sides, so they are final
(their greedy CTC labels are kept for good), while the look-ahead's frames are decoded only for the partial text
and redone by the next step. When the stream ends, whatever is left is final. Frames are 20 ms (320 samples) and
windows start on frame boundaries, so a window's frame j is the stream's frame ``start / 320 + j``.

One step runs the windows of every stream that has a chunk ready as one padded batch, each row on its own task
(per-row routing), so many live streams in many languages share one forward.
"""

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import soxr
import torch

from wavadapt.data.audio import SAMPLE_RATE, normalize_waveform
from wavadapt.errors import WavadaptError
from wavadapt.inference.endpointing import Speech, SpeechDetector
from wavadapt.inference.engine import evaluating, forward_padded
from wavadapt.inference.transcription import Word
from wavadapt.model.ctc import CTCModel

HOP = 320
"""Samples per output frame of the papers' CNN (20 ms)."""


PCM_FORMATS = {"pcm16": ("<i2", 1 / 32768), "f32": ("<f4", 1.0)}
"""Live audio's encodings (little-endian, mono): numpy dtype and the scale to [-1, 1]."""


class PcmInput:
    """A live stream's frames of ``kind`` (pcm16 or f32) at ``rate`` as 16 kHz float32, resampled as a stream:
    soxr keeps a few samples back between frames, which :meth:`flush` gives at the end."""

    def __init__(self, kind: str = "pcm16", rate: int = SAMPLE_RATE):
        if kind not in PCM_FORMATS:
            raise WavadaptError(f"format {kind!r}: choose {' or '.join(PCM_FORMATS)}")
        if not 8000 <= rate <= 48000:
            raise WavadaptError(f"rate {rate}: give 8000 to 48000 Hz")
        self.kind, self.rate, (self.dtype, self.scale) = kind, rate, PCM_FORMATS[kind]
        self.resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != SAMPLE_RATE else None

    def __call__(self, frame: bytes) -> np.ndarray:
        size = np.dtype(self.dtype).itemsize
        if len(frame) % size:
            raise ValueError(f"a {self.kind} frame holds whole samples: {len(frame)} bytes is not a multiple of {size}")
        samples = np.frombuffer(frame, self.dtype).astype(np.float32) * self.scale
        return self.resampler.resample_chunk(samples) if self.resampler is not None else samples

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds, at the end of the audio."""
        if self.resampler is None:
            return np.zeros(0, np.float32)
        return self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)


@dataclass(frozen=True)
class StreamConfig:
    """How much audio a step finalises (``chunk_seconds``) and what it sees: ``left_seconds`` of the audio before
    and ``lookahead_seconds`` after.

    The defaults are from `benchmarks/streaming.py` on the demo's real Dutch test split (40 utterances, the adapter
    model): every chunking tried (0.5-2 s chunks, 2 or 8 s left, 0.2 or 0.4 s ahead) kept the offline CER (76.4%;
    streamed 75.8-76.7%); 1 s chunks bound the partial text's lag (p95 1.05 s with 8 live streams) for 2.8x offline
    decoding's CPU time, where 8 s of left context cost more (3.3x) and gained nothing, and 2 s chunks cost 1.95x but
    lag a second more."""

    chunk_seconds: float = 1.0
    left_seconds: float = 2.0
    lookahead_seconds: float = 0.4

    def __post_init__(self) -> None:
        if self.chunk_seconds <= 0 or self.left_seconds < 0 or self.lookahead_seconds < 0:
            raise WavadaptError("a stream needs a positive chunk and no negative context")

    def samples(self, seconds: float) -> int:
        """``seconds`` in samples, on a frame boundary."""
        return round(seconds * SAMPLE_RATE / HOP) * HOP


@dataclass
class Utterance:
    """A finished stretch of a stream: its text, its words and its span, in seconds from the stream's start."""

    text: str
    words: list[Word]
    start: float
    end: float


@dataclass
class Stream:
    """One live stream: the audio kept for context, the greedy CTC labels of its frames so far, and, when it has an
    endpointer (``speech``), where its utterances end."""

    task: str
    config: StreamConfig = field(default_factory=StreamConfig)
    speech: Speech | None = None
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    offset: int = 0
    """Stream sample where ``audio`` begins (older audio is dropped once no window needs it)."""
    received: int = 0
    final_samples: int = 0
    """Samples whose frames are final."""
    final: list[int] = field(default_factory=list)
    """Labels of the final frames from ``first_frame`` on (those before went out in closed utterances)."""
    first_frame: int = 0
    pending: list[int] = field(default_factory=list)
    """Labels of the frames after the final ones, from the last step (the partial text's tail)."""
    ended: bool = False
    closed: int = 0
    """Utterances closed so far."""
    shown: str = ""
    """The partial text the client last heard."""

    def push(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples."""
        if self.ended:
            raise WavadaptError("the stream has ended")
        self.audio = np.concatenate([self.audio, np.asarray(samples, np.float32)])
        self.received += len(samples)

    def end(self) -> None:
        """No more audio: the next step finalises the rest."""
        self.ended = True

    def cuts(self) -> list[int]:
        """The endpoints not yet closed, on frame boundaries (where windows begin)."""
        return [c // HOP * HOP for c in self.speech.cuts] if self.speech else []

    def _cut(self) -> int | None:
        """The first endpoint whose frames are not all final yet."""
        return next((c for c in self.cuts() if c > self.final_samples), None)

    @property
    def ready(self) -> bool:
        """Whether a step has work: frames to decode or audio for the endpointer."""
        return self.decodable or self.listening

    @property
    def decodable(self) -> bool:
        """Whether a whole chunk and its look-ahead, an endpoint and its look-ahead, or the rest of an ended stream
        await the encoder."""
        c = self.config
        if self.ended:
            return self.final_samples < self.received
        ahead = c.samples(c.lookahead_seconds)
        cut = self._cut()
        return (self.received - self.final_samples >= c.samples(c.chunk_seconds) + ahead
                or (cut is not None and self.received >= cut + ahead))

    @property
    def listening(self) -> bool:
        """Whether the endpointer has 0.2 s to hear (it runs in steps, as the encoder does)."""
        return self.speech is not None and self.received - self.speech.heard >= LISTEN_SAMPLES

    def window(self) -> tuple[np.ndarray, int, int]:
        """The audio a step encodes, the stream sample it starts at, and the stream sample up to which its
        frames become final: a chunk, or less where an endpoint comes first."""
        c = self.config
        start = max(0, self.final_samples - c.samples(c.left_seconds))
        final_end = self.final_samples + c.samples(c.chunk_seconds)
        if (cut := self._cut()) is not None:
            final_end = min(final_end, cut)
        if self.ended:
            end = final_end = self.received
        else:
            end = min(self.received, final_end + c.samples(c.lookahead_seconds))
        return self.audio[start - self.offset:end - self.offset], start, final_end

    def advance(self, labels: list[int], start: int, final_end: int) -> None:
        """Take a step's frame labels for the window that began at stream sample ``start``."""
        first = (self.final_samples - start) // HOP  # the first frame not final yet
        done = len(labels) if self.ended else (final_end - start) // HOP
        self.final += labels[first:done]
        self.pending = labels[done:]
        self.final_samples = final_end
        keep_from = min(self.final_samples - self.config.samples(self.config.left_seconds),
                        self.speech.heard if self.speech else self.received)
        keep_from = max(0, keep_from)
        self.audio, self.offset = self.audio[keep_from - self.offset:], keep_from

    @property
    def opened(self) -> float:
        """Seconds into the stream where the open utterance starts."""
        return self.first_frame * HOP / SAMPLE_RATE

    def unheard(self) -> np.ndarray:
        """The audio the endpointer has not judged yet."""
        return self.audio[self.speech.heard - self.offset:]

    def take_labels(self, until: int | None = None) -> tuple[list[int], int]:
        """Remove the final labels of the frames before stream sample ``until`` (default: all): (labels, their first
        frame)."""
        n = len(self.final) if until is None else until // HOP - self.first_frame
        labels, first = self.final[:n], self.first_frame
        self.final, self.first_frame = self.final[n:], self.first_frame + len(labels)
        self.closed += 1
        return labels, first


LISTEN_SAMPLES = 3200
"""Unheard audio that makes a stream ready for its endpointer (0.2 s: a pause is found within 0.2 s of its end)."""


class StreamEngine:
    """Runs steps over many streams on one model. A forward routes its rows through adapter state on the model, so
    steps must not overlap other forwards on it: run them on one thread (`StreamScheduler` does)."""

    def __init__(self, model: CTCModel, detector: SpeechDetector | None = None):
        """``detector``: the endpointer of streams that have ``speech`` (loaded when the first one comes)."""
        self.model = model
        self.detector = detector

    def step(self, streams: list[Stream]) -> list[Stream]:
        """The endpointer over every stream with audio to hear, then one padded mixed-task forward over the windows
        of every stream with a chunk ready; returns the streams it advanced."""
        if hearing := [s for s in streams if s.listening]:
            self.detector = self.detector or SpeechDetector()
            self.detector.listen([(s.speech, s.unheard()) for s in hearing])
        ready = [s for s in streams if s.decodable]
        if not ready:
            return hearing
        windows = [s.window() for s in ready]
        audio = [normalize_waveform(w) if self.model.normalize_waveforms else w for w, _, _ in windows]
        longest = max(len(a) for a in audio)
        waveforms = torch.zeros(len(audio), longest)
        mask = torch.zeros(len(audio), longest, dtype=torch.long)
        for i, a in enumerate(audio):
            waveforms[i, : len(a)] = torch.from_numpy(a)
            mask[i, : len(a)] = 1
        device = next(self.model.parameters()).device
        with evaluating(self.model):
            output = forward_padded(self.model, waveforms.to(device), mask.to(device), [s.task for s in ready])
        best = output.logits.argmax(-1).cpu()
        for i, (stream, (_, start, final_end)) in enumerate(zip(ready, windows, strict=True)):
            stream.advance(best[i, : output.lengths[i]].tolist(), start, final_end)
        return list({id(s): s for s in hearing + ready}.values())

    def text(self, stream: Stream, partial: bool = False) -> str:
        """The final text of the stream's open utterance, or with ``partial`` its final and look-ahead text."""
        vocabulary = self.model.vocabularies[stream.task]
        return vocabulary.ctc_decode(stream.final + (stream.pending if partial else []))

    def utterances(self, stream: Stream) -> list[Utterance]:
        """Take the stream's utterances whose frames are all final: those an endpoint closed and, once the stream has
        ended and is decoded, the rest (unless it is silence after an utterance)."""
        closed = []
        for cut in stream.cuts():
            if cut > stream.final_samples:
                break
            stream.speech.cuts.pop(0)
            closed.append(self._utterance(stream, cut))
        if stream.ended and not stream.decodable and (stream.final or not stream.closed):
            first = not stream.closed
            if (utterance := self._utterance(stream)).text or first:
                closed.append(utterance)
        return closed

    def events(self, stream: Stream) -> list[dict]:
        """What a live client hears after a step: a ``final`` event per utterance closed, then a ``partial`` one if
        the open utterance's text changed."""
        found = [{"type": "final", **asdict(u)} for u in self.utterances(stream)]
        if found:
            stream.shown = ""
        if not stream.ended and (text := self.text(stream, partial=True)) != stream.shown:
            stream.shown = text
            found.append({"type": "partial", "text": text, "start": stream.opened,
                          "end": stream.received / SAMPLE_RATE})
        return found

    def _utterance(self, stream: Stream, until: int | None = None) -> Utterance:
        vocabulary = self.model.vocabularies[stream.task]
        labels, first = stream.take_labels(until)
        seconds = HOP / SAMPLE_RATE
        words = [Word(w, (first + s) * seconds, (first + e) * seconds) for w, s, e in vocabulary.ctc_words(labels)]
        end = (stream.received if until is None else until) / SAMPLE_RATE
        return Utterance(" ".join(w.word for w in words), words, first * seconds, end)


class StreamScheduler:
    """Continuous batching of live streams: whenever streams have chunks ready, one step runs all of them in one
    mixed-task batch on a worker thread; a connection waits for its stream's turn, so no stream runs alone while
    others wait and none waits for more than the step under way."""

    def __init__(self, engine: StreamEngine, executor: Executor | None = None):
        """``executor``: the one thread every forward on the model runs on (a server's batcher's), so live steps and
        other requests never overlap; default: a thread of its own."""
        self.engine = engine
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="wavadapt-live")
        self.waiting: dict[int, tuple[Stream, asyncio.Future]] = {}
        self.wake = asyncio.Event()
        self.steps = 0
        """Forwards run so far (how well the streams shared them)."""
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "StreamScheduler":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for _, future in self.waiting.values():
            if not future.done():
                future.set_exception(WavadaptError("the server is shutting down"))

    async def advance(self, stream: Stream) -> None:
        """Return once every chunk ``stream`` has ready is decoded, in steps shared with the other streams."""
        if not stream.ready:
            return
        future = asyncio.get_running_loop().create_future()
        self.waiting[id(stream)] = (stream, future)
        self.wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.waiting:
                streams = [stream for stream, _ in self.waiting.values()]
                try:
                    await asyncio.get_running_loop().run_in_executor(self.executor, self.engine.step, streams)
                    self.steps += 1
                except Exception as e:  # the model failed: every stream of the step hears why, the next step goes on
                    for key, (_, future) in list(self.waiting.items()):
                        future.set_exception(e)
                        del self.waiting[key]
                    continue
                for key, (stream, future) in list(self.waiting.items()):
                    if not stream.ready:
                        future.set_result(None)
                        del self.waiting[key]


def transcribe_live(engine: StreamEngine, stream: Stream, frames: Iterable[bytes], pcm: PcmInput) -> Iterator[dict]:
    """One live stream on its own (``wavadapt transcribe --live``): the events after each frame, then the last
    ones when the frames run out."""
    for frame in frames:
        stream.push(pcm(frame))
        while stream.ready:
            engine.step([stream])
        yield from engine.events(stream)
    stream.push(pcm.flush())
    stream.end()
    while stream.ready:
        engine.step([stream])
    yield from engine.events(stream)
