"""Uploaded audio through the audio gate: size limits first, then ``read_audio``, errors naming the upload."""

import re
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wavadapt.data.audio import SAMPLE_RATE, RawFormat, audio_info, is_headerless, read_audio
from wavadapt.errors import AudioError, WavadaptError


class TooLarge(WavadaptError):
    """An upload over a limit (bytes or seconds of audio); the message names the limit."""


def read_upload(stream: BinaryIO, name: str, max_bytes: int, max_seconds: float, raw_format: str | None = None
                ) -> np.ndarray:
    """Decode an uploaded file to 16 kHz mono float32 (headerless PCM as ``raw_format`` says); raises TooLarge or
    AudioError (naming ``name``, not the temporary file libsndfile reads, and saying how an API client sends the
    format of headerless PCM)."""
    suffix = Path(name).suffix
    if is_headerless(name) and not raw_format:
        raise AudioError(f"{name}: headerless PCM ({suffix}) has no header to give its rate and encoding: send them "
                         "in the form field raw_format (e.g. raw_format=s16le:16000)")
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
            raw = RawFormat.parse(raw_format) if raw_format and is_headerless(tmp.name) else None
            frames, rate, _ = audio_info(tmp.name, raw)  # refuses long audio before decoding it
            seconds = frames / rate
            if seconds <= max_seconds:
                audio = read_audio(tmp.name, raw=raw)
                seconds = len(audio) / SAMPLE_RATE  # mp3 headers only estimate their length
        except WavadaptError as e:
            raise AudioError(str(e).replace(tmp.name, name)) from None
    if seconds > max_seconds:
        raise TooLarge(f"{name}: {seconds:.1f} s of audio; the limit is {max_seconds:g} s")
    return audio

