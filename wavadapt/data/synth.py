"""A small multilingual speech corpus spoken by espeak-ng, in the real LibriSpeech and Common Voice layouts.

Real sentences (fortune files, see :mod:`wavadapt.data.sentences`) are spoken by a few synthetic
speakers per language (espeak-ng voice variants with their own pitch and rate), with light noise.
English is written as LibriSpeech (16 kHz flac + .trans.txt), the other languages as Common Voice
(48 kHz mp3 + tsv files), so the same readers that load the real corpora load this one.

Splits: "pretrain" (unlabeled audio for self-supervised pre-training), "train" (the small labeled
fine-tuning set), "dev", "test". Each sentence belongs to one split only. Speakers are shared by all
splits (utterances go to speakers round-robin): with a handful of synthetic voices, speaker-disjoint
splits would leave one voice per split. Splits are filled test first, so the test set of a seed
does not change when the training minutes do.
"""

import io
import json
import math
import shutil
import subprocess
import zlib
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from hashlib import sha512
from importlib.metadata import version
from itertools import islice
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from wavadapt.data.sentences import load_sentences
from wavadapt.data.text import normalize_text
from wavadapt.errors import WavadaptError

SPLITS = ("pretrain", "train", "dev", "test")
LABELED_SPLITS = ("train", "dev", "test")
DEFAULT_MINUTES = {"pretrain": 10.0, "train": 3.0, "dev": 1.0, "test": 1.0}
VOICES = {"en": "en-us", "es": "es", "de": "de", "it": "it"}
# espeak-ng voice variants, alternating male and female; more speakers reuse them with other pitch/rate.
VARIANTS = ("m1", "f2", "m3", "f1", "m2", "f3", "m4", "f4", "m5", "f5", "m6", "m7")
LIBRISPEECH_RATE = 16000
COMMONVOICE_RATE = 48000
COMMONVOICE_COLUMNS = (
    "client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"
)  # fmt: skip
_WORKERS = 2  # espeak-ng and the encoders run outside the GIL: one thread per core


class SynthError(WavadaptError):
    """The synthetic corpus cannot be made (espeak-ng missing, unknown language, too few sentences)."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice variant with its own pitch (0-99) and rate (words/min)."""

    id: int  # LibriSpeech speaker id
    voice: str  # e.g. "en-us+f2"
    pitch: int
    rate: int
    gender: str

    @property
    def client_id(self) -> str:
        """Common Voice's anonymised speaker hash (128 hex digits)."""
        return sha512(f"{self.voice}-{self.id}".encode()).hexdigest()


def synthesize_corpus(
    out_dir: Path,
    languages: Sequence[str] = ("en", "es", "de", "it"),
    *,
    minutes: Mapping[str, float] | None = None,
    speakers: int = 4,
    noise: float = 0.003,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Speak real sentences with espeak-ng into ``out_dir/<language>/`` and describe them in corpus.json.

    ``minutes`` gives the minutes of audio per split (keys from "pretrain", "train", "dev", "test";
    missing ones get none; default 10, 3, 1, 1). ``noise`` is the typical RMS of added white
    or pink noise (full scale 1.0; espeak-ng speaks at about 0.08 RMS): each utterance draws its level
    within a factor of two of it, so SNRs spread over roughly 20-35 dB; 0 adds none. The same seed
    gives byte-identical files. Returns the corpus.json content.
    """
    minutes = dict(DEFAULT_MINUTES if minutes is None else minutes)
    if unknown := set(minutes) - set(SPLITS):
        raise SynthError(f"unknown splits {sorted(unknown)}: use {', '.join(SPLITS)}")
    if any(m < 0 for m in minutes.values()) or speakers < 1 or noise < 0 or seed < 0:
        raise SynthError("minutes, noise and seed must be >= 0 and speakers >= 1")
    if shutil.which("espeak-ng") is None:
        raise SynthError("espeak-ng not found: install it with `apt-get install espeak-ng`")
    for language in languages:
        if language not in VOICES:
            raise SynthError(f"no espeak-ng voice configured for {language!r} (known: {', '.join(VOICES)})")
    out_dir = Path(out_dir)
    for language in languages:
        if (out_dir / language).exists() and any((out_dir / language).iterdir()):
            raise SynthError(f"{out_dir / language} already exists: remove it or choose another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 60 * sum(minutes.values()) * len(languages)
    corpus = {
        "wavadapt_version": version("wavadapt"),
        "seed": seed,
        "speakers": speakers,
        "noise": noise,
        "minutes": minutes,
        "languages": {},
    }
    with (
        ThreadPoolExecutor(_WORKERS) as pool,
        tqdm(total=total, unit="s audio", unit_scale=True, desc="synth", disable=None if progress else True) as bar,
    ):
        for language in languages:
            writer = _LibriSpeechWriter if language == "en" else _CommonVoiceWriter
            corpus["languages"][language] = _synthesize_language(
                writer(out_dir, language, seed), minutes, speakers, noise, seed, pool, bar
            )
    (out_dir / "corpus.json").write_text(json.dumps(corpus, indent=2, ensure_ascii=False) + "\n")
    return corpus


def make_speakers(language: str, n: int, seed: int) -> list[Speaker]:
    """``n`` speakers for ``language``: voice variants in turn, pitch and rate drawn from the seed."""
    rng = np.random.default_rng([seed, _stable_id(language), 1])
    ids = rng.choice(np.arange(10, 10000), size=n, replace=False)
    return [
        Speaker(
            id=int(ids[k]),
            voice=f"{VOICES[language]}+{VARIANTS[k % len(VARIANTS)]}",
            pitch=int(rng.integers(35, 66)),
            rate=int(rng.integers(145, 186)),
            gender="male" if VARIANTS[k % len(VARIANTS)][0] == "m" else "female",
        )
        for k in range(n)
    ]


def speak(text: str, speaker: Speaker) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng: ``(float32 mono samples, sample rate)`` (espeak-ng's 22050 Hz)."""
    command = ["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.rate)]
    # Text on stdin (-b 1: UTF-8), so a sentence starting with "-" is not taken for an option.
    result = subprocess.run([*command, "-b", "1", "--stdout"], input=text.encode(), capture_output=True)
    if result.returncode != 0 or len(result.stdout) <= 44:
        reason = result.stderr.decode(errors="replace").strip() or "no audio"
        raise SynthError(f"{' '.join(command)} failed on {text!r}: {reason}")
    # espeak-ng cannot seek back into stdout, so the WAV header holds a dummy length; libsndfile
    # reads up to the end of the data anyway.
    x, rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return x, rate


def add_noise(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add white or pink (1/f power) noise with RMS drawn log-uniformly in [level/2, 2*level]."""
    if rng.random() < 0.5:
        noise = rng.standard_normal(len(x))
    else:  # shape white noise in the frequency domain; a power-of-two FFT, as odd lengths are slow
        n = 1 << (len(x) - 1).bit_length()
        spectrum = np.fft.rfft(rng.standard_normal(n))
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, n)[: len(x)]
    rms = level * math.exp(rng.uniform(-math.log(2), math.log(2)))
    noise *= rms / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32)


def _synthesize_language(writer, minutes, n_speakers, noise, seed, pool, bar) -> dict:
    """Fill the splits of one language from its shuffled sentences, test first; return its corpus.json entry."""
    language = writer.language
    sentences = load_sentences(language)
    lang_id = _stable_id(language)
    order = np.random.default_rng([seed, lang_id]).permutation(len(sentences))
    speakers = make_speakers(language, n_speakers, seed)
    # A sentence's speaker and noise depend only on its place in the shuffled order, so sentences are
    # rendered ahead in parallel while the splits are filled strictly in order.
    jobs = ((sentences[i], speakers[j % n_speakers], [seed, lang_id, j]) for j, i in enumerate(order))
    rendered = _ordered_map(pool, lambda job: (*job[:2], *writer.render(*job, noise)), jobs, 4 * _WORKERS)
    splits = {}
    try:
        for split in reversed(SPLITS):
            bar.set_description(f"{language} {split}")
            target, seconds, count = 60 * minutes.get(split, 0.0), 0.0, 0
            while seconds < target:
                text, speaker, data, duration = next(rendered, (None,) * 4)
                if data is None:
                    raise SynthError(f"{language}: only {len(sentences)} sentences, too few for the requested minutes")
                writer.add(split, text if split in LABELED_SPLITS else None, speaker, data)
                seconds, count = seconds + duration, count + 1
                bar.update(duration)
            splits[split] = {"utterances": count, "seconds": round(seconds, 3), "labeled": split in LABELED_SPLITS}
    finally:
        rendered.close()
    return writer.finish(splits, speakers)


def _ordered_map(pool: ThreadPoolExecutor, fn, items: Iterator, window: int) -> Generator:
    """``map(fn, items)`` on ``pool`` with at most ``window`` items in flight; results in input order."""
    futures = deque(pool.submit(fn, item) for item in islice(items, window))
    try:
        while futures:
            result = futures.popleft().result()
            futures.extend(pool.submit(fn, item) for item in islice(items, 1))
            yield result
    finally:
        for future in futures:  # closed early: the splits are full
            future.cancel()


class _Writer:
    """Renders utterances to encoded bytes (in worker threads) and files them in a corpus layout."""

    layout: str
    sample_rate: int
    format: tuple[str, str]  # soundfile (format, subtype)

    def __init__(self, out_dir: Path, language: str, seed: int):
        self.out_dir, self.language = out_dir, language

    def render(self, text: str, speaker: Speaker, entropy: list[int], noise: float) -> tuple[bytes, float]:
        """Speak, resample, add noise, encode: ``(file bytes, seconds)``."""
        x, rate = speak(text, speaker)
        x = soxr.resample(x, rate, self.sample_rate)
        if noise > 0:
            x = add_noise(x, noise, np.random.default_rng(entropy))
        buffer = io.BytesIO()
        sf.write(buffer, x, self.sample_rate, format=self.format[0], subtype=self.format[1])
        return buffer.getvalue(), len(x) / self.sample_rate


class _LibriSpeechWriter(_Writer):
    """``en/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac`` + ``.trans.txt``."""

    layout, sample_rate, format = "librispeech", LIBRISPEECH_RATE, ("FLAC", "PCM_16")

    def __init__(self, out_dir: Path, language: str, seed: int):
        super().__init__(out_dir, language, seed)
        self.root = out_dir / language / "LibriSpeech"
        # One chapter per (split, speaker), numbered like LibriSpeech's: distinct ids drawn from the seed.
        self.chapter_ids = np.random.default_rng([seed, _stable_id(language), 2]).permutation(np.arange(100, 200000))
        self.chapters: dict[tuple[str, Speaker], tuple[int, list[tuple[str, str | None]]]] = {}

    def add(self, split: str, text: str | None, speaker: Speaker, data: bytes) -> None:
        key = (split, speaker)
        if key not in self.chapters:
            self.chapters[key] = (int(self.chapter_ids[len(self.chapters)]), [])
        chapter, utts = self.chapters[key]
        utt_id = f"{speaker.id}-{chapter}-{len(utts):04d}"
        directory = self.root / split / str(speaker.id) / str(chapter)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{utt_id}.flac").write_bytes(data)
        utts.append((utt_id, text))

    def finish(self, splits: dict, speakers: list[Speaker]) -> dict:
        for (split, speaker), (chapter, utts) in self.chapters.items():
            if split in LABELED_SPLITS:  # pretrain is unlabeled: audio only
                directory = self.root / split / str(speaker.id) / str(chapter)
                lines = "".join(f"{u} {normalize_text(text, self.language).upper()}\n" for u, text in utts)
                (directory / f"{speaker.id}-{chapter}.trans.txt").write_text(lines)
        for split, info in splits.items():
            info["path"] = f"{self.language}/LibriSpeech/{split}"
        return _entry(self, splits, speakers, root=f"{self.language}/LibriSpeech")


class _CommonVoiceWriter(_Writer):
    """``<lang>/clips/common_voice_<lang>_<n>.mp3`` + ``<split>.tsv`` with Common Voice's columns."""

    layout, sample_rate, format = "commonvoice", COMMONVOICE_RATE, ("MP3", "MPEG_LAYER_III")

    def __init__(self, out_dir: Path, language: str, seed: int):
        super().__init__(out_dir, language, seed)
        self.clips = out_dir / language / "clips"
        self.rows: dict[str, list[tuple[str, ...]]] = {split: [] for split in SPLITS}
        self.count = 0

    def add(self, split: str, text: str | None, speaker: Speaker, data: bytes) -> None:
        self.clips.mkdir(parents=True, exist_ok=True)
        self.count += 1
        name = f"common_voice_{self.language}_{10_000_000 + self.count}.mp3"
        (self.clips / name).write_bytes(data)
        # Sentences keep their case and punctuation, as in Common Voice; pretrain has none (unlabeled).
        row = (speaker.client_id, name, text or "", "2", "0", "", speaker.gender, "", self.language, "")
        self.rows[split].append(row)

    def finish(self, splits: dict, speakers: list[Speaker]) -> dict:
        for split in SPLITS:
            lines = ["\t".join(COMMONVOICE_COLUMNS)] + ["\t".join(row) for row in self.rows[split]]
            (self.out_dir / self.language / f"{split}.tsv").write_text("".join(line + "\n" for line in lines))
            if split in splits:
                splits[split]["path"] = f"{self.language}/{split}.tsv"
        return _entry(self, splits, speakers, root=self.language, clips=f"{self.language}/clips")


def _entry(writer: _Writer, splits: dict, speakers: list[Speaker], **paths: str) -> dict:
    """The corpus.json entry of one language; paths are relative to the corpus directory."""
    return {
        "layout": writer.layout,
        **paths,
        "sample_rate": writer.sample_rate,
        "voice": VOICES[writer.language],
        "speakers": [asdict(s) for s in speakers],
        "splits": {split: splits[split] for split in SPLITS},
    }


def _stable_id(name: str) -> int:
    """A seed component for ``name`` that does not change between runs (unlike ``hash``)."""
    return zlib.crc32(name.encode())
