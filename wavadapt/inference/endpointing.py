"""Where live speech stops: silero-vad's speech probability per 32 ms, for every listening stream in one batch.

An utterance ends after ``silence_seconds`` without speech; it is cut halfway into that silence, so the words before
keep their tail and the next utterance starts in silence. silero-vad beat the other rule the issue named, runs of
CTC blanks, on the demo's real Dutch test split (`benchmarks/streaming.py`: of 39 pauses between 40 recordings it
found 97% with 93% of its cuts in a pause; 0.8 s blank runs found 79% with 67%): a weak model writes letters into
silence, a VAD does not. It costs 1.2% of a core per stream.

silero's network is recurrent: each stream keeps its own state and the last 64 samples before its next window, and
one call runs the next window of every stream that has one (its TorchScript wrapper keeps a single state, so the
network inside it is called directly).
"""

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

WINDOW = 512
"""Samples silero-vad judges at once at 16 kHz (32 ms)."""
CONTEXT = 64
"""Samples of the previous window it sees before each."""


@dataclass(frozen=True)
class EndpointConfig:
    """OpenAI's server-VAD settings, with its defaults: speech when the probability reaches ``threshold`` (silence
    below it minus 0.15, silero's own hysteresis); an utterance ends after ``silence_seconds`` of silence and starts
    ``padding_seconds`` before the speech that opened it."""

    threshold: float = 0.5
    silence_seconds: float = 0.5
    padding_seconds: float = 0.3


@dataclass
class Speech:
    """One stream's listening: the network's state, where speech started and stopped, and the cuts not yet closed."""

    config: EndpointConfig = field(default_factory=EndpointConfig)
    context: torch.Tensor = field(default_factory=lambda: torch.zeros(1, CONTEXT))
    state: torch.Tensor = field(default_factory=lambda: torch.zeros(2, 1, 128))
    heard: int = 0
    """Samples judged so far."""
    speaking: bool = False
    silence_from: int | None = None
    last_cut: int = 0
    cuts: list[int] = field(default_factory=list)
    """Stream samples where utterances end, oldest first, until the stream closes them."""
    made: int = 0
    """Cuts made so far: the number of the utterance under way."""
    events: list[tuple[str, int, int]] = field(default_factory=list)
    """``("started" | "stopped", sample, utterance number)`` since the client last took them."""

    def hear(self, probability: float) -> None:
        """Take the speech probability of the window that ends at ``heard``."""
        c, start = self.config, self.heard - WINDOW
        if probability >= c.threshold:
            if not self.speaking:
                self.speaking = True
                self.events.append(("started", max(self.last_cut, start - round(c.padding_seconds * 16000)),
                                    self.made))
            self.silence_from = None
        elif self.speaking and probability < c.threshold - 0.15:
            if self.silence_from is None:
                self.silence_from = start
            if self.heard - self.silence_from >= c.silence_seconds * 16000:
                self.speaking = False
                self.events.append(("stopped", self.silence_from, self.made))
                self.last_cut = self.silence_from + (self.heard - self.silence_from) // 2
                self.cuts.append(self.last_cut)
                self.made += 1

    def take_events(self) -> list[tuple[str, int, int]]:
        events, self.events = self.events, []
        return events


class SpeechDetector:
    """silero-vad over many streams: :meth:`listen` judges every whole window each stream has not heard yet."""

    def __init__(self):
        from silero_vad import load_silero_vad  # a TorchScript model in the package: loading it takes 0.1 s

        with warnings.catch_warnings():  # its loader's deprecated calls are silero's to change
            warnings.simplefilter("ignore", DeprecationWarning)
            self.network = load_silero_vad()._model  # the 16 kHz network; its wrapper's state is single

    @torch.inference_mode()
    def listen(self, rows: list[tuple[Speech, np.ndarray]]) -> None:
        """``rows``: each stream's speech state and its audio from sample ``heard`` on."""
        position = 0
        while due := [(speech, audio) for speech, audio in rows if len(audio) - position >= WINDOW]:
            windows = torch.from_numpy(np.stack([audio[position : position + WINDOW] for _, audio in due]))
            x = torch.cat([torch.cat([speech.context for speech, _ in due]), windows], 1)
            probabilities, state = self.network(x, torch.cat([speech.state for speech, _ in due], 1))
            for i, (speech, _) in enumerate(due):
                speech.context, speech.state = x[i : i + 1, -CONTEXT:], state[:, i : i + 1]
                speech.heard += WINDOW
                speech.hear(probabilities[i, 0].item())
            position += WINDOW
