"""A fixed set of real-world bad audio files and transcripts, written by the tests beside good ones.

Each bad file is made the way it happens in practice (a headerless recorder dump, a cut-off download, a text
file saved as .wav, a dangling link ...). ``UNUSABLE`` files cannot be decoded: every command names them and
goes on. ``WARNED`` files decode but are suspect: check names them, transcription still runs on them.
"""

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from wavadapt.data.audio import SAMPLE_RATE

# file name -> what `check` calls it (the kind of its first problem)
UNUSABLE = {
    "headerless.raw": "unreadable",  # 16 kHz s16le PCM without a header, as recorders and pocketsphinx write
    "directory.wav": "unreadable",  # a directory named like audio
    "corrupt.wav": "unreadable",  # random bytes
    "truncated.flac": "unreadable",  # the first half of a FLAC file: its header still declares the whole
    "cut-copy.wav": "truncated",  # a WAV cut to its first 3,000 bytes: libsndfile alone would read what is left
    "huge-header.wav": "truncated",  # a WAV header declaring 2^31 bytes of samples over 1 KB of them
    "zero-length.wav": "unreadable",
    "text.wav": "unreadable",  # a text file saved as .wav
    "dangling.wav": "unreadable",  # a symbolic link to nothing
    "missing.wav": "unreadable",  # listed in the manifest, not on disk
    "bad-rate.wav": "unreadable",  # a WAV header whose sample rate is 0
    "nan.wav": "non-finite",
    "inf.wav": "non-finite",
    "header-only.wav": "empty",  # a valid WAV header and no samples
}
WARNED = {
    "silent.wav": "silent",
    "clipped.wav": "clipped",
    "ten-minutes.wav": "too long",
    "100-samples.wav": "too short",
    "8khz.wav": "sample rate",
    "stereo.wav": "stereo",
}
# Good audio under a bad transcript: manifest rows (id -> text); the audio is a copy of a good file.
BAD_TRANSCRIPTS = {"text-missing": "", "text-blank": "   ", "text-punctuation": "... --- !!!"}
TRANSCRIPT_KINDS = {"text-missing": "no transcript", "text-blank": "no transcript",
                    "text-punctuation": "empty transcript"}


def write_bad_files(out: Path, speech: np.ndarray) -> dict[str, Path]:
    """Write every file of UNUSABLE and WARNED into ``out`` from ``speech`` (16 kHz float32); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    speech = speech.astype(np.float32)
    paths = {name: out / name for name in (*UNUSABLE, *WARNED)}
    (np.clip(speech, -1, 1) * 32767).astype("<i2").tofile(paths["headerless.raw"])
    paths["directory.wav"].mkdir(exist_ok=True)
    paths["corrupt.wav"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    sf.write(out / "whole.flac", speech, SAMPLE_RATE)
    flac = (out / "whole.flac").read_bytes()
    paths["truncated.flac"].write_bytes(flac[: len(flac) // 2])
    (out / "whole.flac").unlink()
    sf.write(out / "whole.wav", speech, SAMPLE_RATE, subtype="PCM_16")
    wav = (out / "whole.wav").read_bytes()
    paths["cut-copy.wav"].write_bytes(wav[:3000])
    paths["huge-header.wav"].write_bytes(wav[:40] + struct.pack("<I", 2**31) + wav[44 : 44 + 1024])
    (out / "whole.wav").unlink()
    paths["zero-length.wav"].write_bytes(b"")
    paths["text.wav"].write_text("This is not audio, just text someone saved with the wrong name.\n" * 20)
    if not paths["dangling.wav"].is_symlink():
        os.symlink(out / "no-such-target.wav", paths["dangling.wav"])
    sf.write(paths["bad-rate.wav"], speech, SAMPLE_RATE, subtype="PCM_16")
    wav = bytearray(paths["bad-rate.wav"].read_bytes())
    wav[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    paths["bad-rate.wav"].write_bytes(bytes(wav))
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = speech.copy()
        x[len(x) // 2 :: 97] = value
        sf.write(paths[name], x, SAMPLE_RATE, subtype="FLOAT")
    sf.write(paths["header-only.wav"], np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
    sf.write(paths["silent.wav"], np.zeros_like(speech), SAMPLE_RATE, subtype="PCM_16")
    sf.write(paths["clipped.wav"], np.clip(speech * 1000, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    repeats = int(np.ceil(600 * SAMPLE_RATE / len(speech)))
    sf.write(paths["ten-minutes.wav"], np.tile(speech, repeats)[: 600 * SAMPLE_RATE], SAMPLE_RATE, subtype="PCM_16")
    sf.write(paths["100-samples.wav"], speech[:100], SAMPLE_RATE, subtype="PCM_16")
    sf.write(paths["8khz.wav"], speech[::2], SAMPLE_RATE // 2, subtype="PCM_16")
    sf.write(paths["stereo.wav"], np.stack([speech, speech[::-1]], axis=1), SAMPLE_RATE, subtype="PCM_16")
    return paths
