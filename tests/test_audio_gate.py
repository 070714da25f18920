"""Property: whatever bytes sit under an audio file name, the audio gate raises only AudioError.

Random bytes, random small headers of the formats soundfile reads (RIFF/WAVE with any field values, FLAC,
Ogg, mp3 frame syncs, AIFF) and real encoded files with damaged headers or cut short, followed by random
payloads, under every audio suffix, through each entry point that opens audio, with and without an explicit
raw format.
"""

import io
import struct

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wavadapt.data.audio import RawFormat, audio_info, decode, read_audio
from wavadapt.errors import AudioError, WavadaptError

SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".raw", ".pcm", ".opus", "")
u16, u32 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)


@st.composite
def riff_wave(draw) -> bytes:
    """A RIFF/WAVE header with every field drawn (absurd rates, channel counts, sizes included)."""
    fields = (draw(u32), draw(u16), draw(u16), draw(u32), draw(u32), draw(u16), draw(u16), draw(u32))
    riff_size, fmt_tag, channels, rate, byte_rate, align, bits, data_size = fields
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt " + struct.pack("<I", 16)
            + struct.pack("<HHIIHH", fmt_tag, channels, rate, byte_rate, align, bits)
            + b"data" + struct.pack("<I", data_size))


@st.composite
def flac(draw) -> bytes:
    """fLaC + a STREAMINFO block of random bytes (rate, channels, total samples all random)."""
    return b"fLaC" + bytes([draw(st.integers(0, 255))]) + b"\x00\x00\x22" + draw(st.binary(min_size=34, max_size=34))


def _encoded(format: str, subtype: str | None, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(rate // 10) / rate
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=format, subtype=subtype)
    return buffer.getvalue()


VALID = [_encoded("WAV", "PCM_16"), _encoded("WAV", "FLOAT"), _encoded("FLAC", None), _encoded("OGG", "VORBIS"),
         _encoded("MP3", None), _encoded("AIFF", "PCM_24", 8000)]


@st.composite
def damaged(draw) -> bytes:
    """A real encoded file with bytes of its first 64 overwritten (header fields: rates, sizes, counts), maybe
    cut short: the corrupt files that decoders meet in practice."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, min(63, len(data) - 1)))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


MAGIC = st.sampled_from([b"OggS\x00\x02", b"\xff\xfb", b"ID3\x03\x00", b"FORM\x00\x00\x00\x20AIFF", b"RIFF"])
HEADERS = st.one_of(riff_wave(), flac(), damaged(), MAGIC, st.just(b""))
RAW = st.one_of(st.none(), st.sampled_from(["s16le:16000", "u8:8000", "f32be:44100:2", "mulaw:8000", "s24le:1000"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=HEADERS, payload=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES), raw=RAW)
def test_only_audio_errors_escape_the_gate(tmp_path, header, payload, suffix, raw):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(header + payload)
    for open_audio in (audio_info, decode, read_audio):
        try:
            result = open_audio(path, raw=raw)
        except AudioError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            continue
        if open_audio is read_audio:  # what passes the gate is a usable waveform
            assert result.dtype == np.float32 and result.ndim == 1 and result.size and np.isfinite(result).all()


@given(spec=st.text(max_size=20))
def test_a_raw_format_spec_parses_or_is_refused_in_one_line(spec):
    try:
        fmt = RawFormat.parse(spec)
    except WavadaptError as e:  # any other exception fails the test
        assert str(e).startswith("raw format ") and "\n" not in str(e)
    else:
        assert RawFormat.parse(str(fmt)) == fmt
