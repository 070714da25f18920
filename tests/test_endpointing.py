"""Endpoints of live speech: the pause rule on known probabilities, silero-vad batched over streams equal to each
stream alone, and utterances cut in the pauses between spoken clips, their words inside their spans."""

import numpy as np
import pytest
import torch
from test_transcription import _two_task_model

from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.inference.endpointing import WINDOW, EndpointConfig, Speech, SpeechDetector
from wavadapt.inference.streaming import Stream, StreamConfig, StreamEngine

CHUNKED = StreamConfig(chunk_seconds=0.5, left_seconds=2.0, lookahead_seconds=0.2)
PAUSE = 16000


@pytest.fixture(scope="module")
def spoken(synth_corpus) -> list[np.ndarray]:
    """Clips with a second of silence after each."""
    clips = [read_audio(u.path) for lang in ("en", "es") for u in open_corpus(synth_corpus, "test", lang)[:2]]
    return [np.concatenate([c, np.zeros(PAUSE, np.float32)]) for c in clips]


def heard(probabilities: list[float], config: EndpointConfig | None = None) -> Speech:
    speech = Speech(config or EndpointConfig())
    for p in probabilities:
        speech.heard += WINDOW
        speech.hear(p)
    return speech


def test_a_pause_longer_than_the_silence_ends_the_utterance_halfway_into_it():
    windows_of_silence = 16  # 16 x 32 ms = 0.512 s >= 0.5 s
    speech = heard([0.0] * 10 + [0.9] * 20 + [0.0] * windows_of_silence + [0.9] * 5)
    started, stopped, again = speech.take_events()
    assert started == ("started", 10 * WINDOW - 4800, 0)  # 0.3 s of padding before the first speech window
    cut = 30 * WINDOW + 8 * WINDOW
    assert stopped == ("stopped", 30 * WINDOW, 0) and speech.cuts == [cut]
    assert again == ("started", cut, 1)  # its padding would reach back into the utterance before
    assert speech.take_events() == []


def test_short_pauses_and_doubtful_windows_do_not_end_it():
    short = heard([0.9] * 10 + [0.0] * 15 + [0.9] * 10 + [0.0] * 15)
    doubtful = heard([0.9] * 10 + [0.4] * 40)  # below the threshold, above threshold - 0.15: still speech
    assert short.cuts == [] and doubtful.cuts == [] and doubtful.speaking
    later = heard([0.9] * 10 + [0.0] * 15, EndpointConfig(silence_seconds=0.4))
    assert later.cuts == [10 * WINDOW + 6 * WINDOW + WINDOW // 2]
    first = heard([0.9] * 2 + [0.0] * 20)  # speech at the very start: padding stops at the stream's start
    assert first.take_events()[0] == ("started", 0, 0)


def test_streams_judged_together_are_judged_as_each_alone(spoken):
    detector = SpeechDetector()
    alone = []
    for x in spoken:
        speech = Speech()
        detector.listen([(speech, x)])
        alone.append(speech)
    together = [Speech() for _ in spoken]
    position = 0
    while position < max(len(x) for x in spoken):  # in ragged pieces, as streams arrive
        detector.listen([(s, x[s.heard : position + 7000]) for s, x in zip(together, spoken, strict=True)])
        position += 7000
    for a, b in zip(alone, together, strict=True):
        assert (a.heard, a.cuts, a.events) == (b.heard, b.cuts, b.events)
        torch.testing.assert_close(a.state, b.state, atol=1e-4, rtol=1e-4)  # batched float sums
    assert all(s.cuts for s in alone)  # every clip's trailing second of silence ends it


def test_a_stream_of_clips_closes_one_utterance_per_clip_cut_in_its_pause(spoken):
    engine = StreamEngine(_two_task_model("layer"))
    x = np.concatenate(spoken)
    ends = np.cumsum([len(c) for c in spoken])
    last_sound = ends - [len(c) - np.flatnonzero(np.abs(c) > 0.01)[-1] for c in spoken]
    stream, utterances = Stream("en", CHUNKED, Speech()), []
    for i in range(0, len(x), 1600):
        stream.push(x[i : i + 1600])
        engine.step([stream])
        utterances += engine.utterances(stream)
    stream.end()
    while stream.ready:
        engine.step([stream])
    utterances += engine.utterances(stream)
    frames = sum(round((u.end - u.start) * 50) for u in utterances)
    assert abs(frames - len(x) / 320) <= 2 * len(utterances)  # every frame in one utterance
    for utterance, sound, end in zip(utterances[: len(spoken)], last_sound, ends, strict=True):
        assert sound < utterance.end * 16000 <= end  # after the clip's last sound, before the next clip
    # after the last cut, the rest of the last pause (an utterance of its own only if the model wrote letters in it)
    assert len(utterances) in (len(spoken), len(spoken) + 1) and utterances[-1].end == len(x) / 16000
    for before, after in zip(utterances, utterances[1:], strict=False):
        assert before.end == pytest.approx(after.start, abs=0.02)
    for u in utterances:
        assert u.text == " ".join(w.word for w in u.words)
        assert all(u.start <= w.start < w.end <= u.end + 0.02 for w in u.words)
