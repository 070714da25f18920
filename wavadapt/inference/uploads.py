"""Uploaded audio through the audio gate: size limits first, then ``read_audio``, errors naming the upload."""

import re
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wavadapt.data.audio import SAMPLE_RATE, audio_info, read_audio
from wavadapt.errors import AudioError, WavadaptError


class TooLarge(WavadaptError):
    """An upload over a limit (bytes or seconds of audio); the message names the limit."""


def read_upload(stream: BinaryIO, name: str, max_bytes: int, max_seconds: float) -> np.ndarray:
    """Decode an uploaded file to 16 kHz mono float32; raises TooLarge or AudioError (naming ``name``, not the
    temporary file libsndfile reads)."""
    suffix = Path(name).suffix
    # The suffix tells headerless PCM from the rest; anything odd is dropped rather than put in a path.
    with tempfile.NamedTemporaryFile(suffix=suffix if re.fullmatch(r"\.\w{1,8}", suffix) else "") as tmp:
        copied = 0
        while chunk := stream.read(1 << 20):
            copied += len(chunk)
            if copied > max_bytes:
                raise TooLarge(f"{name}: over the limit of {max_bytes:,} bytes")
            tmp.write(chunk)
        tmp.flush()
        try:
            frames, rate, _ = audio_info(tmp.name)  # refuses long audio before decoding it
            seconds = frames / rate
            if seconds <= max_seconds:
                audio = read_audio(tmp.name)
                seconds = len(audio) / SAMPLE_RATE  # mp3 headers only estimate their length
        except AudioError as e:
            raise AudioError(str(e).replace(tmp.name, name)) from None
    if seconds > max_seconds:
        raise TooLarge(f"{name}: {seconds:.1f} s of audio; the limit is {max_seconds:g} s")
    return audio

