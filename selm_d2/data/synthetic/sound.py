"""AVS-Synth audio: each category's sound, gated by the seconds its objects sound, mixed with
background noise."""
import numpy as np
import scipy.fft

from .scene import CODED_SOUNDS, SOUND_BANDS_HZ, random_stream

SAMPLE_RATE = 16000
_AM_DEPTH = 0.8  # amplitude modulation of the made-up categories' tones

SOURCE_RMS = 0.05  # nominal level of one sounding object (full scale = 1)
SOURCE_GAIN_DB = 3.0  # per-object level jitter, +-
ONSET_RAMP_S = 0.02  # raised-cosine on/off ramps inside the sounding seconds
PEAK_LIMIT = 0.99


def _sine(cycles):
    """sin(2 pi cycles), float32. The phase (in cycles, float64) is reduced to [-0.5, 0.5]
    first, so a float32 sine (faster than float64) stays accurate."""
    return np.sin((cycles - np.rint(cycles)).astype(np.float32) * np.float32(2 * np.pi))


def _engine(rng, t, band):
    # Low harmonic rumble with a fast amplitude flutter.
    f0 = rng.uniform(60.0, 70.0)
    ks = [k for k in range(1, 20) if band[0] + 15 <= k * f0 <= band[1] - 15]
    wave = sum(rng.uniform(0.5, 1.0) * _sine(k * f0 * t + rng.random()) for k in ks)
    return wave * (1.0 + 0.6 * _sine(rng.uniform(7.0, 12.0) * t))


def _drum(rng, t, band):
    # Noise hits with exponential decay (band-limited afterwards).
    period = 1.0 / rng.uniform(2.5, 4.5)
    env = np.exp(-((t + rng.uniform(0, period)) % period) / rng.uniform(0.06, 0.12))
    return rng.standard_normal(t.shape, dtype=np.float32) * env


def _bell(rng, t, band):
    # Inharmonic partials, re-struck periodically.
    f1 = rng.uniform(1250.0, 1300.0)
    period = rng.uniform(0.45, 0.7)
    env = np.exp(-((t + rng.uniform(0, period)) % period) / 0.3)
    wave = sum(w * _sine(f1 * r * t) for r, w in ((1.0, 1.0), (1.12, 0.6), (1.26, 0.4)))
    return wave * env


def _siren(rng, t, band):
    # Tone sweeping sinusoidally across the band: f(t) = fc + dev sin(2 pi fs t).
    fc, dev = 0.5 * (band[0] + band[1]), 0.38 * (band[1] - band[0])
    fs = rng.uniform(0.5, 1.2)
    return _sine(fc * t - dev / (2 * np.pi * fs) * _sine(fs * t + 0.25))


def _bird(rng, t, band):
    # Short Hann-windowed chirps, up or down across the band.
    width = band[1] - band[0]
    fa, fb = band[0] + 0.15 * width, band[1] - 0.15 * width
    if rng.random() < 0.5:
        fa, fb = fb, fa
    period, dur = 1.0 / rng.uniform(5.0, 8.0), rng.uniform(0.05, 0.08)
    tau = (t + rng.uniform(0, period)) % period
    wave = np.zeros(t.shape, np.float32)
    chirping = tau < dur
    tau = tau[chirping]
    window = _sine(tau / (2 * dur)) ** 2  # Hann over the chirp
    wave[chirping] = window * _sine(fa * tau + (fb - fa) * tau * tau / (2 * dur))
    return wave


def _whistle(rng, t, band):
    # Steady high tone with a 60 Hz vibrato.
    f, fv = rng.uniform(5700.0, 6500.0), rng.uniform(4.0, 7.0)
    return _sine(f * t - 60.0 / (2 * np.pi * fv) * _sine(fv * t + 0.25))


_SOUNDS = {"engine": _engine, "drum": _drum, "bell": _bell, "siren": _siren, "bird": _bird,
           "whistle": _whistle}


def _tone_pair(rng, t, tones, am_rate):
    # A coded category: two steady tones (+-1% jitter, random phases), amplitude-modulated at
    # am_rate Hz when it is not 0; narrow already, so no band-pass.
    wave = sum(_sine(f * rng.uniform(0.99, 1.01) * t + rng.random()) for f in tones)
    if am_rate:
        wave = wave * (1.0 + _AM_DEPTH * _sine(am_rate * t + rng.random()))
    return wave


def _gate(sounding):
    """float32 [T, SAMPLE_RATE], one row per second: 1 in sounding seconds, with
    raised-cosine on/off ramps that stay inside the sounding seconds (so silent seconds
    hold no energy of the object)."""
    gate = np.repeat(sounding.astype(np.float32)[:, None], SAMPLE_RATE, axis=1)
    n = int(ONSET_RAMP_S * SAMPLE_RATE)
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)).astype(np.float32)
    before = np.concatenate([[True], sounding[:-1]])
    after = np.concatenate([sounding[1:], [True]])
    gate[sounding & ~before, :n] = ramp
    gate[sounding & ~after, SAMPLE_RATE - n:] = ramp[::-1]
    return gate


def _band_pass(wave, band):
    """Brick-wall band-pass of a float32 waveform [n] (float32 FFT: fast, and ample
    precision for 16-bit output)."""
    spectrum = scipy.fft.rfft(wave)
    freqs = np.fft.rfftfreq(len(wave), 1.0 / SAMPLE_RATE)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0.0
    return scipy.fft.irfft(spectrum, len(wave))


def render_audio(scene):
    """The clip's soundtrack before mixing.

    Returns:
        signal: float32 [T * 16000], the sum of the sounding objects' sounds (each its
            category's sound, only during its sounding seconds).
        noise: float32 [T * 16000], white noise at ``scene.snr_db`` below the mean signal
            power of the seconds where something sounds (silent clip: below SOURCE_RMS**2).
    """
    rng = random_stream(scene, 2)
    num_seconds = scene.num_frames
    # Time [T, SAMPLE_RATE], one row per second, so sounding seconds are row selections.
    t = np.arange(num_seconds * SAMPLE_RATE).reshape(num_seconds, SAMPLE_RATE) / SAMPLE_RATE
    signal = np.zeros(t.shape, np.float32)
    active = np.zeros(num_seconds, dtype=bool)
    for obj in scene.objects:
        on = obj.sounding
        if not on.any():
            continue
        name = scene.categories[obj.category]
        wave = np.zeros(t.shape, np.float32)
        # Synthesised only where the object sounds: the gate is zero elsewhere.
        if name in _SOUNDS:
            band = SOUND_BANDS_HZ[name]
            wave[on] = _SOUNDS[name](rng, t[on], band) * _gate(on)[on]
            wave = _band_pass(wave.ravel(), band).reshape(t.shape)
        else:
            wave[on] = _tone_pair(rng, t[on], *CODED_SOUNDS[name]) * _gate(on)[on]
        gain = SOURCE_RMS * 10.0 ** (rng.uniform(-SOURCE_GAIN_DB, SOURCE_GAIN_DB) / 20.0)
        signal += wave * np.float32(gain / np.sqrt(np.mean(np.square(wave[on], dtype=np.float64))))
        active |= on
    signal_power = (np.mean(np.square(signal[active], dtype=np.float64)) if active.any()
                    else SOURCE_RMS ** 2)
    noise = rng.standard_normal(signal.size, dtype=np.float32)
    noise *= np.float32(np.sqrt(signal_power / 10.0 ** (scene.snr_db / 10.0)
                                / np.mean(np.square(noise, dtype=np.float64))))
    return signal.ravel(), noise


def mix_audio(signal, noise):
    """signal + noise, scaled down as a whole (SNR kept) when it would clip."""
    mix = signal + noise
    peak = np.abs(mix).max()
    return mix * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else mix
