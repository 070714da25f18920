"""Live transcription, measured on a finished demo's real Dutch test split (one run, one thread).

1. Chunking: every utterance is streamed in 0.1 s pieces through the chunked engine, alone, for each (chunk, left
   context, look-ahead); its final text against offline decoding of the whole file (CER between them, and each one's
   CER against the reference), and the compute of all the steps against offline decoding's.
2. Endpointing: the utterances joined with 0.6-1.2 s pauses; where each rule ends utterances: runs of CTC blanks (on
   the offline labels, the rule's best case) and silero-vad. A pause counts as found when a cut falls between the
   last speech of one recording (silero's, up to 1.5 s before its end: the recordings end in silence) and the next.
3. Capacity: the utterances as concurrent streams in shared steps, on the demo's tiny model and on the Base shape
   (random weights) with every stream on one task, then on 16 tasks: audio seconds per CPU second, i.e. real-time
   streams one core sustains.
4. Latency: streams in real time through the live scheduler with endpointing, as the server runs them: from a
   piece's arrival to the first text that covers it (partial), and from the end of a recording's speech (where
   silero-vad hears it stop) to the final that holds it.

    python benchmarks/streaming.py --demo demo_out [--utterances 40] [--skip-chunking]
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import torch
from inference import build_model

from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import normalize_text
from wavadapt.inference.endpointing import Speech, SpeechDetector
from wavadapt.inference.engine import evaluating, forward_padded, transcribe
from wavadapt.inference.streaming import HOP, Stream, StreamConfig, StreamEngine, StreamScheduler
from wavadapt.interop.loading import load_asr_model

CONFIGS = [StreamConfig(chunk, left, ahead) for chunk in (0.5, 1.0, 2.0) for left in (2.0, 8.0) for ahead in (0.2, 0.4)]
PIECE = SAMPLE_RATE // 10


def stream_alone(engine: StreamEngine, task: str, config: StreamConfig, audio) -> tuple[str, float]:
    """The final text of ``audio`` streamed in 0.1 s pieces, and the seconds its steps took."""
    stream, spent = Stream(task, config), 0.0
    for i in range(0, len(audio), PIECE):
        stream.push(audio[i : i + PIECE])
        start = time.process_time()
        engine.step([stream])
        spent += time.process_time() - start
    stream.end()
    start = time.process_time()
    while stream.ready:
        engine.step([stream])
    return engine.text(stream), spent + time.process_time() - start


def chunking(model, task: str, audio: list[np.ndarray], references: list[str]) -> None:
    start = time.process_time()
    offline = [transcribe(model, a) for a in audio]
    offline_time = time.process_time() - start
    print(f"offline decoding {offline_time:.1f} CPU s, CER {jiwer.cer(references, offline):.2%}")
    print(f"{'chunk':>6}{'left':>6}{'ahead':>7}{'CER vs offline':>16}{'CER':>8}{'compute x offline':>19}")
    engine = StreamEngine(model)
    for config in CONFIGS:
        texts, spent = zip(*(stream_alone(engine, task, config, a) for a in audio), strict=True)
        print(f"{config.chunk_seconds:>6g}{config.left_seconds:>6g}{config.lookahead_seconds:>7g}"
              f"{jiwer.cer(offline, list(texts)):>16.2%}{jiwer.cer(references, list(texts)):>8.2%}"
              f"{sum(spent) / offline_time:>19.2f}")


def joined(audio: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """The recordings with a 0.6-1.2 s pause after each, and the sample where each recording starts."""
    rng, pieces, starts, at = np.random.default_rng(seed), [], [], 0
    for a in audio:
        pause = np.zeros(int(SAMPLE_RATE * rng.uniform(0.6, 1.2)), np.float32)
        pieces += [a, pause]
        starts.append(at)
        at += len(a) + len(pause)
    return np.concatenate(pieces), starts


def found(cuts: list[int], audio: list[np.ndarray], starts: list[int]) -> str:
    pauses = [(start + len(a) - 1.5 * SAMPLE_RATE, after)
              for start, a, after in zip(starts, audio, starts[1:], strict=False)]
    hits = sum(any(end <= c <= start for c in cuts) for end, start in pauses)
    return (f"{len(cuts)} cuts for {len(pauses)} pauses: {hits / len(pauses):.0%} of pauses found, "
            f"{hits / max(1, len(cuts)):.0%} of cuts in a pause")


def endpointing(model, task: str, audio: list[np.ndarray]) -> None:
    x, starts = joined(audio)
    labels = []
    with evaluating(model):
        for i in range(0, len(x), 20 * SAMPLE_RATE):
            w = torch.from_numpy(x[i : i + 20 * SAMPLE_RATE])[None]
            out = forward_padded(model, w, torch.ones_like(w, dtype=torch.long), [task])
            labels += out.logits.argmax(-1)[0, : out.lengths[0]].tolist()
    vocabulary = model.vocabularies[task]
    silent = {vocabulary.tokens.index(t) for t in vocabulary.tokens if t in ("<pad>", "|")}
    print(f"endpointing on {len(x) / SAMPLE_RATE:.0f} s ({len(audio)} recordings joined with 0.6-1.2 s pauses):")
    for frames in (25, 40):  # 0.5 s, 0.8 s
        cuts, run, speaking = [], 0, False
        for f, label in enumerate(labels):
            run = run + 1 if label in silent else 0
            speaking |= run == 0
            if speaking and run == frames:
                cuts.append((f + 1 - frames // 2) * HOP)
                speaking = False
        print(f"  CTC blank runs of {frames * 20} ms: {found(cuts, audio, starts)}")
    speech = Speech()
    start = time.process_time()
    SpeechDetector().listen([(speech, x)])
    spent = time.process_time() - start
    print(f"  silero-vad, 500 ms pauses: {found(speech.cuts, audio, starts)}; "
          f"{spent / (len(x) / SAMPLE_RATE):.2%} of a core per stream")


def capacity(model, tasks: list[str], audio: list[np.ndarray]) -> float:
    """Audio seconds per CPU second with every recording a concurrent stream (0.1 s pieces, a step after each)."""
    engine, config = StreamEngine(model), StreamConfig()
    streams = [Stream(tasks[i % len(tasks)], config) for i in range(len(audio))]
    start = time.process_time()
    for at in range(0, max(len(a) for a in audio) + PIECE, PIECE):
        for stream, a in zip(streams, audio, strict=True):
            if at < len(a):
                stream.push(a[at : at + PIECE])
            elif not stream.ended:
                stream.end()
        engine.step(streams)
    while any(s.ready for s in streams):
        engine.step(streams)
    return sum(len(a) for a in audio) / SAMPLE_RATE / (time.process_time() - start)


async def live(model, task: str, x: np.ndarray, ends: list[int], count: int) -> tuple[list[float], list[float], int]:
    """``count`` streams of ``x`` (offset in time so they do not step in lockstep), each piece sent when it would
    have been spoken; partial and final latencies in seconds, and the steps run."""
    partial, final = [], []
    async with StreamScheduler(StreamEngine(model)) as scheduler:

        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            stream, began = Stream(task, StreamConfig(), Speech()), time.perf_counter()
            arrived, shown, waiting = [], 0, list(ends)
            for at in range(0, len(x), PIECE):
                await asyncio.sleep(max(0.0, began + at / SAMPLE_RATE - time.perf_counter()))
                stream.push(x[at : at + PIECE])
                arrived.append((at + PIECE, time.perf_counter()))
                await scheduler.advance(stream)
                now = time.perf_counter()
                decoded = stream.final_samples + len(stream.pending) * HOP
                while shown < len(arrived) and arrived[shown][0] <= decoded:
                    partial.append(now - arrived[shown][1])
                    shown += 1
                for utterance in scheduler.engine.utterances(stream):  # the recordings it finished
                    while waiting and waiting[0] <= utterance.end * SAMPLE_RATE:
                        final.append(now - (began + waiting.pop(0) / SAMPLE_RATE))

        await asyncio.gather(*(one(i * 0.1 * 7 % 1.0) for i in range(count)))
        return partial, final, scheduler.steps


def speech_ends(audio: list[np.ndarray]) -> list[int]:
    """Where each recording's speech ends (silero-vad's last pause start; the recordings end in silence)."""
    detector, found = SpeechDetector(), []
    for a in audio:
        speech = Speech()
        detector.listen([(speech, np.concatenate([a, np.zeros(SAMPLE_RATE, np.float32)]))])
        found.append(max((at for kind, at, _ in speech.events if kind == "stopped"), default=len(a)))
    return found


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=20)
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `wavadapt demo --out DIR`")
    parser.add_argument("--method", default="adapters", help="which of the demo's fine-tuning runs decodes")
    parser.add_argument("--language", default="nl")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--base-utterances", type=int, default=16, help="streams on the Base shape (slower)")
    parser.add_argument("--live-streams", type=int, default=8)
    parser.add_argument("--skip-chunking", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_asr_model(args.demo / "finetune" / args.language / args.method, [])
    task = model.active
    utterances = open_corpus(args.demo / "corpus" / args.language, "test")[: args.utterances]
    audio = [read_audio(u.path) for u in utterances]
    references = [normalize_text(u.text, args.language) for u in utterances]
    print(f"{len(audio)} test utterances, {sum(len(a) for a in audio) / SAMPLE_RATE:.0f} s; one thread; "
          f"defaults: {StreamConfig()}")
    if not args.skip_chunking:
        chunking(model, task, audio, references)
    endpointing(model, task, audio)
    tiny = capacity(model, [task], audio)
    print(f"capacity, {len(audio)} concurrent streams: tiny (the demo's model) {tiny:.1f} real-time streams per core")
    for tasks in (1, 16):
        base = build_model("base", tasks)
        rate = capacity(base, [f"task{i}" for i in range(tasks)], audio[: args.base_utterances])
        if tasks == 1:
            one_task = rate
        print(f"  Base shape, {args.base_utterances} streams on {tasks} task(s): {rate:.2f} real-time streams per core"
              + (f" ({rate / one_task:.2f}x of one task)" if tasks > 1 else ""))
    x, starts = joined(audio[:8])
    ends = [start + end for start, end in zip(starts, speech_ends(audio[:8]), strict=True)]
    partial, final, steps = asyncio.run(live(model, task, x, ends, args.live_streams))
    print(f"latency, {args.live_streams} real-time streams of {len(x) / SAMPLE_RATE:.0f} s (tiny, endpointing on, "
          f"{steps} shared steps): partial text {percentiles(partial)}; final after the recording's end "
          f"{percentiles(final)}")


if __name__ == "__main__":
    sys.exit(main())
