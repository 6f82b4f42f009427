"""VGGish audio front-end: wav/flac (or AVSBench log-mel pickles) -> log-mel examples.

The pretrained VGGish weights expect exactly the input pipeline of the reference release
(``vggish_input.py`` / ``mel_features.py`` / ``vggish_params.py``), so this module follows it:

1. decode with soundfile to float in [-1, 1] (any PCM width or float), average the channels;
2. resample to 16 kHz with resampy's default ``kaiser_best`` filter, as the reference does
   (``resampy.resample(x, rate, 16000)``); the "polyphase" resampler is a faster option
   that applies the same resampy filter with scipy's polyphase filter bank (see `_resample`);
3. STFT: 400-sample (25 ms) periodic-Hann frames every 160 samples (10 ms), no padding,
   FFT length 512, magnitude (not power);
4. 64 HTK-mel triangular bands 125-7500 Hz (DC bin excluded), ``log(mel + 0.01)``;
5. non-overlapping examples of 96 frames (0.96 s); a partial trailing example is dropped.

A 5 s clip thus has 498 STFT frames and yields 5 examples covering 0-4.8 s.

The reference reads files as int16 / 32768; soundfile's float decoding equals that for 16-bit
files (all AVSBench audio) and keeps the full precision of 24-bit and float files.
"""
import functools
import logging
import math
import os
import pickle

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from ..utils import ConfigError, DataError

__all__ = [
    "AudioError",
    "RESAMPLERS",
    "SHORT_POLICIES",
    "load_audio_examples",
    "silent_examples",
    "waveform_to_examples",
    "log_mel_spectrogram",
    "min_audio_seconds",
    "num_whole_examples",
    "read_waveform",
]

# vggish_params of the reference release.
VGGISH_SAMPLE_RATE = 16000
STFT_WINDOW = 400  # 25 ms at 16 kHz
STFT_HOP = 160  # 10 ms at 16 kHz
FFT_LENGTH = 512  # smallest power of two >= STFT_WINDOW
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01  # keeps log() finite on silence
SILENCE_LOG_MEL = math.log(LOG_OFFSET)  # every log-mel value of digital silence
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames; examples do not overlap

SHORT_POLICIES = ("repeat_last", "zero_pad")
# "resampy": the reference's resampler itself; "polyphase": resampy's filter applied by scipy's
# polyphase filter bank, faster and equal to it up to float rounding.
RESAMPLERS = ("resampy", "polyphase")
RESAMPY_FILTER = "kaiser_best"  # resampy.resample's default, used by the reference

logger = logging.getLogger(__name__)
_warned_short = set()  # files already reported as shorter than their clip (in this process)


class AudioError(DataError):
    """An audio file that is missing, unreadable or holds unusable samples."""


def _hertz_to_mel(hertz):
    # HTK mel scale.
    return 1127.0 * np.log(1.0 + np.asarray(hertz, dtype=np.float64) / 700.0)


def _read_only(array):
    # Cached arrays are shared by every call: make accidental in-place edits fail loudly.
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=None)
def _periodic_hann(length):
    """Periodic Hann window [length]: one full cosine period of `length` samples."""
    return _read_only(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length))


@functools.lru_cache(maxsize=None)
def _mel_matrix(sample_rate):
    """Matrix [FFT_LENGTH // 2 + 1, NUM_MEL_BINS] mapping STFT magnitudes to mel bands.

    Triangles are linear in mel between equally spaced mel edges, the DC bin gets no weight.
    """
    num_bins = FFT_LENGTH // 2 + 1
    bin_mel = _hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))[:, None]
    edges = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return _read_only(weights)


@functools.lru_cache(maxsize=None)
def _polyphase_filter(up, down):
    """resampy's ``kaiser_best`` low-pass as an FIR [2 * half + 1] for ``resample_poly``.

    resampy stores one wing of the filter as a table, `per_zero` entries per zero crossing
    (at the lower of the two rates), and evaluates it with linear interpolation. For an output
    sample whose time falls a fraction f (in input samples) after input sample n, the tap
    on input n - i sits at table position ``scale * f * per_zero + i * int(scale * per_zero)``
    (right wing: 1 - f and n + 1 + i): whole input samples advance by a whole number of table
    entries, and a wing ends one step before the table does. Those positions depend only on
    the output's phase, so they form a polyphase filter sampled at the rate up * input
    (tap j = phase + i * up).
    """
    from resampy.filters import get_filter  # resampy imports numba: load it only when used

    table, per_zero, _ = get_filter(RESAMPY_FILTER)
    scale = min(1.0, up / down)  # cut-off relative to the input rate; the gain follows it
    step = int(scale * per_zero)
    half = (len(table) // step + 1) * up
    j = np.arange(-half, half + 1)
    # left wing (j >= 0): phase j % up, then j // up whole samples; right wing (j < 0):
    # phase in 1..up, then the remaining whole samples.
    phase = np.where(j >= 0, j % up, (-j - 1) % up + 1)
    whole = np.where(j >= 0, j // up, (-j - 1) // up)
    offset = scale * per_zero * phase / up
    taps = scale * np.interp(offset + whole * step, np.arange(len(table)), table)
    # resampy stops a wing before a tap whose whole-entry offset is within `step` of the end.
    taps[whole >= (len(table) - np.floor(offset)) // step] = 0.0
    return _read_only(taps / up)  # resample_poly multiplies by `up`


def _resampled_length(num_samples, sample_rate):
    """Samples at 16 kHz of `num_samples` at `sample_rate`, rounded down as resampy does."""
    return int(num_samples * float(VGGISH_SAMPLE_RATE) / float(sample_rate))


def _resample(waveform, sample_rate, resampler):
    """float64 [num_samples] at `sample_rate` -> float64 [_resampled_length(num_samples)]."""
    num_out = _resampled_length(waveform.shape[0], sample_rate)
    if num_out < STFT_WINDOW:
        return np.zeros(0)  # no STFT frame either way; resampy rejects inputs this short
    if resampler == "resampy":
        import resampy  # here, not at the top: it imports numba and compiles on first use

        return resampy.resample(waveform, sample_rate, VGGISH_SAMPLE_RATE, filter=RESAMPY_FILTER)
    gcd = math.gcd(int(sample_rate), VGGISH_SAMPLE_RATE)
    up, down = VGGISH_SAMPLE_RATE // gcd, int(sample_rate) // gcd
    return resample_poly(waveform, up, down, window=_polyphase_filter(up, down))[:num_out]


def num_whole_examples(num_samples, sample_rate):
    """Whole 0.96 s examples that `num_samples` samples at `sample_rate` give (header only)."""
    if sample_rate != VGGISH_SAMPLE_RATE:
        num_samples = _resampled_length(num_samples, sample_rate)
    if num_samples < STFT_WINDOW:
        return 0
    return (1 + (num_samples - STFT_WINDOW) // STFT_HOP) // EXAMPLE_FRAMES


def min_audio_seconds(num_frames):
    """Shortest audio that gives `num_frames` whole examples: T * 0.96 s + 15 ms."""
    return ((num_frames * EXAMPLE_FRAMES - 1) * STFT_HOP + STFT_WINDOW) / VGGISH_SAMPLE_RATE


def log_mel_spectrogram(waveform):
    """Log-mel spectrogram of 16 kHz mono audio.

    Args:
        waveform: float array [num_samples] at 16 kHz.
    Returns:
        float64 array [num_frames, 64], num_frames = 1 + (num_samples - 400) // 160
        (0 when the audio is shorter than one 400-sample window).
    """
    waveform = np.asarray(waveform, dtype=np.float64)
    if waveform.shape[0] < STFT_WINDOW:
        return np.zeros((0, NUM_MEL_BINS))
    frames = np.lib.stride_tricks.sliding_window_view(waveform, STFT_WINDOW)[::STFT_HOP]
    magnitude = np.abs(np.fft.rfft(frames * _periodic_hann(STFT_WINDOW), FFT_LENGTH))
    return np.log(magnitude @ _mel_matrix(VGGISH_SAMPLE_RATE) + LOG_OFFSET)


def waveform_to_examples(waveform, sample_rate, max_examples=None, resampler="resampy"):
    """VGGish log-mel examples of an in-memory waveform (the reference's function of that name).

    Args:
        waveform: finite float array [num_samples] or [num_samples, channels] in [-1, 1];
            channels are averaged.
        sample_rate: rate of `waveform` in Hz; resampled to 16 kHz when different.
        max_examples: keep at most this many leading examples (skips the STFT of the rest).
        resampler: "resampy" (the reference) or "polyphase" (faster), see RESAMPLERS.
    Returns:
        float32 array [N, 96, 64]; N = whole 0.96 s examples (a partial last one is dropped).
    """
    if resampler not in RESAMPLERS:
        raise ConfigError("INPUT.AVS.AUDIO.RESAMPLER is {!r}; expected one of {}.".format(
            resampler, RESAMPLERS))
    waveform = np.asarray(waveform)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1, dtype=np.float64)
    waveform = np.asarray(waveform, dtype=np.float64)
    if sample_rate != VGGISH_SAMPLE_RATE:
        waveform = _resample(waveform, sample_rate, resampler)
    if max_examples is not None:
        # STFT frames are local: samples past the last kept frame cannot change the result.
        needed = (max_examples * EXAMPLE_FRAMES - 1) * STFT_HOP + STFT_WINDOW
        waveform = waveform[: max(needed, 0)]
    log_mel = log_mel_spectrogram(waveform)
    num_examples = log_mel.shape[0] // EXAMPLE_FRAMES
    if max_examples is not None:
        num_examples = min(num_examples, max_examples)
    examples = log_mel[: num_examples * EXAMPLE_FRAMES]
    return examples.reshape(num_examples, EXAMPLE_FRAMES, NUM_MEL_BINS).astype(np.float32)


def read_waveform(path):
    """Decode a sound file: (float32 [num_samples, channels] in [-1, 1], sample rate).

    Raises AudioError naming the file when it is missing, undecodable, empty or non-finite.
    """
    if not os.path.isfile(path):
        raise AudioError(
            "Audio file not found: {}. Check the dataset path and that the dataset's audio "
            "folder was extracted.".format(path)
        )
    try:
        # soundfile scales every PCM width (u8, 16, 24, 32 bit) and float files to [-1, 1].
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except RuntimeError as e:  # LibsndfileError subclasses RuntimeError on every soundfile version
        raise AudioError(
            "Cannot decode audio file {} ({}). Replace it with a valid wav/flac file, e.g. "
            "re-extract it from the video at 16 kHz.".format(path, e)
        ) from e
    if data.shape[0] == 0:
        raise AudioError(
            "Audio file {} holds no samples. Re-extract it from the video, or delete it so the "
            "clip is dropped/regenerated.".format(path)
        )
    if not np.isfinite(data).all():
        raise AudioError(
            "Audio file {} contains NaN or infinite samples. Re-encode it with finite samples "
            "(e.g. 16-bit PCM).".format(path)
        )
    return data, rate


def _read_log_mel_pickle(path):
    """AVSBench precomputed log-mel: a tensor [N, 1, 96, 64] written with ``pickle.dump``.

    Unpickling can run arbitrary code: only read files from a trusted dataset release.
    torch.load cannot read these files (they are plain pickles, not torch archives).
    """
    if not os.path.isfile(path):
        raise AudioError(
            "Log-mel file not found: {}. Check the dataset root, or set "
            "INPUT.AVS.AUDIO.SOURCE to 'wav' to compute log-mels from the audio.".format(path)
        )
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:  # unpickling fails with many exception types
        raise AudioError(
            "Cannot unpickle log-mel file {} ({}: {}). Re-download it, or set "
            "INPUT.AVS.AUDIO.SOURCE to 'wav'.".format(path, type(e).__name__, e)
        ) from e
    expected = (1, EXAMPLE_FRAMES, NUM_MEL_BINS)
    if not isinstance(obj, torch.Tensor) or obj.dim() != 4 or tuple(obj.shape[1:]) != expected \
            or obj.shape[0] == 0:
        if isinstance(obj, torch.Tensor):
            found = "a tensor of shape {}".format(list(obj.shape))
        else:
            found = "a {}".format(type(obj).__name__)
        raise AudioError(
            "Log-mel file {} holds {}; expected a tensor of shape [N, 1, 96, 64] (AVSBench: "
            "[5, 1, 96, 64]). Regenerate it, or set INPUT.AVS.AUDIO.SOURCE to 'wav'.".format(
                path, found)
        )
    # The official files were saved from a tensor with requires_grad=True.
    examples = obj.detach().to(torch.float32)[:, 0].numpy()
    if not np.isfinite(examples).all():
        raise AudioError(
            "Log-mel file {} contains NaN or infinite values. Regenerate it, or set "
            "INPUT.AVS.AUDIO.SOURCE to 'wav'.".format(path)
        )
    return examples


def _fit_examples(examples, num_frames, short_policy):
    """Trim or pad examples [N, 96, 64] to [num_frames, 96, 64] (see load_audio_examples)."""
    count = examples.shape[0]
    if count >= num_frames:
        return examples[:num_frames]
    if short_policy == "zero_pad":
        filler = np.zeros((1, EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=np.float32)
    elif count > 0:
        filler = examples[-1:]
    else:
        filler = np.full((1, EXAMPLE_FRAMES, NUM_MEL_BINS), SILENCE_LOG_MEL, dtype=np.float32)
    return np.concatenate([examples, np.repeat(filler, num_frames - count, axis=0)], axis=0)


def _warn_short_once(path, count, num_frames, short_policy, seconds=None):
    """Log (once per file and process) that a file gives fewer examples than its clip's T."""
    key = os.fspath(path)
    if key in _warned_short:
        return
    _warned_short.add(key)
    length = "" if seconds is None else " ({:.2f} s; {} frames need {:.3f} s)".format(
        seconds, num_frames, min_audio_seconds(num_frames))
    logger.warning(
        "Audio %s gives %d whole 0.96 s example(s) for a %d-frame clip%s: the remaining "
        "frames get INPUT.AVS.AUDIO.SHORT_POLICY %r padding. `python -m "
        "selm_d2.data.check_avsbench <root> --deep` lists every such file.",
        key, count, num_frames, length, short_policy)


def load_audio_examples(path, num_frames, short_policy="repeat_last",
                        sample_rate=VGGISH_SAMPLE_RATE, resampler="resampy"):
    """VGGish log-mel examples of a clip, one per frame (second).

    Args:
        path: wav/flac (anything libsndfile decodes, any rate, any channel count), or an
            AVSBench precomputed log-mel ``.pkl`` ([N, 1, 96, 64], pickled torch tensor).
        num_frames: T, the number of examples to return.
        short_policy: how audio with fewer than T whole examples is padded
            (cfg.INPUT.AVS.AUDIO.SHORT_POLICY):
            "repeat_last": repeat the last example, as the AVSBench S4/MS3 pickles were made;
            "zero_pad": append all-zero log-mel examples, as the official AVSS loader does.
            Audio shorter than one example (0.96 s) has nothing to repeat: "repeat_last" then
            fills with the log-mel of digital silence (see `silent_examples`), "zero_pad"
            with zeros. Such a file is logged (warning) once per file and process.
        sample_rate: the model's audio rate (cfg.INPUT.AVS.AUDIO.SAMPLE_RATE); must be
            16000, the rate the VGGish log-mel parameters are defined for. Files at any other
            rate are resampled to it.
        resampler: "resampy" | "polyphase" (cfg.INPUT.AVS.AUDIO.RESAMPLER), see RESAMPLERS.
    Returns:
        float32 Tensor [T, 1, 96, 64]. Audio longer than T examples is trimmed.
    Raises:
        AudioError: missing, undecodable or empty file, non-finite samples, or a pickle
            of the wrong shape; the message names the file.
    """
    if sample_rate != VGGISH_SAMPLE_RATE:
        raise ConfigError(
            "INPUT.AVS.AUDIO.SAMPLE_RATE is {}, but the VGGish log-mel front-end is defined at "
            "{} Hz (audio files at other rates are resampled): set it to {}.".format(
                sample_rate, VGGISH_SAMPLE_RATE, VGGISH_SAMPLE_RATE)
        )
    if short_policy not in SHORT_POLICIES:
        raise ConfigError(
            "INPUT.AVS.AUDIO.SHORT_POLICY is {!r}; expected one of {}.".format(
                short_policy, SHORT_POLICIES)
        )
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError("num_frames must be a positive integer, got {!r}.".format(num_frames))
    num_frames = int(num_frames)
    seconds = None
    if os.fspath(path).lower().endswith(".pkl"):
        examples = _read_log_mel_pickle(path)
    else:
        waveform, rate = read_waveform(path)
        seconds = waveform.shape[0] / rate
        examples = waveform_to_examples(waveform, rate, max_examples=num_frames,
                                        resampler=resampler)
    if examples.shape[0] < num_frames:
        _warn_short_once(path, examples.shape[0], num_frames, short_policy, seconds)
    examples = _fit_examples(examples, num_frames, short_policy)
    return torch.from_numpy(np.ascontiguousarray(examples, dtype=np.float32))[:, None]


def silent_examples(num_frames):
    """Log-mel examples of digital silence, float32 Tensor [T, 1, 96, 64] (= log(0.01))."""
    shape = (num_frames, 1, EXAMPLE_FRAMES, NUM_MEL_BINS)
    return torch.full(shape, SILENCE_LOG_MEL, dtype=torch.float32)
