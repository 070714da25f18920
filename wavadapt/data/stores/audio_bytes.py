"""An utterance's audio as the bytes of an audio file, for the shard writers: as stored where it can be, FLAC where
it cannot (a span of a longer recording, headerless PCM)."""

import io

import soundfile as sf

from wavadapt.data.audio import audio_info, decode
from wavadapt.data.records import Record
from wavadapt.data.utterance import Utterance
from wavadapt.errors import AudioError


def encoded_audio(u: Utterance) -> tuple[bytes, str]:
    """``(bytes, extension)`` of ``u``'s audio; AudioError (naming it) when the gate refuses it."""
    source = u.audio
    audio_info(source, u.raw_format)  # the gate: what cannot be read is not written
    try:
        if isinstance(source, Record) and source.span is not None or u.raw_format is not None:
            x, rate = decode(source, u.raw_format)
            buffer = io.BytesIO()
            sf.write(buffer, x, rate, format="FLAC")
            data = buffer.getvalue()
        else:
            with source.open() if isinstance(source, Record) else open(source, "rb") as f:
                data = f.read()
        with sf.SoundFile(io.BytesIO(data)) as f:  # the extension names the container
            return data, {"WAVEX": "wav", "AIF": "aiff"}.get(f.format, f.format.lower())
    except (OSError, ValueError, RuntimeError) as e:
        raise AudioError(f"{source}: cannot read ({e})") from None
