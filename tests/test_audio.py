import numpy as np
import pytest
import soundfile as sf

from wavadapt.data.audio import SAMPLE_RATE, audio_info, normalize_waveform, read_audio
from wavadapt.errors import AudioError, TruncatedAudioError


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("rate, ext", [(22050, "flac"), (48000, "flac"), (48000, "mp3"), (16000, "wav")])
def test_read_audio_resamples_keeping_frequency_and_duration(tmp_path, rate, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone(440.0, 1.5, rate), rate)
    x = read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 1.5 * SAMPLE_RATE) <= 2
    assert peak_hz(x, SAMPLE_RATE) == pytest.approx(440.0, abs=1.0)
    assert np.abs(x).max() == pytest.approx(0.5, abs=0.03)  # no gain change from resampling


def test_read_audio_downmixes_stereo_by_averaging(tmp_path):
    left, right = tone(300.0, 0.5, SAMPLE_RATE), tone(1000.0, 0.5, SAMPLE_RATE)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "stereo.wav"), (left + right) / 2, atol=1e-7)


def test_audio_info_reads_the_header(tmp_path):
    sf.write(tmp_path / "a.flac", np.zeros((24000, 2), np.float32), 48000)
    assert audio_info(tmp_path / "a.flac") == (24000, 48000, 2)


def flac_bytes(tmp_path) -> bytes:
    sf.write(tmp_path / "good.flac", tone(440.0, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    return (tmp_path / "good.flac").read_bytes()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda good: b"not audio at all" * 10, "Format not recognised"),
        (lambda good: good[: len(good) // 2], "lost sync"),  # truncated download
        (None, "no such file"),
    ],
)
def test_undecodable_file_is_an_audio_error_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "broken.flac"
    if damage is not None:
        path.write_bytes(damage(flac_bytes(tmp_path)))
    with pytest.raises(AudioError, match=message) as e:
        read_audio(path)
    assert str(path) in str(e.value)


def test_audio_info_error_names_the_file(tmp_path):
    (tmp_path / "x.flac").write_bytes(b"junk" * 100)
    with pytest.raises(AudioError, match="x.flac: cannot read audio header"):
        audio_info(tmp_path / "x.flac")


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(0, np.float32), "no audio samples"),
        (np.array([0.0, np.nan, 0.1] * 100, np.float32), "NaN or Inf"),
        (np.array([0.0, np.inf, 0.1] * 100, np.float32), "NaN or Inf"),
    ],
)
def test_empty_or_non_finite_audio_is_an_audio_error(tmp_path, samples, message):
    path = tmp_path / "bad.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=message) as e:
        read_audio(path)
    assert str(path) in str(e.value)


def test_normalize_waveform_matches_transformers_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    x = np.random.default_rng(0).normal(0.3, 0.2, 8000).astype(np.float32)
    expected = Wav2Vec2FeatureExtractor(do_normalize=True)(x, sampling_rate=SAMPLE_RATE).input_values[0]
    y = normalize_waveform(x)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert abs(y.mean()) < 1e-5 and y.std() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name,subtype", [("a.wav", "PCM_16"), ("a.wav", "PCM_24"), ("a.wav", "FLOAT"),
                                          ("a.w64", "PCM_16"), ("a.aiff", "PCM_16"), ("a.au", "PCM_16")])
def test_a_file_shorter_than_its_header_declares_is_truncated(tmp_path, name, subtype):
    path = tmp_path / name
    sf.write(path, np.zeros((SAMPLE_RATE, 2), np.float32), SAMPLE_RATE, subtype=subtype)
    assert audio_info(path) == (SAMPLE_RATE, SAMPLE_RATE, 2) and read_audio(path).shape == (SAMPLE_RATE,)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 3 // 4])  # libsndfile alone reads what is left as if it were whole
    for read in (audio_info, read_audio):
        with pytest.raises(TruncatedAudioError, match=rf"^{path}: truncated: its header declares 1.00 s of audio, "
                                                      r"the file holds 0.7\d s$"):
            read(path)


def test_a_wav_written_to_a_pipe_has_no_length_and_reads_to_its_end(tmp_path):
    path = tmp_path / "streamed.wav"
    sf.write(path, np.zeros(800, np.float32), SAMPLE_RATE, subtype="PCM_16")
    wav = bytearray(path.read_bytes())
    wav[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # ffmpeg's data size when it cannot seek back
    path.write_bytes(bytes(wav))
    assert read_audio(path).shape == (800,)


def test_a_cut_off_mp3_is_truncated(tmp_path):
    path = tmp_path / "cut.mp3"
    sf.write(path, np.sin(np.arange(3 * SAMPLE_RATE) / 7).astype(np.float32) * 0.3, SAMPLE_RATE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # an interrupted download
    cut = r"truncated: decoded [01]\.\d\d s of the 3\.\d\d s its header declares"
    with pytest.raises(TruncatedAudioError, match=cut):
        read_audio(path)
