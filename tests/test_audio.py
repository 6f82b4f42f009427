"""Tests of the VGGish audio front-end (selm_d2/data/audio.py).

The product is compared with AVSBench's front-end, torchvggish's ``waveform_to_examples``:
resampling by resampy itself (``resampy.resample(x, rate, 16000)``, its current default
filter) followed by a deliberately plain re-statement of ``mel_features.log_mel_spectrogram``
written below (per-frame loop, full complex FFT, mel triangles built bin by bin), on files
written in real formats with soundfile. Nothing here imports the product's constants.
"""
import functools
import logging
import math
import pickle

import numpy as np
import pytest
import resampy
import soundfile as sf
import torch

from selm_d2.data.audio import (
    AudioError,
    load_audio_examples,
    log_mel_spectrogram,
    silent_examples,
    waveform_to_examples,
)

RATES = [8000, 16000, 22050, 32000, 44100, 48000]
DURATION = 2.2  # seconds: two whole 0.96 s examples and a dropped partial one


# ----------------------------------------------------------------------------- reference
def _ref_mel(hz):
    return 1127.0 * math.log(1.0 + hz / 700.0)


def _ref_band_edges_mel():
    low, high = _ref_mel(125.0), _ref_mel(7500.0)
    return [low + (high - low) * k / 65.0 for k in range(66)]


@functools.lru_cache(maxsize=None)
def _ref_mel_weights():
    """[257, 64]: FFT bin b (b * 31.25 Hz at 16 kHz / 512) -> 64 HTK triangles, no DC."""
    edges = _ref_band_edges_mel()
    weights = np.zeros((257, 64))
    for b in range(1, 257):
        m = _ref_mel(b * 8000.0 / 256.0)
        for band in range(64):
            low, center, high = edges[band], edges[band + 1], edges[band + 2]
            if low < m <= center:
                weights[b, band] = (m - low) / (center - low)
            elif center < m < high:
                weights[b, band] = (high - m) / (high - center)
    return weights


def _ref_examples_16k(x):
    """Published pipeline on 16 kHz mono float64 samples -> [N, 96, 64]."""
    window = np.array([0.5 - 0.5 * math.cos(2.0 * math.pi * n / 400.0) for n in range(400)])
    num_frames = 1 + (len(x) - 400) // 160
    rows = []
    for t in range(num_frames):
        padded = np.zeros(512)
        padded[:400] = x[t * 160: t * 160 + 400] * window
        magnitude = np.abs(np.fft.fft(padded))[:257]
        rows.append(np.log(magnitude @ _ref_mel_weights() + 0.01))
    log_mel = np.array(rows)
    return np.array([log_mel[k * 96:(k + 1) * 96] for k in range(num_frames // 96)])


def _ref_examples_file(path):
    """vggish_input.waveform_to_examples of the decoded file."""
    info = sf.info(path)
    if info.subtype in ("PCM_16", "PCM_U8"):  # how vggish_input.wavfile_to_examples reads
        data = sf.read(path, dtype="int16", always_2d=True)[0] / 32768.0
    else:  # 24-bit and float files at full precision (wavfile_to_examples would cut to 16 bit)
        data = sf.read(path, dtype="float64", always_2d=True)[0]
    x = data.mean(axis=1)
    if info.samplerate != 16000:
        x = resampy.resample(x, info.samplerate, 16000)
    return _ref_examples_16k(x)


# ----------------------------------------------------------------------------- signals
def _signal(kind, rate, duration=DURATION, seed=0):
    t = np.arange(int(round(rate * duration))) / rate
    if kind == "tone":
        return 0.4 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3000.0 * t)
    if kind == "noise":
        return np.clip(0.2 * np.random.RandomState(seed).randn(t.size), -0.99, 0.99)
    if kind == "chirp":  # linear sweep 100 Hz -> 0.45 * rate (at most 7 kHz)
        f0, f1 = 100.0, min(7000.0, 0.45 * rate)
        return 0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * duration)))
    raise ValueError(kind)


def _write(path, data, rate, subtype="PCM_16"):
    sf.write(str(path), data, rate, subtype=subtype)
    return str(path)


def _mix(rate, channels):
    """Chirp + tone + noise: energy in every mel band, lower-level content between."""
    data = _signal("chirp", rate) + 0.3 * _signal("tone", rate) + 0.2 * _signal("noise", rate)
    if channels == 2:
        data = np.stack([data, 0.5 * _signal("noise", rate, seed=1)], axis=1)
    return 0.6 * data


def _product(path, num_frames, **kwargs):
    out = load_audio_examples(path, num_frames, **kwargs)
    assert out.dtype == torch.float32 and out.shape == (num_frames, 1, 96, 64)
    return out[:, 0].numpy()


# ----------------------------------------------------------------------------- reference match
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("resampler", ["resampy", "polyphase"])
def test_matches_reference(tmp_path, resampler, rate, channels, subtype):
    """Both resamplers equal torchvggish's front-end with resampy to 1e-4 (max abs)."""
    path = _write(tmp_path / "a.wav", _mix(rate, channels), rate, subtype)
    ref = _ref_examples_file(path)
    assert ref.shape == (2, 96, 64)
    np.testing.assert_allclose(_product(path, 2, resampler=resampler), ref, rtol=0, atol=1e-4)


def _mel_energy(examples):
    """Linear mel magnitudes [frames, 64] without the 0.01 log offset, minus the first and
    last 3 frames, where a tone's abrupt start and end splatter over all bands."""
    return np.exp(np.asarray(examples, dtype=np.float64).reshape(-1, 64)[3:-3]) - 0.01


def _tone(freq, rate):
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(DURATION * rate)) / rate)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_preserves_content(tmp_path, rate):
    """A tone recorded at `rate` gives the mel energies of the same tone made at 16 kHz, to
    -60 dB of its peak. 1 kHz, so that the images an 8 kHz -> 16 kHz upsampler leaves (at
    7 kHz) are far into the stop band of the anti-imaging filter."""
    native = _mel_energy(waveform_to_examples(_tone(1000.0, 16000), 16000))
    resampled = _mel_energy(_product(_write(tmp_path / "a.wav", _tone(1000.0, rate), rate,
                                            "FLOAT"), 2))
    assert np.abs(resampled - native).max() < 1e-3 * native.max()


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_resampling_rejects_aliases(tmp_path, rate):
    """Content above 8 kHz must vanish, not fold back into the top mel bands: an 8.6 kHz tone
    (alias: 7.4 kHz) stays 80 dB below a 7.4 kHz tone of the same amplitude."""
    in_band = _mel_energy(waveform_to_examples(_tone(7400.0, 16000), 16000))
    path = _write(tmp_path / "a.wav", _tone(8600.0, rate), rate, "FLOAT")
    assert _mel_energy(_product(path, 2)).max() < 1e-4 * in_band.max()


# ----------------------------------------------------------------------------- sanity facts
def test_five_seconds_gives_498_frames_and_5_examples():
    x = _signal("noise", 16000, duration=5.0)
    assert log_mel_spectrogram(x).shape == (498, 64)
    assert waveform_to_examples(x, 16000).shape == (5, 96, 64)
    assert log_mel_spectrogram(np.zeros(399)).shape == (0, 64)
    assert waveform_to_examples(np.zeros(399), 16000).shape == (0, 96, 64)


def test_1khz_tone_peaks_in_its_mel_band(tmp_path):
    t = np.arange(32000) / 16000.0
    path = _write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 1000.0 * t), 16000)
    peak_band = int(_product(path, 2).mean(axis=(0, 1)).argmax())
    centers_hz = [700.0 * (math.exp(m / 1127.0) - 1.0) for m in _ref_band_edges_mel()[1:-1]]
    assert peak_band == int(np.argmin(np.abs(np.array(centers_hz) - 1000.0)))


def test_silence_is_log_offset(tmp_path):
    path = _write(tmp_path / "a.wav", np.zeros(48000), 16000)
    out = load_audio_examples(path, 3)
    assert torch.equal(out, silent_examples(3))
    assert silent_examples(4).shape == (4, 1, 96, 64)
    np.testing.assert_allclose(silent_examples(1).numpy(), math.log(0.01), rtol=1e-7)


# ----------------------------------------------------------------------------- T policies
def test_long_audio_is_trimmed(tmp_path):
    path = _write(tmp_path / "a.wav", _signal("noise", 44100, duration=4.2), 44100)
    full = _product(path, 4)
    np.testing.assert_array_equal(_product(path, 2), full[:2])
    np.testing.assert_allclose(full, _ref_examples_file(path), atol=1e-4)


def test_short_audio_repeat_last_and_zero_pad(tmp_path):
    path = _write(tmp_path / "a.wav", _signal("chirp", 16000, duration=2.5), 16000)
    ref = _ref_examples_file(path)
    repeat = _product(path, 5, short_policy="repeat_last")
    zero = _product(path, 5, short_policy="zero_pad")
    np.testing.assert_allclose(repeat[:2], ref, atol=1e-4)
    np.testing.assert_array_equal(zero[:2], repeat[:2])
    for k in range(2, 5):
        np.testing.assert_array_equal(repeat[k], repeat[1])
    assert not zero[2:].any()


def test_audio_shorter_than_one_example(tmp_path):
    path = _write(tmp_path / "a.wav", _signal("tone", 16000, duration=0.5), 16000)
    assert torch.equal(load_audio_examples(path, 3, "repeat_last"), silent_examples(3))
    assert not load_audio_examples(path, 3, "zero_pad").any()


def truncated_wav(path, kept_seconds, seconds=5.0, rate=16000):
    """A `seconds` s 16-bit mono wav whose samples stop after `kept_seconds`: the bytes after
    are cut off, the header (which still announces `seconds`) is left as written."""
    full = str(path) + ".full.wav"
    sf.write(full, 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(int(seconds * rate)) / rate),
             rate, subtype="PCM_16")
    data = open(full, "rb").read()
    header = len(data) - 2 * int(seconds * rate)
    with open(path, "wb") as f:
        f.write(data[: header + 2 * int(kept_seconds * rate)])
    return str(path)


class _Records(logging.Handler):
    """Records of one logger, whatever its propagation (detectron2's setup_logger turns it off)."""

    def __init__(self, name):
        super().__init__(logging.WARNING)
        self.records, self.logger = [], logging.getLogger(name)

    def emit(self, record):
        self.records.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def test_truncated_wav_follows_short_policy_and_warns_once_per_file(tmp_path):
    path = truncated_wav(tmp_path / "cut.wav", 0.05)
    other = truncated_wav(tmp_path / "cut2.wav", 2.0)
    with _Records("selm_d2.data.audio") as records:
        assert torch.equal(load_audio_examples(path, 5), silent_examples(5))
        assert not load_audio_examples(path, 5, "zero_pad").any()
        two = load_audio_examples(other, 5)  # 2 s: 2 examples, the last one repeated
        assert torch.equal(two[4], two[1]) and not torch.equal(two[1], two[0])
        load_audio_examples(other, 2)  # long enough for 2 frames: nothing to say
    assert len(records) == 2, records
    assert path in records[0] and "0 whole" in records[0] and "0.05 s" in records[0]
    assert other in records[1] and "2 whole" in records[1] and "SHORT_POLICY" in records[1]


def _official_pickle(path, tensor):
    with open(path, "wb") as f:  # how AVSBench preprocess_*.py wrote audio_log_mel/*.pkl
        pickle.dump(tensor, f)
    return str(path)


def test_log_mel_pickle(tmp_path):
    tensor = torch.randn(5, 1, 96, 64, requires_grad=True)
    path = _official_pickle(tmp_path / "clip.pkl", tensor)
    out = load_audio_examples(path, 5)
    assert not out.requires_grad and out.dtype == torch.float32
    assert torch.equal(out, tensor.detach())
    assert torch.equal(load_audio_examples(path, 3), tensor.detach()[:3])
    repeat = load_audio_examples(path, 7, "repeat_last")
    assert torch.equal(repeat[5], tensor.detach()[4]) and torch.equal(repeat[6], tensor.detach()[4])
    assert not load_audio_examples(path, 7, "zero_pad")[5:].any()


@pytest.mark.parametrize("content", [torch.randn(5, 96, 64), torch.randn(5, 1, 64, 96), {"a": 1}])
def test_log_mel_pickle_wrong_content_raises(tmp_path, content):
    path = _official_pickle(tmp_path / "bad.pkl", content)
    with pytest.raises(AudioError, match=r"\[N, 1, 96, 64\]") as excinfo:
        load_audio_examples(path, 5)
    assert path in str(excinfo.value)


# ----------------------------------------------------------------------------- odd formats load
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "PCM_32", "FLOAT"])
def test_sample_formats_load(tmp_path, subtype):
    path = _write(tmp_path / "a.wav", _signal("chirp", 22050), 22050, subtype)
    np.testing.assert_allclose(_product(path, 2), _ref_examples_file(path), atol=1e-4)


def test_six_channels_and_flac_load(tmp_path):
    data = np.stack([_signal("noise", 48000, seed=s) * (s + 1) / 6 for s in range(6)], axis=1)
    path = _write(tmp_path / "a.flac", data, 48000, "PCM_16")
    assert sf.info(path).channels == 6
    out = _product(path, 2)
    np.testing.assert_allclose(out, _ref_examples_file(path), atol=1e-4)
    # pathlib paths are accepted too
    assert np.array_equal(load_audio_examples(tmp_path / "a.flac", 2)[:, 0].numpy(), out)


# ----------------------------------------------------------------------------- bad input
def _raises_naming(path, match=None):
    with pytest.raises(AudioError, match=match) as excinfo:
        load_audio_examples(path, 5)
    assert str(path) in str(excinfo.value)


def test_missing_file(tmp_path):
    _raises_naming(str(tmp_path / "missing.wav"), match="not found")
    _raises_naming(str(tmp_path / "missing.pkl"), match="not found")


def test_corrupt_files(tmp_path):
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.RandomState(0).bytes(4000))
    _raises_naming(str(noise), match="Cannot decode")
    good = _write(tmp_path / "good.wav", _signal("tone", 16000), 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(open(good, "rb").read()[:30])
    _raises_naming(str(truncated), match="Cannot decode")
    bad_pickle = tmp_path / "bad.pkl"
    bad_pickle.write_bytes(b"not a pickle")
    _raises_naming(str(bad_pickle), match="Cannot unpickle")


def test_zero_length_wav(tmp_path):
    _raises_naming(_write(tmp_path / "empty.wav", np.zeros(0), 16000), match="no samples")


def test_nan_samples(tmp_path):
    data = _signal("tone", 16000).astype(np.float32)
    data[1000] = np.nan
    _raises_naming(_write(tmp_path / "nan.wav", data, 16000, "FLOAT"), match="NaN")


def test_bad_arguments(tmp_path):
    path = _write(tmp_path / "a.wav", _signal("tone", 16000), 16000)
    with pytest.raises(ValueError, match="INPUT.AVS.AUDIO.SAMPLE_RATE"):
        load_audio_examples(path, 2, sample_rate=44100)
    with pytest.raises(ValueError, match="INPUT.AVS.AUDIO.SHORT_POLICY"):
        load_audio_examples(path, 2, short_policy="edge")
    with pytest.raises(ValueError, match="num_frames"):
        load_audio_examples(path, 0)
