"""Writing AVS-Synth in the AVSBench layouts: clip files, metadata, and the generation of a
layout (atomic, reproducible for any number of workers)."""
import copyreg
import csv
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from tqdm import tqdm

from ..audio import load_audio_examples
from ..masks import avss_palette
from ...utils import ConfigError, DataError
from .render import label_maps, render_frames
from .scene import (
    DEFAULT_CLIPS_PER_SPLIT,
    DEFAULT_SIZE,
    LAYOUT_DIRS,
    LAYOUTS,
    SPLITS,
    SYNTH_CATEGORIES,
    plan_clip,
    synth_categories,
)
from .sound import SAMPLE_RATE, mix_audio, render_audio

logger = logging.getLogger(__name__)

# Bump when the output for a given seed changes: a re-run then regenerates old data.
GENERATOR_VERSION = 2  # 2: S4/MS3 log-mel pickles
PNG_COMPRESS_LEVEL = 1  # speed over size
JPEG_QUALITY = 95
INFO_FILE = "avs_synth_info.json"
_TMP_PREFIX = ".avs_synth_tmp_"


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
            raise DataError("{} is corrupt ({}): delete {} and generate again".format(
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
            raise ConfigError("unknown AVS-Synth layout {!r}; choose from {}".format(
                layout, LAYOUTS))
    for split in SPLITS:
        if int(counts[split]) < 0:
            raise ConfigError("clips per split must be >= 0, got {} for {}".format(
                counts[split], split))
    if size < 16:
        raise ConfigError("frame size must be at least 16 pixels, got {}".format(size))
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError("AVS-Synth output {} exists and is not a folder".format(out))
    os.makedirs(out, exist_ok=True)
    return {layout: _generate_layout(out, layout, counts, int(size), int(seed), float(snr_db),
                                     categories, int(workers), progress)
            for layout in layouts}
