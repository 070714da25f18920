"""Data pipeline throughput and padding, measured in one run.

Throughput: seconds of audio decoded + resampled + batched per wall-clock second, for LibriSpeech
flac (16 kHz, English) and Common Voice mp3 (48 kHz, Spanish), with 0 and 2 DataLoader workers.
Padding: the fraction of a padded batch that is padding, length-bucketed batches vs random batches
under the same max-seconds-per-batch cap.

    python benchmarks/data_loading.py                    # synthesises 6 min per language first
    python benchmarks/data_loading.py --corpus DIR       # a corpus made by `wavadapt synth`
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.batching import (
    AudioDataset,
    LengthBucketBatchSampler,
    filter_by_length,
    make_dataloader,
    padding_fraction,
)
from wavadapt.data.corpora import open_corpus

LAYOUTS = {"en": "LibriSpeech flac 16 kHz", "es": "Common Voice mp3 48 kHz"}


def throughput(utterances, max_seconds_per_batch: float, num_workers: int) -> float:
    """Audio seconds per wall second over one epoch (worker start-up included, as in training)."""
    loader = make_dataloader(AudioDataset(utterances), max_seconds_per_batch, num_workers=num_workers)
    start = time.perf_counter()
    samples = sum(int(batch["attention_mask"].sum()) for batch in loader if batch is not None)
    return samples / SAMPLE_RATE / (time.perf_counter() - start)


def random_batches(lengths: list[int], cap: int, seed: int = 0) -> list[list[int]]:
    """Shuffled utterances packed greedily under the same padded-size cap (no length sorting)."""
    batches, batch, longest = [], [], 0
    for i in np.random.default_rng(seed).permutation(len(lengths)).tolist():
        if batch and max(longest, lengths[i]) * (len(batch) + 1) > cap:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, lengths[i])
    return batches + [batch] if batch else batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="corpus root from `wavadapt synth` (default: synthesise one)")
    parser.add_argument("--split", default="pretrain")
    parser.add_argument("--minutes", type=float, default=6.0, help="minutes per language to synthesise")
    parser.add_argument("--max-seconds-per-batch", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=2, help="epochs per setting; the best one counts")
    parser.add_argument(
        "--passes", type=int, default=16, help="times each file is read per epoch, so worker start-up is amortised"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus
        if root is None:
            from wavadapt.data.synth import synthesize_corpus

            root = Path(tmp)
            start = time.perf_counter()
            synthesize_corpus(root, tuple(LAYOUTS), minutes={args.split: args.minutes}, seed=0, progress=False)
            print(f"synthesised {args.minutes:g} min per language in {time.perf_counter() - start:.0f} s")
        corpora = {
            lang: filter_by_length(open_corpus(root, args.split, lang), max_seconds=args.max_seconds_per_batch)[0]
            for lang in LAYOUTS
        }

        print(f"\nthroughput: audio seconds per wall second (x real time), best of {args.repeats} epochs")
        print(f"{'corpus':<26}{'files':>6}{'audio s':>9}{'0 workers':>11}{'2 workers':>11}{'2w / 0w':>9}")
        print(f"(each file read {args.passes} times per epoch)")
        speed = {}
        for lang, utterances in corpora.items():
            seconds = sum(u.num_samples for u in utterances) / SAMPLE_RATE
            for workers in (0, 2):
                epoch = utterances * args.passes
                runs = [throughput(epoch, args.max_seconds_per_batch, workers) for _ in range(args.repeats)]
                speed[lang, workers] = max(runs)
            print(
                f"{LAYOUTS[lang]:<26}{len(utterances):>6}{seconds:>9.0f}{speed[lang, 0]:>10.0f}x"
                f"{speed[lang, 2]:>10.0f}x{speed[lang, 2] / speed[lang, 0]:>9.2f}"
            )
        print(f"mp3 48 kHz costs {speed['en', 0] / speed['es', 0]:.1f}x the time of flac 16 kHz per audio second")

        cap = int(args.max_seconds_per_batch * SAMPLE_RATE)
        print(f"\npadding fraction at {args.max_seconds_per_batch:g} s of padded audio per batch")
        print(f"{'corpus':<26}{'bucketed':>10}{'random':>10}{'batches b/r':>13}")
        for lang, utterances in corpora.items():
            lengths = [u.num_samples for u in utterances]
            bucketed = LengthBucketBatchSampler(lengths, args.max_seconds_per_batch)
            shuffled = random_batches(lengths, cap)
            print(
                f"{LAYOUTS[lang]:<26}{bucketed.padding_fraction:>10.1%}{padding_fraction(shuffled, lengths):>10.1%}"
                f"{len(bucketed) / len(shuffled):>13.2f}"
            )


if __name__ == "__main__":
    main()
