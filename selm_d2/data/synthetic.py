"""AVS-Synth: a synthetic audio-visual segmentation benchmark that needs no download.

The generator writes clips in the official AVSBench layouts (S4 ``Single-source/``, MS3
``Multi-sources/``, AVSBench-semantic ``AVSS/``), so the real AVSBench loaders are what read
them. Each clip shows 2-4 objects of distinct categories moving across the frames; every
category has its own look (colour, shape, stripe pattern) and its own sound. Some objects
sound, others are visible but silent distractors, and every category is a distractor about as
often as it sounds: a visual-only model cannot tell which visible object sounds (the paper's
"auditory illusion"); only the audio can.

Categories (``--num-categories``):

- 6 (default, ``SYNTH_CATEGORIES``): hand-made looks and sounds (drum hits, bell partials,
  siren sweeps, ...), each sound confined to its own sixth of the VGGish mel range.
- 4..70 (70 = AVSBench-semantic's count; ``CODED_CATEGORIES[:K]``): made-up categories
  named ``<colour>-<shape>``: a distinct (shape, colour) pair with a stripe angle and period,
  and a sound made of two steady tones on two of 13 mel slots 5 VGGish mel bins apart (every
  category its own pair) with an amplitude-modulation rate of 0, 3, 6 or 12 Hz.

- S4 style: exactly one object sounds, for the whole clip.
- MS3 / AVSS style: each object switches on and off from second to second (a symmetric
  Markov chain, so an object sounds in half of its seconds); audio second t holds the sounds
  of the objects sounding at t, and the ground truth of frame t marks exactly those.
  A fraction of clips is entirely silent (background noise only, empty masks).
- Ground truth: the visible pixels of the sounding objects (objects drawn later occlude
  earlier ones); S4/MS3 masks are binary 0/255, AVSS masks are class colours.
- Audio: 16 kHz mono PCM_16, exactly T seconds, white background noise at ``snr_db``
  relative to the mean power of the sounding signal over the seconds where something sounds
  (silent clips: relative to one object at the nominal level). S4 and MS3 clips also get
  the precomputed VGGish log-mel pickle AVSBench ships (``audio_log_mel/``), made from the
  written wav, which the loaders then read instead of the wav (``INPUT.AVS.AUDIO.SOURCE``).

Everything is a pure function of ``(seed, layout, split, index)``: the same seed gives
byte-identical files, whatever the number of worker processes. Each layout is written into
a hidden temp folder renamed into place at the end (an interrupted run never leaves a
complete-looking layout) together with ``avs_synth_info.json`` (generator version and
settings): a re-run with the same settings is a no-op, other settings regenerate.

Command line::

    python -m selm_d2.data.synthetic --out datasets/avs_synth --layouts s4 ms3 avss
    python -m selm_d2.data.synthetic --out datasets/avs_synth70 --layouts avss --num-categories 70
"""
import argparse
import copyreg
import csv
import json
import logging
import math
import multiprocessing
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import scipy.fft
import soundfile as sf
import torch
from PIL import Image
from tqdm import tqdm

from .audio import MEL_MAX_HZ, MEL_MIN_HZ, NUM_MEL_BINS, load_audio_examples
from .masks import avss_palette

__all__ = [
    "GENERATOR_VERSION",
    "SYNTH_CATEGORIES",
    "SOUND_BANDS_HZ",
    "CATEGORY_LOOKS",
    "MAX_CATEGORIES",
    "CODED_CATEGORIES",
    "CODED_SOUNDS",
    "synth_categories",
    "INFO_FILE",
    "LAYOUTS",
    "LAYOUT_DIRS",
    "SPLITS",
    "DEFAULT_CLIPS_PER_SPLIT",
    "SceneObject",
    "Scene",
    "SynthClip",
    "sample_scene",
    "plan_clip",
    "object_masks",
    "render_frames",
    "label_maps",
    "render_audio",
    "mix_audio",
    "generate",
    "main",
]

logger = logging.getLogger(__name__)

# Bump when the output for a given seed changes: a re-run then regenerates old data.
GENERATOR_VERSION = 2  # 2: S4/MS3 log-mel pickles

SYNTH_CATEGORIES = ["drum", "bell", "siren", "bird", "engine", "whistle"]

# Each category's sound lives in its own band: the central 60% of one of six equal slices of
# the VGGish mel range (125-7500 Hz, HTK mel), so the bands land on disjoint mel bins.
SOUND_BANDS_HZ = {
    "engine": (190.0, 420.0),
    "drum": (605.0, 940.0),
    "bell": (1215.0, 1705.0),
    "siren": (2105.0, 2830.0),
    "bird": (3410.0, 4470.0),
    "whistle": (5325.0, 6895.0),
}

# Look of each category: shape, RGB colour, stripe angle (degrees) and stripe period in
# units of the object radius (stripes scale and move with the object).
CATEGORY_LOOKS = {
    "drum": ("disc", (220, 45, 45), 0.0, 0.50),
    "bell": ("triangle", (235, 205, 35), 45.0, 0.45),
    "siren": ("square", (45, 95, 230), 90.0, 0.55),
    "bird": ("diamond", (45, 185, 65), 135.0, 0.40),
    "engine": ("ring", (205, 60, 205), 0.0, 0.35),
    "whistle": ("cross", (35, 205, 215), 90.0, 0.60),
}

# ---- Made-up categories, up to AVSBench-semantic's 70 (``--num-categories``).
MAX_CATEGORIES = 70
_CODED_SHAPES = ("disc", "triangle", "square", "diamond", "ring", "cross")
_CODED_COLOURS = (
    ("red", (220, 45, 45)), ("orange", (240, 130, 30)), ("yellow", (235, 215, 40)),
    ("lime", (150, 225, 40)), ("green", (40, 170, 60)), ("teal", (25, 150, 135)),
    ("cyan", (40, 210, 225)), ("azure", (50, 135, 235)), ("blue", (45, 55, 205)),
    ("violet", (135, 60, 220)), ("magenta", (215, 50, 200)), ("pink", (245, 145, 185)),
)
_STRIPE_ANGLES = (0.0, 45.0, 90.0, 135.0)
_STRIPE_PERIODS = (0.35, 0.45, 0.55)
# Tone slots: the centres of VGGish mel bins 2, 7, ..., 62 (5 bins apart). Category k sounds
# on slots i and i + d (mod 13), i = k mod 13, d = 6 - k // 13: on a circle of 13 slots
# every pair has one circular distance d <= 6, so the 70 categories use 70 distinct pairs.
_NUM_SLOTS = 13
_AM_RATES_HZ = (0.0, 3.0, 6.0, 12.0)
_AM_DEPTH = 0.8


def _mel_bin_centre_hz(index):
    """Centre frequency of VGGish mel bin ``index`` (HTK mel, 125-7500 Hz, 64 bins)."""
    mel = lambda hz: 1127.0 * math.log(1.0 + hz / 700.0)  # noqa: E731
    low, high = mel(MEL_MIN_HZ), mel(MEL_MAX_HZ)
    centre = low + (high - low) * (index + 1) / (NUM_MEL_BINS + 1)
    return 700.0 * (math.exp(centre / 1127.0) - 1.0)


def _coded_categories():
    """[(name, look, (tone_hz, tone_hz), am_rate_hz)] for k = 0..MAX_CATEGORIES-1.

    Shape k mod 6 and colour (k // 6 + k) mod 12 make 72 distinct pairs for k < 72, and the
    first categories already differ in both.
    """
    slots = [_mel_bin_centre_hz(2 + 5 * j) for j in range(_NUM_SLOTS)]
    out = []
    for k in range(MAX_CATEGORIES):
        shape = _CODED_SHAPES[k % len(_CODED_SHAPES)]
        colour_name, rgb = _CODED_COLOURS[(k // len(_CODED_SHAPES) + k) % len(_CODED_COLOURS)]
        look = (shape, rgb, _STRIPE_ANGLES[(k // 3) % 4], _STRIPE_PERIODS[k % 3])
        i, d = k % _NUM_SLOTS, 6 - k // _NUM_SLOTS
        tones = (slots[min(i, (i + d) % _NUM_SLOTS)], slots[max(i, (i + d) % _NUM_SLOTS)])
        out.append(("{}-{}".format(colour_name, shape), look, tones, _AM_RATES_HZ[k % 4]))
    return out


CODED_CATEGORIES = [name for name, _, _, _ in _coded_categories()]
# name -> ((tone_hz, tone_hz), amplitude-modulation rate in Hz; 0 = steady)
CODED_SOUNDS = {name: (tones, rate) for name, _, tones, rate in _coded_categories()}
CATEGORY_LOOKS.update({name: look for name, look, _, _ in _coded_categories()})


def synth_categories(num_categories=len(SYNTH_CATEGORIES)):
    """The category names of an AVS-Synth with ``num_categories`` sounding categories: the
    hand-made SYNTH_CATEGORIES for 6, else the first ``num_categories`` CODED_CATEGORIES."""
    if num_categories == len(SYNTH_CATEGORIES):
        return list(SYNTH_CATEGORIES)
    if not 4 <= num_categories <= MAX_CATEGORIES:
        # A multi-source clip shows up to 4 objects of distinct categories.
        raise ValueError("--num-categories must be between 4 and {}, got {}".format(
            MAX_CATEGORIES, num_categories))
    return CODED_CATEGORIES[:num_categories]


LAYOUTS = ("s4", "ms3", "avss")
LAYOUT_DIRS = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSS"}
SPLITS = ("train", "val", "test")
# Sized for the CPU demo; test splits are multiples of 4, the official M_F batch size.
DEFAULT_CLIPS_PER_SPLIT = {"train": 400, "val": 60, "test": 100}
# The AVS-Synth recipes' INPUT.AVS.SIZE (configs/synth/Base-Synth.yaml). Frames and masks at
# the size the model sees, as AVSBench S4/MS3 ship them at its 224: larger masks reach the
# model through a nearest-neighbour resize that moves every edge by half a source pixel, so
# the training targets and the masks scored would not be the same pixels (README, "make demo").
DEFAULT_SIZE = 64

SAMPLE_RATE = 16000
FRAMES_PER_CLIP = 5
AVSS_V2_FRAMES = 10
# AVSS subsets drawn per clip: v1s (single source), v1m (multi source), v2 (10 s, multi).
AVSS_SUBSET_PROBS = (("v1s", 0.25), ("v1m", 0.4), ("v2", 0.35))

SILENT_CLIP_FRACTION = 0.1  # multi-source clips with no sound at all
SWITCH_PROB = 0.35  # per second, a multi-source object flips on<->off
OBJECT_RADIUS = (0.11, 0.18)  # fraction of the frame size
SCALE_CHANGE = (0.85, 1.15)  # object radius at the last frame / at the first
MAX_SPEED = 0.08  # fraction of the frame size per frame
MIN_SEPARATION = 0.7  # centre distance / (sum of radii), every frame: occlusion stays partial
SEPARATION_CANDIDATES = 32  # trajectories drawn at once per object
SEPARATION_BATCHES = 4

SOURCE_RMS = 0.05  # nominal level of one sounding object (full scale = 1)
SOURCE_GAIN_DB = 3.0  # per-object level jitter, +-
ONSET_RAMP_S = 0.02  # raised-cosine on/off ramps inside the sounding seconds
PEAK_LIMIT = 0.99

PNG_COMPRESS_LEVEL = 1  # speed over size
JPEG_QUALITY = 95
INFO_FILE = "avs_synth_info.json"
_TMP_PREFIX = ".avs_synth_tmp_"


# ------------------------------------------------------------------------------ scenes
@dataclass
class SceneObject:
    """One object of a clip.

    category: index into the scene's ``categories``.
    centers: float [T, 2] pixel centre (x, y) per frame.
    radii: float [T] radius in pixels per frame.
    sounding: bool [T] whether the object sounds during second t.
    """

    category: int
    centers: np.ndarray
    radii: np.ndarray
    sounding: np.ndarray


@dataclass
class Scene:
    """Everything that determines a clip's frames, masks and audio.

    objects are listed in drawing order (later objects occlude earlier ones); ``seed`` seeds
    the appearance jitter, the pixel noise, the sound parameters and the audio noise;
    ``categories`` are the names the objects' category indices refer to.
    """

    size: int
    num_frames: int
    objects: List[SceneObject]
    snr_db: float
    seed: int
    categories: Tuple[str, ...] = tuple(SYNTH_CATEGORIES)

    @property
    def sounding(self):
        """bool [N, T]: which object sounds in which second."""
        return np.stack([o.sounding for o in self.objects])

    @property
    def silent(self):
        """True when no object sounds at any time (background noise only, empty masks)."""
        return not self.sounding.any()

    def sounding_categories(self):
        """Sorted category names that sound at some point of the clip."""
        return sorted({self.categories[o.category] for o in self.objects if o.sounding.any()})


@dataclass
class SynthClip:
    """A clip placed in a layout: its file name stem, split, AVSS subset (or None), scene."""

    name: str
    split: str
    subset: Optional[str]
    scene: Scene


def _sample_candidates(rng, count, num_frames, size):
    """`count` candidate trajectories for one object: linear motion with a mild scale
    change. Returns centres [count, T, 2] and radii [count, T]."""
    ramp = np.linspace(0.0, 1.0, num_frames)
    r0 = rng.uniform(*OBJECT_RADIUS, size=(count, 1)) * size
    radii = r0 + (r0 * rng.uniform(*SCALE_CHANGE, size=(count, 1)) - r0) * ramp
    r_max = radii.max(axis=1)[:, None]  # objects stay inside the frame
    start, end = rng.uniform(r_max, size - r_max, size=(2, count, 2))
    disp = end - start
    max_len = MAX_SPEED * size * max(num_frames - 1, 1)
    disp *= np.minimum(1.0, max_len / np.maximum(np.linalg.norm(disp, axis=1), 1e-9))[:, None]
    return start[:, None, :] + disp[:, None, :] * ramp[None, :, None], radii


def _sample_trajectories(rng, num_objects, num_frames, size):
    """Trajectories of all objects: centres [N, T, 2] and radii [N, T].

    Objects are placed one by one, each as the first of a batch of random candidates that
    keeps MIN_SEPARATION from the objects already placed in every frame (so occlusion stays
    partial); after SEPARATION_BATCHES batches the best candidate is kept.
    """
    centers = np.zeros((0, num_frames, 2))
    radii = np.zeros((0, num_frames))
    for _ in range(num_objects):
        best, best_margin = None, -np.inf
        for _ in range(SEPARATION_BATCHES):
            c, r = _sample_candidates(rng, SEPARATION_CANDIDATES, num_frames, size)
            # [candidates, placed, T] centre distance over the sum of radii.
            ratio = (np.linalg.norm(c[:, None] - centers[None], axis=-1)
                     / (r[:, None] + radii[None]))
            margin = ratio.min(axis=(1, 2), initial=np.inf)
            ok = np.flatnonzero(margin >= MIN_SEPARATION)
            pick = ok[0] if len(ok) else int(np.argmax(margin))
            if margin[pick] > best_margin:
                best, best_margin = (c[pick], r[pick]), margin[pick]
            if len(ok):
                break
        centers = np.concatenate([centers, best[0][None]])
        radii = np.concatenate([radii, best[1][None]])
    return centers, radii


def _sample_sounding(rng, style, num_objects, num_frames):
    """bool [N, T]: single = one object sounds throughout; multi = per-second Markov on/off."""
    sounding = np.zeros((num_objects, num_frames), dtype=bool)
    if style == "single":
        sounding[rng.integers(num_objects)] = True
        return sounding
    if rng.random() < SILENT_CLIP_FRACTION:
        return sounding
    state = rng.random(num_objects) < 0.5
    for t in range(num_frames):
        if t > 0:
            state = state ^ (rng.random(num_objects) < SWITCH_PROB)
        sounding[:, t] = state
    return sounding


def sample_scene(rng, style, num_frames, size, snr_db, categories=SYNTH_CATEGORIES):
    """Draw a random scene.

    Args:
        rng: numpy Generator.
        style: "single" (S4 / AVSS v1s: one sounding object, 2-3 objects) or "multi"
            (MS3 / AVSS v1m, v2: 2-4 objects switching on and off, some clips silent).
        num_frames: T, one frame per second of audio.
        size: frame height = width in pixels.
        snr_db: background noise level (see the module docstring).
        categories: the category names to draw from (``synth_categories``).
    """
    if style not in ("single", "multi"):
        raise ValueError("style must be 'single' or 'multi', got {!r}".format(style))
    # Single-source clips show 2-3 objects so the sounding one is ~40% of appearances.
    num_objects = int(rng.integers(2, 4 if style == "single" else 5))
    chosen = rng.choice(len(categories), size=num_objects, replace=False)
    centers, radii = _sample_trajectories(rng, num_objects, num_frames, size)
    sounding = _sample_sounding(rng, style, num_objects, num_frames)
    objects = [
        SceneObject(int(c), centers[i], radii[i], sounding[i]) for i, c in enumerate(chosen)
    ]
    seed = int(rng.integers(2 ** 63))
    return Scene(size=size, num_frames=num_frames, objects=objects, snr_db=float(snr_db),
                 seed=seed, categories=tuple(categories))


def _clip_rng(seed, layout, split, index):
    return np.random.default_rng([seed, LAYOUTS.index(layout), SPLITS.index(split), index])


def plan_clip(layout, split, index, seed, size, snr_db, categories=SYNTH_CATEGORIES):
    """The clip number ``index`` of ``split`` in ``layout``, a pure function of its arguments."""
    rng = _clip_rng(seed, layout, split, index)
    name = "{}_{}_{:05d}".format(layout, split, index)
    subset = None
    if layout == "s4":
        style, num_frames = "single", FRAMES_PER_CLIP
    elif layout == "ms3":
        style, num_frames = "multi", FRAMES_PER_CLIP
    else:
        names, probs = zip(*AVSS_SUBSET_PROBS)
        subset = names[rng.choice(len(names), p=probs)]
        num_frames = AVSS_V2_FRAMES if subset == "v2" else FRAMES_PER_CLIP
        style = "single" if subset == "v1s" else "multi"
    return SynthClip(name, split, subset,
                     sample_scene(rng, style, num_frames, size, snr_db, categories))


def _stream(scene, purpose):
    # Independent random streams per purpose, so frames and audio never share draws.
    return np.random.default_rng([scene.seed, purpose])


# ------------------------------------------------------------------------------ frames
def _shape_mask(shape, u, v):
    """Inside test of a unit-radius shape in object coordinates (u right, v down)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.25)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # apex up at v = -1, base at v = 0.8
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.8)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.35) & (av <= 0.95)) | ((av <= 0.35) & (au <= 0.95))
    raise ValueError("unknown shape {!r}".format(shape))


def _object_patches(scene, obj):
    """Per frame, the object's bounding box and the object coordinates inside it.

    Yields (t, rows, cols, u, v, inside): rows/cols are slices of the frame, u/v float32
    [h, w] the pixel-centre offsets from the object centre divided by its radius, inside bool
    [h, w] the silhouette. Working on the box only keeps rendering ~10x cheaper than full
    frames.
    """
    shape = CATEGORY_LOOKS[scene.categories[obj.category]][0]
    for t in range(scene.num_frames):
        (cx, cy), r = obj.centers[t], obj.radii[t]
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, scene.size)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, scene.size)
        u = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / r)[None, :]
        v = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / r)[:, None]
        u, v = np.broadcast_arrays(u, v)
        yield t, slice(y0, y1), slice(x0, x1), u, v, _shape_mask(shape, u, v)


def object_masks(scene):
    """bool [N, T, H, W]: the full (unoccluded) silhouette of every object in every frame."""
    masks = np.zeros((len(scene.objects), scene.num_frames, scene.size, scene.size), bool)
    for i, obj in enumerate(scene.objects):
        for t, rows, cols, _, _, inside in _object_patches(scene, obj):
            masks[i, t, rows, cols] = inside
    return masks


def _background(rng, size, num_frames):
    """Background [T, H, W, 3] float32 and its texture [H, W, 1].

    A muted, smoothly varying colour field with a static 2x2-pixel grain (coarse grain keeps
    PNG encoding fast) and a per-frame brightness flicker.
    """
    base = rng.uniform(70.0, 150.0)
    coarse = base + rng.uniform(-35.0, 35.0, size=(3, 4, 4))
    # Bilinear upsampling of the 4x4 grid as a separable matrix product.
    pos = np.clip((np.arange(size) + 0.5) * 4.0 / size - 0.5, 0.0, 3.0)
    lo = np.minimum(pos.astype(int), 2)
    frac = pos - lo
    interp = np.zeros((size, 4))
    interp[np.arange(size), lo] = 1.0 - frac
    interp[np.arange(size), lo + 1] = frac
    field = (interp @ coarse @ interp.T).transpose(1, 2, 0).astype(np.float32)
    half = (size + 1) // 2
    grain = rng.standard_normal((half, half, 1), dtype=np.float32) * 10.0
    grain = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:size, :size]
    flicker = rng.uniform(0.97, 1.03, size=(num_frames, 1, 1, 1)).astype(np.float32)
    return (field + grain)[None] * flicker, grain


def render_frames(scene):
    """Render a clip.

    Returns:
        frames: uint8 [T, H, W, 3] RGB.
        owner: int8 [T, H, W], index of the object visible at each pixel, -1 = background.
    """
    rng = _stream(scene, 1)
    frames, grain = _background(rng, scene.size, scene.num_frames)
    owner = np.full(frames.shape[:3], -1, dtype=np.int8)
    for index, obj in enumerate(scene.objects):
        _, colour, angle, period = CATEGORY_LOOKS[scene.categories[obj.category]]
        tint = np.asarray(colour, np.float32) * rng.uniform(0.85, 1.1)
        a = math.radians(angle)
        for t, rows, cols, u, v, inside in _object_patches(scene, obj):
            stripe = np.floor((u * math.cos(a) + v * math.sin(a)) / period) % 2 == 0
            shade = np.where(stripe[inside], 1.0, 0.55).astype(np.float32)
            # Objects carry the frame's grain too: no clean-edge shortcut, no extra entropy.
            frames[t, rows, cols][inside] = shade[:, None] * tint + 0.6 * grain[rows, cols][inside]
            owner[t, rows, cols][inside] = index
    return np.clip(frames, 0.0, 255.0).round().astype(np.uint8), owner


def label_maps(scene, owner):
    """uint8 [T, H, W] ground truth: class index (category + 1) of the visible sounding
    object at each pixel, 0 = background or silent object. Binary tasks use ``> 0``."""
    num_objects = len(scene.objects)
    # Row -1 (owner = -1, background) stays 0.
    classes = np.zeros((num_objects + 1, scene.num_frames), dtype=np.uint8)
    for i, obj in enumerate(scene.objects):
        classes[i] = (obj.category + 1) * obj.sounding
    return classes[owner, np.arange(scene.num_frames)[:, None, None]]


# ------------------------------------------------------------------------------ audio
def _sine(cycles):
    """sin(2 pi cycles), float32. The phase (in cycles, float64) is reduced to [-0.5, 0.5]
    first, so a float32 sine (several times faster than float64) stays accurate."""
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
    rng = _stream(scene, 2)
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


# ------------------------------------------------------------------------------ writing
def _makedirs_for(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)


def _save_image(array, path):
    _makedirs_for(path)
    if path.endswith(".png"):
        Image.fromarray(array).save(path, compress_level=PNG_COMPRESS_LEVEL)
    else:
        Image.fromarray(array).save(path, quality=JPEG_QUALITY)


def _save_audio(scene, wav_path, log_mel_path=None):
    """The clip's wav and, for S4/MS3 (AVSBench ships them there), its VGGish log-mel pickle
    ``[T, 1, 96, 64]``, computed from the written wav by the loaders' own front-end: both
    audio sources give the model the same input, and the pickle spares the loader the STFT."""
    _makedirs_for(wav_path)
    sf.write(wav_path, mix_audio(*render_audio(scene)), SAMPLE_RATE, subtype="PCM_16")
    if log_mel_path is not None:
        _makedirs_for(log_mel_path)
        with open(log_mel_path, "wb") as f:
            pickler = pickle.Pickler(f)
            # torch's own reduction names a tensor's storage by its memory address, so the
            # same tensor would not give the same bytes twice; from_numpy unpickles to the
            # same torch tensor (pickle.load, as AVSBench's loaders read these files).
            pickler.dispatch_table = {**copyreg.dispatch_table,
                                      torch.Tensor: lambda t: (torch.from_numpy, (t.numpy(),))}
            pickler.dump(load_audio_examples(wav_path, scene.num_frames))


def _binary_png(labels):
    return (labels > 0).astype(np.uint8) * 255


def _write_s4(root, clip, frames, labels):
    """Single-source/s4_data/...; train annotates frame 1 only. Returns the CSV row."""
    category = clip.scene.sounding_categories()[0]
    rel = os.path.join(clip.split, category, clip.name)
    data = os.path.join(root, "s4_data")
    annotated = 1 if clip.split == "train" else len(frames)
    for k in range(len(frames)):
        stem = "{}_{}.png".format(clip.name, k + 1)
        _save_image(frames[k], os.path.join(data, "visual_frames", rel, stem))
        if k < annotated:
            _save_image(_binary_png(labels[k]), os.path.join(data, "gt_masks", rel, stem))
    _save_audio(clip.scene, os.path.join(data, "audio_wav", rel + ".wav"),
                os.path.join(data, "audio_log_mel", rel + ".pkl"))
    return [clip.name, 0, category, clip.split]


def _write_ms3(root, clip, frames, labels):
    """Multi-sources/ms3_data/...; frames have no split folder and a ".mp4" in their name."""
    data = os.path.join(root, "ms3_data")
    for k in range(len(frames)):
        _save_image(frames[k], os.path.join(data, "visual_frames", clip.name,
                                            "{}.mp4_{}.png".format(clip.name, k + 1)))
        _save_image(_binary_png(labels[k]), os.path.join(
            data, "gt_masks", clip.split, clip.name, "{}_{}.png".format(clip.name, k + 1)))
    _save_audio(clip.scene, os.path.join(data, "audio_wav", clip.split, clip.name + ".wav"),
                os.path.join(data, "audio_log_mel", clip.split, clip.name + ".pkl"))
    return [clip.name, clip.split]


def _write_avss(root, clip, frames, labels):
    """AVSS/<subset>/<uid>/{frames/<i>.jpg, audio.wav, labels_rgb/<i>.png} (0-based);
    v1s train annotates 0.png only, like AVSBench-semantic."""
    folder = os.path.join(root, clip.subset, clip.name)
    palette = avss_palette(len(clip.scene.categories) + 1)
    annotated = 1 if clip.subset == "v1s" and clip.split == "train" else len(frames)
    for i in range(len(frames)):
        _save_image(frames[i], os.path.join(folder, "frames", "{}.jpg".format(i)))
        if i < annotated:
            _save_image(palette[labels[i]], os.path.join(folder, "labels_rgb", "{}.png".format(i)))
    _save_audio(clip.scene, os.path.join(folder, "audio.wav"))
    a_obj = "_".join(clip.scene.sounding_categories()) or "background"
    return [clip.name, clip.name, 0, 0, a_obj, clip.split, clip.subset]


_WRITERS = {"s4": _write_s4, "ms3": _write_ms3, "avss": _write_avss}
_CSV = {
    "s4": ("s4_meta_data.csv", ["name", "start", "category", "split"]),
    "ms3": ("ms3_meta_data.csv", ["video_id", "split"]),
    "avss": ("metadata.csv", ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]),
}


def _write_clip(job):
    """Render and write one clip into the layout root ``root``; returns its metadata row."""
    layout, root, split, index, seed, size, snr_db, categories = job
    clip = plan_clip(layout, split, index, seed, size, snr_db, categories)
    frames, owner = render_frames(clip.scene)
    return _WRITERS[layout](root, clip, frames, label_maps(clip.scene, owner))


def _info(layout, counts, size, seed, snr_db, categories):
    return {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "layout": layout,
        "seed": seed,
        "size": size,
        "snr_db": snr_db,
        "clips_per_split": {s: counts[s] for s in SPLITS},
        "categories": list(categories),
    }


def _read_info(layout_root):
    path = os.path.join(layout_root, INFO_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError("{} is corrupt ({}): delete {} and generate again".format(
                path, e, layout_root)) from e


def _write_metadata(root, layout, rows, categories):
    name, header = _CSV[layout]
    with open(os.path.join(root, name), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    if layout == "avss":
        # 1-based like AVSBench-semantic's label2idx.json: mask class index = value - 1.
        label2idx = {n: i + 1 for i, n in enumerate(["background"] + list(categories))}
        with open(os.path.join(root, "label2idx.json"), "w") as f:
            json.dump(label2idx, f, indent=4)


def _remove_stale_temps(out, layout):
    # Left behind only by a killed run (normal failures clean up after themselves).
    prefix = "{}{}_".format(_TMP_PREFIX, layout)
    for entry in os.listdir(out):
        if entry.startswith(prefix):
            shutil.rmtree(os.path.join(out, entry), ignore_errors=True)


def _generate_layout(out, layout, counts, size, seed, snr_db, categories, workers, progress):
    final = os.path.join(out, LAYOUT_DIRS[layout])
    info = _info(layout, counts, size, seed, snr_db, categories)
    if os.path.exists(final):
        existing = _read_info(final)
        if existing is None:
            raise FileExistsError(
                "{} exists but was not written by the AVS-Synth generator (no {}): choose "
                "another --out or move it away".format(final, INFO_FILE))
        if existing == info:
            logger.info("AVS-Synth %s at %s is up to date", layout, final)
            return final
        logger.info("AVS-Synth %s at %s was generated with other settings: regenerating",
                    layout, final)
    _remove_stale_temps(out, layout)
    # Generate into a hidden temp folder and rename it at the end: an interrupted run never
    # leaves a layout root that looks complete.
    tmp = tempfile.mkdtemp(prefix="{}{}_".format(_TMP_PREFIX, layout), dir=out)
    try:
        jobs = [(layout, tmp, split, i, seed, size, snr_db, tuple(categories))
                for split in SPLITS for i in range(counts[split])]
        bar = tqdm(total=len(jobs), desc="AVS-Synth {}".format(layout), unit="clip",
                   disable=not progress)
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                rows = []
                for row in pool.imap(_write_clip, jobs, chunksize=4):
                    rows.append(row)
                    bar.update()
        else:
            rows = []
            for job in jobs:
                rows.append(_write_clip(job))
                bar.update()
        bar.close()
        _write_metadata(tmp, layout, rows, categories)
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix="{}{}_old_".format(_TMP_PREFIX, layout), dir=out)
            os.rename(final, os.path.join(old, "root"))
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("AVS-Synth %s: %d clips written to %s", layout, len(jobs), final)
    return final


def generate(out, layouts=LAYOUTS, clips_per_split=None, size=DEFAULT_SIZE, seed=0,
             snr_db=10.0, workers=1, progress=True, num_categories=len(SYNTH_CATEGORIES)):
    """Write AVS-Synth in the official layouts under ``out``.

    ``out/Single-source`` (S4) and ``out/Multi-sources`` (MS3) are what AVSBench calls the
    data root; ``out/AVSS`` is the AVSBench-semantic root. A layout root that already holds
    the same generator version and settings is left untouched.

    Args:
        clips_per_split: {split: count}, missing splits take DEFAULT_CLIPS_PER_SPLIT.
        workers: processes; the output does not depend on it.
        num_categories: sounding categories (``synth_categories``): 6 (the hand-made ones)
            or 4..70 made-up ones; AVSS layouts write the matching ``label2idx.json``.
    Returns:
        {layout: path of its root}.
    Raises:
        FileExistsError: a layout root exists but holds no ``avs_synth_info.json`` (it is
            not AVS-Synth data, so it is never overwritten).
    """
    counts = dict(DEFAULT_CLIPS_PER_SPLIT, **(clips_per_split or {}))
    categories = synth_categories(int(num_categories))
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError("unknown AVS-Synth layout {!r}; choose from {}".format(
                layout, LAYOUTS))
    for split in SPLITS:
        if int(counts[split]) < 0:
            raise ValueError("clips per split must be >= 0, got {} for {}".format(
                counts[split], split))
    if size < 16:
        raise ValueError("frame size must be at least 16 pixels, got {}".format(size))
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError("AVS-Synth output {} exists and is not a folder".format(out))
    os.makedirs(out, exist_ok=True)
    return {layout: _generate_layout(out, layout, counts, int(size), int(seed), float(snr_db),
                                     categories, int(workers), progress)
            for layout in layouts}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m selm_d2.data.synthetic",
        description="Generate AVS-Synth, a synthetic audio-visual segmentation benchmark, in "
                    "the official AVSBench S4 / MS3 / AVSS layouts.")
    parser.add_argument("--out", default=os.path.join(
        os.environ.get("DETECTRON2_DATASETS", "datasets"), "avs_synth"),
        help="output folder (default: $DETECTRON2_DATASETS/avs_synth, where the "
             "avs_synth_* datasets are registered)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--clips-per-split", nargs=3, type=int, metavar=("TRAIN", "VAL", "TEST"),
                        default=[DEFAULT_CLIPS_PER_SPLIT[s] for s in SPLITS])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help="frame height = width (default: %(default)s, the AVS-Synth "
                             "configs' INPUT.AVS.SIZE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snr-db", type=float, default=10.0,
                        help="background noise level below the sounding signal")
    parser.add_argument("--workers", type=int, default=1, help="processes (output unchanged)")
    parser.add_argument("--num-categories", type=int, default=len(SYNTH_CATEGORIES),
                        help="sounding categories: 6 (default, hand-made looks and sounds) or "
                             "4..{} made-up ones (70: AVSBench-semantic's count; register the "
                             "output as avs_synth70_avss_* under "
                             "$DETECTRON2_DATASETS/avs_synth70)".format(MAX_CATEGORIES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    roots = generate(args.out, args.layouts, dict(zip(SPLITS, args.clips_per_split)),
                     size=args.size, seed=args.seed, snr_db=args.snr_db,
                     workers=max(1, args.workers), num_categories=args.num_categories)
    for layout, root in roots.items():
        print("{}: {}".format(layout, root))


if __name__ == "__main__":
    main()
