"""Loading training data from files and from the field's stores, and two length-bucketing samplers, measured in one
run on a finished demo's real Dutch train split (Fish Fillets NG, Ogg Vorbis).

1. Throughput: audio seconds decoded, resampled and batched per wall second, over one epoch (worker start-up
   included, as in training), with 0 and 2 DataLoader workers: the files themselves; the same audio as WebDataset
   shards (indexed: each record read by its byte offset; streamed: `finetune --stream`), as Lhotse Shar, and as
   Parquet (a Hugging Face dataset, the hub's layout, audio bytes embedded).
2. Bucketing: wavadapt's LengthBucketBatchSampler (one global sort with jitter, cap on padded seconds) against
   Lhotse's DynamicBucketingSampler (duration buckets over a buffer, cap on the sum of durations), at the same
   cap: padding fraction, batches, the largest padded batch (what memory must hold), batches per second of the
   sampler alone, and whether a resumed epoch gives exactly the batches an uninterrupted one gives.

    python benchmarks/data_loading.py --demo demo_out [--passes 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.batching import AudioDataset, LengthBucketBatchSampler, filter_by_length, make_dataloader, pack
from wavadapt.data.corpora import open_corpus
from wavadapt.data.shard_stream import ShardStream, stream_batches
from wavadapt.data.stores.lhotse_cuts import write_shar
from wavadapt.data.stores.tar_shards import write_shards


def indexed_speed(utterances, workers: int, cap: float) -> float:
    loader = make_dataloader(AudioDataset(utterances), cap, num_workers=workers)
    start = time.perf_counter()
    samples = sum(int(b["attention_mask"].sum()) for b in loader if b is not None)
    return samples / SAMPLE_RATE / (time.perf_counter() - start)


def streamed_speed(shards: list[str], workers: int, cap: float) -> float:
    start = time.perf_counter()
    samples = sum(int(item["batch"]["attention_mask"].sum()) for item in stream_batches(ShardStream(shards, cap),
                                                                                           workers) if item["batch"])
    return samples / SAMPLE_RATE / (time.perf_counter() - start)


def write_parquet(utterances, out: Path) -> Path:
    import datasets
    from datasets.table import embed_table_storage

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"audio": [str(u.path) for u in utterances], "text": [u.text for u in utterances],
                                     "id": [u.id for u in utterances]}).cast_column("audio", datasets.Audio())
    ds = ds.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    (out / "data").mkdir(parents=True)
    ds.to_parquet(out / "data" / "train-00000-of-00001.parquet")
    return out


def padded(batches, lengths) -> tuple[float, float]:
    """Padding fraction, and the largest padded batch in seconds."""
    real = sum(lengths[i] for b in batches for i in b)
    cells = [max(lengths[i] for i in b) * len(b) for b in batches]
    return 1 - real / sum(cells), max(cells) / SAMPLE_RATE


def ours(lengths, cap: float, epoch: int = 0) -> list[list[int]]:
    sampler = LengthBucketBatchSampler(lengths, cap, seed=0)
    sampler.set_epoch(epoch)
    return list(sampler)


def lhotse_sampler(utterances, cap: float):
    from lhotse import CutSet, MonoCut, Recording
    from lhotse.audio import AudioSource
    from lhotse.dataset import DynamicBucketingSampler

    cuts = CutSet.from_cuts(
        MonoCut(u.id, 0.0, u.num_samples / SAMPLE_RATE, 0, recording=Recording(
            u.id, [AudioSource("file", [0], str(u.path))], SAMPLE_RATE, u.num_samples, u.num_samples / SAMPLE_RATE))
        for u in utterances)
    return DynamicBucketingSampler(cuts, max_duration=cap, shuffle=True, seed=0, num_buckets=10)


def lhotse_batches(sampler, index: dict[str, int]) -> list[list[int]]:
    return [[index[c.id] for c in batch] for batch in sampler]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `wavadapt demo` folder")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds of audio per batch")
    parser.add_argument("--passes", type=int, default=1, help="epochs per setting; the best one counts")
    args = parser.parse_args()
    utterances = filter_by_length(open_corpus(args.demo / "corpus", "train", "nl"), max_seconds=args.cap).kept
    seconds = sum(u.num_samples for u in utterances) / SAMPLE_RATE
    print(f"real Dutch train split: {len(utterances)} utterances, {seconds / 60:.1f} min, Ogg Vorbis")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards, _ = write_shards(utterances, tmp / "wds", "train", per_shard=200)
        write_shar(utterances, tmp / "shar" / "train", per_shard=200)
        stores = {
            "files": utterances,
            "WebDataset shards, indexed": open_corpus(tmp / "wds", "train", "nl"),
            "Lhotse Shar (FLAC)": open_corpus(tmp / "shar", "train", "nl"),
            "Parquet (HF datasets)": open_corpus(write_parquet(utterances, tmp / "parquet"), "train", "nl"),
        }
        print(f"\nthroughput: audio seconds per wall second, best of {args.passes} epoch(s)")
        print(f"{'source':<30}{'0 workers':>11}{'2 workers':>11}")
        base = None
        for name, found in [*stores.items(), ("WebDataset shards, streamed", None)]:
            speeds = []
            for workers in (0, 2):
                runs = [streamed_speed([str(s) for s in shards], workers, args.cap) if found is None
                        else indexed_speed(filter_by_length(found).kept, workers, args.cap) for _ in range(args.passes)]
                speeds.append(max(runs))
            base = base or speeds
            print(f"{name:<30}{speeds[0]:>10.0f}x{speeds[1]:>10.0f}x   ({speeds[0] / base[0]:.2f}x / "
                  f"{speeds[1] / base[1]:.2f}x of the files)")

    lengths = [u.num_samples for u in utterances]
    index = {u.id: i for i, u in enumerate(utterances)}
    print(f"\nbucketing at {args.cap:g} s per batch (wavadapt: padded seconds; Lhotse: summed durations)")
    print(f"{'sampler':<34}{'padding':>9}{'batches':>9}{'largest padded':>16}{'batches/s':>11}{'exact resume':>14}")
    start = time.perf_counter()
    mine = ours(lengths, args.cap)
    rate = len(mine) / (time.perf_counter() - start)
    sampler = LengthBucketBatchSampler(lengths, args.cap, seed=0)  # resume: a fresh sampler at the same epoch
    resumed = list(sampler)[len(mine) // 2:] == mine[len(mine) // 2:]
    fraction, largest = padded(mine, lengths)
    print(f"{'wavadapt LengthBucketBatchSampler':<34}{fraction:>9.1%}{len(mine):>9}{largest:>15.1f}s{rate:>11.0f}"
          f"{'yes' if resumed else 'no':>14}")

    start = time.perf_counter()
    theirs = lhotse_batches(lhotse_sampler(utterances, args.cap), index)
    rate = len(theirs) / (time.perf_counter() - start)
    first = lhotse_sampler(utterances, args.cap)
    batches = iter(first)
    for _ in range(len(theirs) // 2):  # half an epoch, then its state saved
        next(batches)
    state = first.state_dict()
    again = lhotse_sampler(utterances, args.cap)
    again.load_state_dict(state)
    resumed = lhotse_batches(again, index) == theirs[len(theirs) // 2:]
    fraction, largest = padded(theirs, lengths)
    print(f"{'Lhotse DynamicBucketingSampler':<34}{fraction:>9.1%}{len(theirs):>9}{largest:>15.1f}s{rate:>11.0f}"
          f"{'yes' if resumed else 'no':>14}")
    shuffled = np.random.default_rng(0).permutation(len(lengths)).tolist()  # no bucketing, the same padded cap
    random_batches = pack(shuffled, lengths, int(args.cap * SAMPLE_RATE))
    fraction, largest = padded(random_batches, lengths)
    print(f"{'no bucketing (random order)':<34}{fraction:>9.1%}{len(random_batches):>9}{largest:>15.1f}s")


if __name__ == "__main__":
    main()
