"""Live transcription's chunking, measured on a finished demo's real Dutch test split (one run, one thread).

For each (chunk, left context, look-ahead): every utterance is streamed in 0.1 s pieces through the chunked engine,
alone; its final text is compared with offline decoding of the whole file (CER between them, and each one's CER
against the reference), and the compute of all the steps with offline decoding's. Then all utterances at once as
concurrent streams in shared steps: audio seconds decoded per second of compute, i.e. how many real-time streams
one core sustains.

    python benchmarks/streaming.py --demo demo_out [--method adapters] [--utterances 60]
"""

import argparse
import time
from pathlib import Path

import jiwer
import torch

from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import normalize_text
from wavadapt.inference.engine import transcribe
from wavadapt.inference.streaming import Stream, StreamConfig, StreamEngine
from wavadapt.interop.loading import load_asr_model

CONFIGS = [StreamConfig(chunk, left, ahead) for chunk in (0.5, 1.0, 2.0) for left in (2.0, 8.0) for ahead in (0.2, 0.4)]
PIECE = SAMPLE_RATE // 10


def stream_alone(engine: StreamEngine, task: str, config: StreamConfig, audio) -> tuple[str, float]:
    """The final text of ``audio`` streamed in 0.1 s pieces, and the seconds its steps took."""
    stream, spent = Stream(task, config), 0.0
    for i in range(0, len(audio), PIECE):
        stream.push(audio[i : i + PIECE])
        start = time.perf_counter()
        engine.step([stream])
        spent += time.perf_counter() - start
    stream.end()
    start = time.perf_counter()
    while stream.ready:
        engine.step([stream])
    return engine.text(stream), spent + time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `wavadapt demo --out DIR`")
    parser.add_argument("--method", default="adapters", help="which of the demo's fine-tuning runs decodes")
    parser.add_argument("--language", default="nl")
    parser.add_argument("--utterances", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_asr_model(args.demo / "finetune" / args.language / args.method, [])
    task = model.active
    utterances = open_corpus(args.demo / "corpus" / args.language, "test")[: args.utterances]
    audio = [read_audio(u.path) for u in utterances]
    references = [normalize_text(u.text, args.language) for u in utterances]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    start = time.perf_counter()
    offline = [transcribe(model, a) for a in audio]
    offline_time = time.perf_counter() - start
    print(f"{len(audio)} test utterances, {seconds:.0f} s; offline decoding {offline_time:.1f} s, CER "
          f"{jiwer.cer(references, offline):.2%}")
    print(f"{'chunk':>6}{'left':>6}{'ahead':>7}{'CER vs offline':>16}{'CER':>8}{'compute x offline':>19}")
    engine = StreamEngine(model)
    for config in CONFIGS:
        texts, spent = zip(*(stream_alone(engine, task, config, a) for a in audio), strict=True)
        print(f"{config.chunk_seconds:>6g}{config.left_seconds:>6g}{config.lookahead_seconds:>7g}"
              f"{jiwer.cer(offline, list(texts)):>16.2%}{jiwer.cer(references, list(texts)):>8.2%}"
              f"{sum(spent) / offline_time:>19.2f}")
    config = StreamConfig()
    streams = [Stream(task, config) for _ in audio]
    start = time.perf_counter()
    for at in range(0, max(len(a) for a in audio) + PIECE, PIECE):  # every stream gets its next 0.1 s, then a step
        for stream, a in zip(streams, audio, strict=True):
            if at < len(a):
                stream.push(a[at : at + PIECE])
            elif not stream.ended:
                stream.end()
        engine.step(streams)
    while any(s.ready for s in streams):
        engine.step(streams)
    spent = time.perf_counter() - start
    print(f"{len(streams)} concurrent streams at the defaults ({config.chunk_seconds:g} s chunks, "
          f"{config.left_seconds:g} s left, {config.lookahead_seconds:g} s ahead): {seconds:.0f} s of audio in "
          f"{spent:.1f} s, {seconds / spent:.1f} real-time streams per core")


if __name__ == "__main__":
    main()
