"""The audio gate: decode files into the 16 kHz mono float32 waveforms every wav2vec 2.0 style model expects.

Every function here that opens a file raises only :class:`AudioError` (naming the file and the cause),
whatever soundfile, soxr, numpy or the OS throws, so that one bad file can cost a caller one line.

Headerless PCM (``.raw``, ``.pcm``) carries no rate or encoding, so it is read only with an explicit
:class:`RawFormat` (``s16le:16000``), never guessed. Audio inside another file (a tar shard's member, a dataset's
cell, a span of a recording: a :class:`~wavadapt.data.records.Record`) passes the same checks, named by the record.
"""

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from wavadapt.data.records import Record
from wavadapt.errors import AudioError, TruncatedAudioError, WavadaptError

SAMPLE_RATE = 16000
HEADERLESS_SUFFIXES = (".raw", ".pcm")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf")
"""What a folder of audio files (or a tar shard) is searched for: the containers soundfile reads, by their usual
names."""
# Rates outside this range are corrupt headers, not recordings; resampling them could need absurd memory.
MIN_RATE, MAX_RATE = 1000, 768000
# A header declaring more than this (4 h at 48 kHz stereo) is corrupt: decoding would allocate it all.
MAX_SAMPLES = 4 * 3600 * 48000 * 2
# A compressed file that decodes to less than this share of the length its header gives was cut off (an mp3's
# header length can be an estimate, hence not 1).
DECODED_SHARE = 0.95
UNKNOWN_SIZE = 0xFFFFFFFF  # what streaming writers (ffmpeg to a pipe) put in a size field they cannot know

# --raw-format encodings -> soundfile subtypes (the names sox and ffmpeg use for the same layouts).
_RAW_SUBTYPES = {
    "s8": "PCM_S8", "u8": "PCM_U8", "s16": "PCM_16", "s24": "PCM_24", "s32": "PCM_32",
    "f32": "FLOAT", "f64": "DOUBLE", "mulaw": "ULAW", "alaw": "ALAW",
}  # fmt: skip
_ENDIAN = {"le": "LITTLE", "be": "BIG"}

AudioSource = str | Path | Record
"""An audio file, or audio inside something else."""


@dataclass(frozen=True)
class RawFormat:
    """How to read headerless PCM: encoding (``s16``), endianness, sample rate and channels."""

    encoding: str
    endian: str
    sample_rate: int
    channels: int = 1

    @classmethod
    def parse(cls, spec: str) -> "RawFormat":
        """``ENC[le|be]:RATE[:CHANNELS]``, e.g. ``s16le:16000``, ``f32be:8000:2``, ``mulaw:8000``."""
        parts = spec.strip().lower().split(":")
        usage = ("expected ENCODING:RATE[:CHANNELS] such as s16le:16000 "
                 f"(encodings: {', '.join(sorted(_RAW_SUBTYPES))}, with le/be after the multi-byte ones)")
        if len(parts) not in (2, 3) or not all(p.isascii() and p.isdigit() for p in parts[1:]):
            raise WavadaptError(f"raw format {spec!r}: {usage}")
        name, endian = parts[0], "le"
        if name[-2:] in _ENDIAN and name[:-2] in _RAW_SUBTYPES:
            name, endian = name[:-2], name[-2:]
        rate, channels = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        if name not in _RAW_SUBTYPES or not MIN_RATE <= rate <= MAX_RATE or not 1 <= channels <= 64:
            raise WavadaptError(f"raw format {spec!r}: {usage}, a rate in {MIN_RATE}..{MAX_RATE} Hz, 1..64 channels")
        return cls(name, endian, rate, channels)

    def __str__(self) -> str:
        return f"{self.encoding}{self.endian}:{self.sample_rate}:{self.channels}"

    def soundfile_args(self) -> dict:
        return {"format": "RAW", "subtype": _RAW_SUBTYPES[self.encoding], "endian": _ENDIAN[self.endian],
                "samplerate": self.sample_rate, "channels": self.channels}


def is_headerless(path: str | Path) -> bool:
    """Whether ``path``'s name says headerless PCM, which only an explicit RawFormat can read."""
    return Path(path).suffix.lower() in HEADERLESS_SUFFIXES


def as_raw_format(raw: "RawFormat | str | None") -> RawFormat | None:
    return RawFormat.parse(raw) if isinstance(raw, str) else raw


def audio_info(path: AudioSource, raw: RawFormat | str | None = None) -> tuple[int, int, int]:
    """Return ``(frames, sample_rate, channels)`` from the file header without decoding the audio.

    For mp3 the frame count comes from the Xing/LAME header when present (as in Common Voice); a
    variable-bitrate file without one gets an estimate, so treat mp3 counts as approximate.
    """
    with _open(path, raw) as f:
        _, frames = _span_frames(path, f)
        return frames, f.samplerate, f.channels


def decode(path: AudioSource, raw: RawFormat | str | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` as stored: ``(samples (frames, channels) float32, sample_rate)``, unchecked."""
    with _open(path, raw) as f:  # refuses corrupt headers before anything is allocated
        start, frames = _span_frames(path, f)
        try:
            if start:
                f.seek(start)
            x = f.read(frames, dtype="float32", always_2d=True)
        except Exception as e:  # the gate (MemoryError included: a header can lie)
            raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from None
        if len(x) < DECODED_SHARE * frames:  # a cut-off mp3 decodes without error
            raise TruncatedAudioError(f"{path}: truncated: decoded {_span(len(x), f.samplerate)} of the "
                                      f"{_span(frames, f.samplerate)} its header declares")
        return x, f.samplerate


def _span_frames(source: AudioSource, f: sf.SoundFile) -> tuple[int, int]:
    """The first frame and the frame count of the utterance: the whole file, or a record's span of it."""
    span = source.span if isinstance(source, Record) else None
    if span is None:
        return 0, f.frames
    start, count = round(span[0] * f.samplerate), round(span[1] * f.samplerate)
    if start < 0 or count <= 0 or start + count > f.frames + f.samplerate // 100:  # 10 ms of rounding allowed
        raise AudioError(f"{source}: the span lies outside the audio ({_span(f.frames, f.samplerate)})")
    return start, min(count, f.frames - start)


def read_audio(path: AudioSource, sample_rate: int = SAMPLE_RATE, raw: RawFormat | str | None = None) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sample_rate``.

    Channels are averaged; other rates are resampled with soxr ("HQ"). Raises AudioError naming
    the file when it cannot be decoded, holds no samples, or holds NaN/Inf samples.
    """
    x, rate = decode(path, raw)
    if x.size == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if rate != sample_rate:
        try:
            x = soxr.resample(x, rate, sample_rate, quality="HQ")
        except Exception as e:  # the gate
            raise AudioError(f"{path}: cannot resample {rate} Hz to {sample_rate} Hz ({_reason(e)})") from None
        if x.size == 0:
            raise AudioError(f"{path}: no audio samples at {sample_rate} Hz")
        if not np.isfinite(x).all():  # float samples near the float32 limit overflow in the filter
            raise AudioError(f"{path}: samples too large to resample (float audio should lie in [-1, 1])")
    return np.ascontiguousarray(x, dtype=np.float32)


def normalize_waveform(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance, as Wav2Vec2FeatureExtractor(do_normalize=True) does.

    Use it when the backbone was pre-trained on normalised audio: its preprocessor_config.json
    ``do_normalize`` (fairseq's ``task.normalize``) says so, e.g. wav2vec2-large-lv60 and XLS-R.
    """
    x = x.astype(np.float32, copy=False)
    # The 1e-7 matches transformers, so features agree bit-for-bit with its extractor.
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def _open(path: AudioSource, raw: RawFormat | str | None) -> sf.SoundFile:
    """The file opened by soundfile (with ``raw``'s layout for headerless PCM), its header checked."""
    raw = as_raw_format(raw)
    file = _open_record(path) if isinstance(path, Record) else None
    if file is None:
        _require_audio_file(path, raw)
    try:
        f = sf.SoundFile(file or str(path), **(raw.soundfile_args() if raw is not None else {}))
    except Exception as e:  # the gate: libsndfile, OS and argument errors alike
        raise AudioError(f"{path}: cannot read audio header ({_reason(e)})") from None
    try:
        _check_header(path, f.frames, f.samplerate, f.channels)
        _check_pcm_length(path, f, file)
    except AudioError:
        f.close()
        raise
    return f


def _open_record(record: Record) -> io.BufferedIOBase:
    try:
        file = record.open()
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
    except Exception as e:  # the gate: a missing shard, a URL that fails, a table without the row
        raise AudioError(f"{record}: cannot read ({_reason(e)})") from None
    if size == 0:
        raise AudioError(f"{record}: empty (0 bytes)")
    return file


def _require_audio_file(path: str | Path, raw: RawFormat | None) -> None:
    """What libsndfile would only call a "System error" or "Format not recognised", in plain words."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise AudioError(f"{path}: broken symbolic link (to {os.readlink(p)})")
    if p.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not p.exists():
        raise AudioError(f"{path}: no such file")
    if not p.is_file():
        raise AudioError(f"{path}: not a regular file")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{path}: permission denied")
    if p.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if raw is None and is_headerless(p):
        raise AudioError(f"{path}: headerless PCM ({p.suffix}): the file has no header to give its rate and "
                         "encoding; say them with --raw-format (e.g. s16le:16000) or a raw_format manifest column")


def _check_header(path: str | Path, frames: int, rate: int, channels: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{path}: implausible sample rate {rate} Hz in its header (corrupt file?)")
    if frames * channels > MAX_SAMPLES:
        raise AudioError(f"{path}: its header declares {frames * channels} samples "
                         f"({frames / rate / 3600:.1f} h): corrupt, or too long to decode at once")


def _check_pcm_length(path: AudioSource, f: sf.SoundFile, file: io.BufferedIOBase | None) -> None:
    """TruncatedAudioError unless a WAV, W64, AIFF or AU file holds all the audio its header declares: libsndfile
    reads a cut-off one up to its end without a word, as if it were whole."""
    if f.format not in ("WAV", "WAVEX", "W64", "AIFF", "AU"):
        return
    if file is None:
        with open(path, "rb") as own:
            chunk, size = _pcm_data_chunk(own, f.format), os.path.getsize(path)
    else:
        position = file.tell()
        file.seek(0)
        chunk, size = _pcm_data_chunk(file, f.format), file.seek(0, os.SEEK_END)
        file.seek(position)
    if chunk is None:
        return
    declared, start = chunk
    available = size - start
    if available < declared:
        frame_bytes = available / f.frames if f.frames else 0  # libsndfile counts the frames the file holds
        held, said = ((_span(available / frame_bytes, f.samplerate), _span(declared / frame_bytes, f.samplerate))
                      if frame_bytes else (f"{available} bytes", f"{declared} bytes"))
        raise TruncatedAudioError(f"{path}: truncated: its header declares {said} of audio, the file holds {held}")


def _pcm_data_chunk(file: io.BufferedIOBase, container: str) -> tuple[int, int] | None:
    """The declared byte size of a WAV / W64 / AIFF / AU file's audio data and where it starts; None when the
    header gives no size (a streaming writer's, RF64's)."""
    head = file.read(12)
    if head[:4] == b".snd":  # AU: data offset and size in the header itself
        offset, size = struct.unpack(">II", head[4:12])
        return None if size == UNKNOWN_SIZE else (size, offset)
    if head[:4] == b"riff" and container == "W64":  # Sony Wave64: 16-byte chunk ids, 8-byte sizes with header
        file.seek(40)
        while len(header := file.read(24)) == 24:
            size = struct.unpack("<Q", header[16:])[0]
            if header[:4] == b"data":
                return size - 24, file.tell()
            file.seek(size - 24 + (-size % 8), os.SEEK_CUR)  # chunks are aligned to 8 bytes
        return None
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        order, data_id, extra = "<" if head[:4] == b"RIFF" else ">", b"data", 0
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        order, data_id, extra = ">", b"SSND", 8  # SSND starts with its offset and block size
    else:
        return None
    while len(header := file.read(8)) == 8:
        chunk_id, size = header[:4], struct.unpack(order + "I", header[4:])[0]
        if chunk_id == data_id:
            if size == UNKNOWN_SIZE:
                return None
            skip = struct.unpack(">I", file.read(4))[0] if extra else 0
            return size - extra - skip, file.tell() + (4 + skip if extra else 0)
        file.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _span(frames: float, rate: int) -> str:
    seconds = frames / rate
    return f"{seconds:.2f} s" if seconds < 600 else f"{seconds / 3600:.1f} h"


def _reason(e: BaseException) -> str:
    """libsndfile's own words ("Format not recognised") without repeating the file name."""
    if isinstance(e, MemoryError):
        return "out of memory: the header declares more audio than fits"
    text = str(getattr(e, "error_string", None) or e).rstrip(".") or type(e).__name__
    return text.removeprefix("Error : ").strip()
