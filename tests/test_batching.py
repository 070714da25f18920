import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.batching import (
    AudioDataset,
    DataStats,
    LengthBucketBatchSampler,
    collate,
    filter_by_length,
    make_dataloader,
    padding_fraction,
    set_epoch,
    transcribed,
)
from wavadapt.data.corpora import Utterance
from wavadapt.data.text import Vocabulary, normalize_text
from wavadapt.errors import WavadaptError

# 600 utterances of 1-16 s, like a read-speech corpus.
LENGTHS = np.random.default_rng(0).integers(1 * SAMPLE_RATE, 16 * SAMPLE_RATE, 600).tolist()
CAP_SECONDS = 60.0


def random_batches(lengths, cap_seconds, seed=0):
    """Batches of shuffled utterances under the same padded-size cap: the baseline bucketing beats."""
    cap, batches, batch = cap_seconds * SAMPLE_RATE, [], []
    for i in np.random.default_rng(seed).permutation(len(lengths)).tolist():
        if batch and max(lengths[j] for j in [*batch, i]) * (len(batch) + 1) > cap:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch]


def test_sampler_yields_every_index_once_within_the_cap():
    sampler = LengthBucketBatchSampler(LENGTHS, CAP_SECONDS, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert all(max(LENGTHS[i] for i in b) * len(b) <= CAP_SECONDS * SAMPLE_RATE for b in batches)
    assert len(sampler) == len(batches)


def test_sampler_order_depends_on_epoch_and_seed_only():
    a = LengthBucketBatchSampler(LENGTHS, CAP_SECONDS, seed=1)
    b = LengthBucketBatchSampler(LENGTHS, CAP_SECONDS, seed=1)
    epoch0 = list(a)
    assert list(b) == epoch0
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != epoch0
    assert list(LengthBucketBatchSampler(LENGTHS, CAP_SECONDS, seed=2)) != epoch0


def test_sampler_without_shuffle_is_sorted_by_length():
    batches = list(LengthBucketBatchSampler(LENGTHS, CAP_SECONDS, shuffle=False))
    flat = [LENGTHS[i] for b in batches for i in b]
    assert flat == sorted(flat)


@pytest.mark.parametrize("n, replicas", [(600, 3), (599, 4), (5, 4), (2, 3)])
def test_ddp_shards_are_disjoint_equal_and_cover_everything(n, replicas):
    shards = [
        list(LengthBucketBatchSampler(LENGTHS[:n], CAP_SECONDS, seed=3, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert len({len(s) for s in shards}) == 1
    indices = [i for s in shards for b in s for i in b]
    assert set(indices) == set(range(n))
    if n >= replicas:  # enough utterances: nothing repeated (fewer must repeat to give every rank a batch)
        assert len(indices) == n


def test_ddp_drop_last_drops_a_random_remainder():
    def shards(epoch):
        samplers = [
            LengthBucketBatchSampler(LENGTHS, CAP_SECONDS, num_replicas=4, rank=r, drop_last=True) for r in range(4)
        ]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return [list(sampler) for sampler in samplers]

    all_batches = list(LengthBucketBatchSampler(LENGTHS, CAP_SECONDS))
    epoch0 = shards(0)
    assert len({len(s) for s in epoch0}) == 1 and len(epoch0[0]) == len(all_batches) // 4
    indices = [i for s in epoch0 for b in s for i in b]
    assert len(indices) == len(set(indices))
    assert {i for s in shards(1) for b in s for i in b} != set(indices)  # not always the longest dropped


def test_bucketing_pads_far_less_than_random_batching():
    bucketed = LengthBucketBatchSampler(LENGTHS, CAP_SECONDS).padding_fraction
    random = padding_fraction(random_batches(LENGTHS, CAP_SECONDS), LENGTHS)
    assert bucketed < 0.05 and random > 0.3


def test_sampler_rejects_utterances_longer_than_the_cap():
    with pytest.raises(WavadaptError, match="1 utterances are longer than max_seconds_per_batch=10"):
        LengthBucketBatchSampler([SAMPLE_RATE, 11 * SAMPLE_RATE], 10)


# --- dataset and collate on real files


def make_utterances(tmp_path: Path, seconds=(0.3, 0.5, 0.2), texts=("hi there", "ab", "a b a")) -> list[Utterance]:
    rng = np.random.default_rng(0)
    utts = []
    for k, (sec, text) in enumerate(zip(seconds, texts, strict=True)):
        path = tmp_path / f"u{k}.flac"
        sf.write(path, rng.uniform(-0.5, 0.5, int(sec * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
        utts.append(Utterance(f"u{k}", path, text, "en", num_samples=int(sec * SAMPLE_RATE)))
    return utts


def corrupt(tmp_path: Path, name: str) -> Utterance:
    path = tmp_path / f"{name}.flac"
    path.write_bytes(b"definitely not flac" * 20)
    return Utterance(name, path, "hi", "en", num_samples=SAMPLE_RATE // 2)


@pytest.fixture
def vocab(tmp_path) -> Vocabulary:
    return Vocabulary.build(["hi there", "a b"], "en")


def test_collate_pads_without_changing_the_items(tmp_path, vocab):
    dataset = AudioDataset(make_utterances(tmp_path), vocab)
    items = [dataset[i] for i in range(3)]
    batch = collate(items)
    assert batch["ids"] == ["u0", "u1", "u2"] and batch["num_skipped"] == 0
    assert batch["waveforms"].shape == (3, int(0.5 * SAMPLE_RATE))
    for row, item in enumerate(items):
        n, m = len(item["waveform"]), len(item["labels"])
        assert torch.equal(batch["waveforms"][row, :n], item["waveform"])
        assert not batch["waveforms"][row, n:].any()
        assert batch["attention_mask"].dtype == torch.int32
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["waveforms"].shape[1] - n)
        assert torch.equal(batch["labels"][row, :m], item["labels"])
        assert (batch["labels"][row, m:] == -100).all() and batch["label_lengths"][row] == m
    assert batch["padding_fraction"] == pytest.approx(1 - 1.0 / 1.5)


def test_dataset_labels_are_the_normalised_encoded_transcript(tmp_path, vocab):
    utt = make_utterances(tmp_path, (0.2,), ("Hi, THERE!",))[0]
    item = AudioDataset([utt], vocab)[0]
    assert item["labels"].tolist() == vocab.encode(normalize_text("Hi, THERE!", "en"))
    assert vocab.decode(item["labels"].tolist()) == "hi there"
    assert "labels" not in AudioDataset([utt])[0]


def test_dataset_needs_transcripts_for_labels(tmp_path, vocab):
    utt = Utterance("x", tmp_path / "x.flac", None, "en")
    with pytest.raises(WavadaptError, match="1 utterances have no transcript"):
        AudioDataset([utt], vocab)


def test_corrupt_file_is_skipped_counted_and_named(tmp_path, caplog):
    utts = [*make_utterances(tmp_path), corrupt(tmp_path, "bad")]
    dataset = AudioDataset(utts)
    with caplog.at_level(logging.WARNING, logger="wavadapt.data"):
        batch = collate([dataset[i] for i in range(4)])
    assert batch["ids"] == ["u0", "u1", "u2"] and batch["num_skipped"] == 1
    assert dataset.stats.skipped == 1 and dataset.stats.skipped_ids == ["bad"]
    assert "bad.flac" in caplog.text


def test_batch_of_only_bad_files_is_none(tmp_path):
    dataset = AudioDataset([corrupt(tmp_path, "bad1"), corrupt(tmp_path, "bad2")])
    assert collate([dataset[0], dataset[1]]) is None
    stats = DataStats()
    stats.update(None)
    stats.update(collate([AudioDataset(make_utterances(tmp_path))[0], None]))
    assert (stats.skipped_batches, stats.utterances, stats.skipped) == (1, 1, 1)


def test_random_crop_depends_on_seed_epoch_and_index(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 2 * SAMPLE_RATE, dtype=np.float32)  # each sample value says its position
    sf.write(tmp_path / "ramp.wav", ramp, SAMPLE_RATE, subtype="FLOAT")
    utts = [Utterance(f"r{k}", tmp_path / "ramp.wav", None, "en", num_samples=len(ramp)) for k in range(2)]
    crops = AudioDataset(utts, crop_seconds=0.5, seed=0)
    first = crops[0]["waveform"].numpy()
    start = int(np.searchsorted(ramp, first[0]))
    np.testing.assert_array_equal(first, ramp[start : start + SAMPLE_RATE // 2])  # a window of the utterance
    assert np.array_equal(AudioDataset(utts, crop_seconds=0.5, seed=0)[0]["waveform"].numpy(), first)
    assert not np.array_equal(crops[1]["waveform"].numpy(), first)  # another index, another window
    crops.set_epoch(1)
    assert not np.array_equal(crops[0]["waveform"].numpy(), first)
    assert crops.lengths() == [SAMPLE_RATE // 2] * 2


def test_normalize_option_gives_zero_mean_unit_variance(tmp_path):
    x = AudioDataset(make_utterances(tmp_path), normalize=True)[0]["waveform"]
    assert abs(x.mean().item()) < 1e-4 and x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_filter_by_length_fills_unknown_lengths(tmp_path):
    utts = [Utterance(u.id, u.path, u.text, u.language) for u in make_utterances(tmp_path)]
    bad = corrupt(tmp_path, "bad")
    unknown = Utterance("bad-unknown", bad.path, bad.text, bad.language)  # its header must be read, and fails
    kept, unreadable, outside = filter_by_length([*utts, bad, unknown], min_seconds=0.25, max_seconds=0.4)
    assert [u.id for u in kept] == ["u0"] and kept[0].num_samples == int(0.3 * SAMPLE_RATE)
    assert len(outside) == 3 and "bad" in outside  # too long, too short, and the bad file's declared 0.5 s
    assert unreadable == ["bad-unknown"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_batches_every_file_once(tmp_path, vocab, num_workers):
    utts = make_utterances(tmp_path, (0.3, 0.5, 0.2, 0.4, 0.1), ("a", "b", "ab", "ba", "hi"))
    loader = make_dataloader(AudioDataset([*utts, corrupt(tmp_path, "bad")], vocab), 1.0, num_workers=num_workers)
    set_epoch(loader, 1)
    stats = DataStats()
    for batch in loader:
        stats.update(batch)
        assert batch["waveforms"].shape[0] * batch["waveforms"].shape[1] <= SAMPLE_RATE
    assert (stats.utterances, stats.skipped + stats.skipped_batches) == (5, 1)


def test_synthetic_corpus_loads_in_batches(synth_corpus):
    from wavadapt.data.corpora import open_corpus

    for language in ("en", "es"):
        utts, unreadable, outside = filter_by_length(open_corpus(synth_corpus, "train", language), max_seconds=20)
        vocab = Vocabulary.build([u.text for u in utts], language)
        loader = make_dataloader(AudioDataset(utts, vocab), max_seconds_per_batch=20)
        batches = list(loader)
        assert sum(len(b["ids"]) for b in batches) == len(utts) > 0 and unreadable == outside == []
        assert all(b["num_skipped"] == 0 and (b["labels"] != vocab.unk_id).all() for b in batches)


def test_transcribed_skips_foreign_letters_unless_kept_and_counts_what_normalisation_dropped(tmp_path, caplog):
    utts = [Utterance("a", tmp_path / "a.wav", "Twee kaarten & 3 munten", "nl"),
            Utterance("b", tmp_path / "b.wav", "Zij zei Привет", "nl"),
            Utterance("c", tmp_path / "c.wav", "Prijs: 5 ©© ®", "nl"),
            Utterance("d", tmp_path / "d.wav", None, "nl")]
    result = transcribed(utts)
    assert ([u.id for u in result.kept], result.no_transcript, result.foreign) == (["a", "c"], ["d"], ["b"])
    assert result.dropped == {"©": 2, "®": 1}
    assert "b.wav): letters outside the nl alphabet (веипрт)" in caplog.text
    assert [u.id for u in transcribed(utts, keep_foreign=True).kept] == ["a", "b", "c"]


def _seconds_by_language(sampler, lengths, groups) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for batch in sampler._batches:
        for i in batch:
            seconds[groups[i]] = seconds.get(groups[i], 0.0) + lengths[i] / SAMPLE_RATE
    return seconds


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_language_temperature_gives_each_language_its_share_of_the_audio(temperature):
    rng = np.random.default_rng(0)
    groups = ["en"] * 300 + ["es"] * 60 + ["nl"] * 12  # 25 : 5 : 1 utterances
    lengths = rng.integers(SAMPLE_RATE, 4 * SAMPLE_RATE, len(groups)).tolist()
    sampler = LengthBucketBatchSampler(lengths, 20, seed=1, groups=groups, temperature=temperature)
    hours = _seconds_by_language(LengthBucketBatchSampler(lengths, 20, seed=1), lengths, groups)
    got = _seconds_by_language(sampler, lengths, groups)
    weights = {g: h**temperature for g, h in hours.items()}
    total = sum(hours.values())
    for g in hours:  # each share reached, overshot by less than one utterance
        target = weights[g] / sum(weights.values()) * total
        assert target <= got[g] < target + 4
    assert sum(got.values()) == pytest.approx(total, abs=12)
    first = [list(b) for b in sampler._batches]
    sampler.set_epoch(1)
    assert [list(b) for b in sampler._batches] != first  # another draw each epoch
    sampler.set_epoch(0)
    assert [list(b) for b in sampler._batches] == first  # the same draw again: resume repeats it


def test_language_temperature_one_is_the_corpus_as_it_is():
    groups = ["en", "es", "en", "nl"] * 10
    lengths = [SAMPLE_RATE * (1 + i % 3) for i in range(len(groups))]
    plain = LengthBucketBatchSampler(lengths, 8, seed=2)
    weighted = LengthBucketBatchSampler(lengths, 8, seed=2, groups=groups, temperature=1.0)
    assert list(plain) == list(weighted)
    ranks = [LengthBucketBatchSampler(lengths, 8, seed=2, groups=groups, temperature=0.0, num_replicas=2, rank=r)
             for r in (0, 1)]
    assert len(list(ranks[0])) == len(list(ranks[1])) > 0  # ranks step in lockstep
    with pytest.raises(WavadaptError, match="3 languages given for 40"):
        LengthBucketBatchSampler(lengths, 8, groups=groups[:3], temperature=0.5)
