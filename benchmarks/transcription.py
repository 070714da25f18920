"""Offline transcription throughput (issue 12, "Batched transcribe"), measured in one run.

48 files of 2-15 s (seeded noise shaped like speech loudness: what the model computes does not depend on the
words) transcribed by one fine-tuned CTC checkpoint directory (a tiny Wav2Vec2ForCTC with random weights, saved
with its processor, so every path runs the same model):

- ``wavadapt batched``: `transcribe_requests` (length-sorted batches under a cap of padded audio seconds; the cap
  is swept to show where the default comes from);
- ``wavadapt 1-by-1``: `evaluate.transcribe` per file (the transcribe command before batching);
- ``pipeline bs=1 / bs=8``: transformers' ``pipeline("automatic-speech-recognition")`` on the same directory.

Audio is decoded before the clock starts for every path; the figure is audio seconds per second of CPU time on
one thread (``x real``), and each path's transcripts are compared with the 1-by-1 ones (exactness: a batched
path that changes a transcript is wrong, not fast). Both CNN kinds: layer norm (Large / XLS-R type, masked
batches) and group norm (Base type, where transformers' pipeline has no attention mask and pads into the norm).

    python benchmarks/transcription.py
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor, pipeline

from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.text import Vocabulary
from wavadapt.inference.engine import transcribe
from wavadapt.inference.transcription import Request, default_batch_seconds, transcribe_requests
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import make_config

NORMS = {"layer": {"feat_extract_norm": "layer", "conv_bias": True, "do_stable_layer_norm": True}, "group": {}}
VOCAB = Vocabulary.build(["the quick brown fox jumps over the lazy dog"])


def write_model(path: Path, norm: str) -> Path:
    """A tiny fine-tuned CTC directory as transformers writes one: model, vocab.json, processor configs."""
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(make_config("tiny", vocab_size=len(VOCAB), pad_token_id=0, **NORMS[norm])).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(std=1.0)
        model.lm_head.bias[1:4] = -1e4  # no <s> </s> <unk>: transformers would spell them out
    model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB.tokens)}))
    extractor = Wav2Vec2FeatureExtractor(do_normalize=norm == "layer", return_attention_mask=norm == "layer")
    processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=Wav2Vec2CTCTokenizer(str(path / "vocab.json")))
    processor.save_pretrained(path)
    return path


def write_files(out: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        n = int(rng.uniform(2, 15) * SAMPLE_RATE)
        envelope = np.repeat(rng.uniform(0.02, 0.3, n // 1600 + 1), 1600)[:n]  # 100 ms loudness steps
        files.append(out / f"{i:02d}.wav")
        sf.write(files[-1], (rng.standard_normal(n) * envelope).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    return files


def timed(fn):
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def bench(norm: str, files: list[Path], root: Path, caps: list[float]) -> tuple[dict[str, tuple[float, int]], float]:
    """(x real, transcripts differing from 1-by-1) per path, and the seconds of audio."""
    directory = write_model(root / f"ctc-{norm}", norm)
    model = load_asr_model(directory, [])
    audio = [read_audio(f) for f in files]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    reference, t = timed(lambda: [transcribe(model, a) for a in audio])
    results = {"wavadapt 1-by-1": (seconds / t, 0)}
    for cap in caps:
        batched, t = timed(lambda cap=cap: transcribe_requests(model, [Request(f, model.active) for f in files], cap))
        results[f"wavadapt batched, cap {cap:g} s"] = (seconds / t, sum(b.text != r for b, r in zip(batched, reference,
                                                                                                    strict=True)))
    asr = pipeline("automatic-speech-recognition", model=str(directory), device="cpu")
    for batch_size in (1, 8):
        inputs = [{"raw": a, "sampling_rate": SAMPLE_RATE} for a in audio]  # the pipeline consumes its dicts
        out, t = timed(lambda b=batch_size, inputs=inputs: asr(inputs, batch_size=b))
        texts = [" ".join(o["text"].lower().split()) for o in out]
        results[f"pipeline bs={batch_size}"] = (seconds / t, sum(a != r for a, r in zip(texts, reference, strict=True)))
    return results, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--caps", type=float, nargs="+", default=[6.25, 12.5, 25.0, 60.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"default cap on this machine: {default_batch_seconds(torch.device('cpu')):g} s of padded audio; 1 thread, "
          "CPU time")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        files = write_files(root / "audio", args.files)
        for norm in NORMS:
            results, seconds = bench(norm, files, root, args.caps)
            best_other = max(x for name, (x, _) in results.items() if not name.startswith("wavadapt batched"))
            print(f"\n{norm}-norm CNN: {len(files)} files, {seconds:.0f} s of audio")
            print(f"{'path':<30}{'x real':>8}{'/ best other':>14}{'transcripts changed':>21}")
            for name, (x, changed) in results.items():
                print(f"{name:<30}{x:8.1f}{x / best_other:14.2f}{changed:>21}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
