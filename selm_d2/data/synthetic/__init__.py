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

Modules: ``scene`` (categories and the plan of a clip), ``render`` (frames, label maps), ``sound``
(audio), ``writers`` (the AVSBench layouts on disk, :func:`generate`), ``cli``.

Command line::

    python -m selm_d2.data.synthetic --out datasets/avs_synth --layouts s4 ms3 avss
    python -m selm_d2.data.synthetic --out datasets/avs_synth70 --layouts avss --num-categories 70
"""
from .cli import main
from .render import label_maps, object_masks, render_frames
from .scene import (
    CATEGORY_LOOKS,
    CODED_CATEGORIES,
    CODED_SOUNDS,
    DEFAULT_CLIPS_PER_SPLIT,
    DEFAULT_SIZE,
    LAYOUT_DIRS,
    LAYOUTS,
    MAX_CATEGORIES,
    SOUND_BANDS_HZ,
    SPLITS,
    SYNTH_CATEGORIES,
    Scene,
    SceneObject,
    SynthClip,
    plan_clip,
    sample_scene,
    synth_categories,
)
from .sound import mix_audio, render_audio
from .writers import GENERATOR_VERSION, INFO_FILE, generate

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
    "DEFAULT_SIZE",
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
