"""Decode audio files into the 16 kHz mono float32 waveforms every wav2vec 2.0 style model expects."""

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from wavadapt.errors import AudioError

SAMPLE_RATE = 16000


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """Return ``(frames, sample_rate, channels)`` from the file header without decoding the audio.

    For mp3 the frame count comes from the Xing/LAME header when present (as in Common Voice); a
    variable-bitrate file without one gets an estimate, so treat mp3 counts as approximate.
    """
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError) as e:
        raise AudioError(f"{path}: cannot read audio header ({_reason(path, e)})") from None
    return info.frames, info.samplerate, info.channels


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sample_rate``.

    Channels are averaged; other rates are resampled with soxr ("HQ"). Raises AudioError naming
    the file when it cannot be decoded, holds no samples, or holds NaN/Inf samples.
    """
    x, rate = decode(path)
    if x.size == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if rate != sample_rate:
        x = soxr.resample(x, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` as stored: ``(samples (frames, channels) float32, sample_rate)``, unchecked."""
    try:
        return sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(path, e)})") from None


def normalize_waveform(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance, as Wav2Vec2FeatureExtractor(do_normalize=True) does.

    Use it when the backbone was pre-trained on normalised audio: its preprocessor_config.json
    ``do_normalize`` (fairseq's ``task.normalize``) says so, e.g. wav2vec2-large-lv60 and XLS-R.
    """
    x = x.astype(np.float32, copy=False)
    # The 1e-7 matches transformers, so features agree bit-for-bit with its extractor.
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def _reason(path: str | Path, e: Exception) -> str:
    """libsndfile's own words ("Format not recognised") without repeating the file name."""
    if not Path(path).is_file():
        return "no such file"  # libsndfile only says "System error"
    return str(getattr(e, "error_string", None) or e).rstrip(".")
