"""AVS-Synth scenes: categories, layouts, and the random plan of each clip (its objects, their
paths, and which of them sound when)."""
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..audio import MEL_MAX_HZ, MEL_MIN_HZ, NUM_MEL_BINS
from ...utils import ConfigError


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
        raise ConfigError("--num-categories must be between 4 and {}, got {}".format(
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
# the training targets and the masks scored would not be the same pixels.
DEFAULT_SIZE = 64


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


def random_stream(scene, purpose):
    # Independent random streams per purpose, so frames and audio never share draws.
    return np.random.default_rng([scene.seed, purpose])
