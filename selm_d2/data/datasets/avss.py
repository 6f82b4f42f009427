"""AVSBench-semantic (AVSS) parser, official layout.

Under ``<root>/`` (``metadata.csv`` columns used by name: uid, label = subset, split)::

    metadata.csv
    label2idx.json                       {"background": 1, ..., "woman": 71}: 1-based
    <subset>/<uid>/frames/<i>.jpg        i = 0..T-1; T = 5 (v1s, v1m) or 10 (v2)
    <subset>/<uid>/audio.wav
    <subset>/<uid>/labels_rgb/<i>.png    71-colour VOC palette (mask_format "avss_rgb")
    <subset>/<uid>/labels_semantic/<i>.png  class index, mode L ("avss_index", preferred)

v1s training clips annotate only frame 0; every other clip annotates every frame. Frames
are listed per clip (the frame count must match the subset); label file names are implied.
"""
import json
import os
import re

from .common import missing_path_error, read_csv, require_file, select_rows
from ...utils import ConfigError, DataError

__all__ = ["AVSS_CLASSES", "SUBSET_FRAMES", "AVSSLayout", "read_label2idx"]

# The 71 AVSBench-semantic classes in class-index order (label2idx.json value - 1).
AVSS_CLASSES = [
    "background", "accordion", "airplane", "axe", "baby", "bassoon", "bell", "bird", "boat",
    "boy", "bus", "car", "cat", "cello", "clarinet", "clipper", "clock", "dog", "donkey",
    "drum", "duck", "elephant", "emergency-car", "erhu", "flute", "frying-food", "girl",
    "goose", "guitar", "gun", "guzheng", "hair-dryer", "handpan", "harmonica", "harp",
    "helicopter", "hen", "horse", "keyboard", "leopard", "lion", "man", "marimba",
    "missile-rocket", "motorcycle", "mower", "parrot", "piano", "pig", "pipa", "saw",
    "saxophone", "sheep", "sitar", "sorna", "squirrel", "tabla", "tank", "tiger", "tractor",
    "train", "trombone", "truck", "trumpet", "tuba", "ukulele", "utv", "vacuum-cleaner",
    "violin", "wolf", "woman",
]

SUBSET_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
_COLUMNS = ("uid", "label", "split")
_FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_label2idx(path):
    """Class names in index order from an AVSS ``label2idx.json`` (1-based: index = value-1)."""
    with open(require_file(path, "AVSS class list (label2idx.json)"), encoding="utf-8") as f:
        label2idx = json.load(f)
    names = sorted(label2idx, key=label2idx.get)
    if [label2idx[n] for n in names] != list(range(1, len(names) + 1)):
        raise DataError(
            "{} must map every class name to a distinct index 1..N (1 = background); found "
            "values {}.".format(path, sorted(label2idx.values()))
        )
    return names


class AVSSLayout:
    """AVSBench-semantic clips of one split (None = all) and subset (None = all)."""

    name = "avss"

    def __init__(self, root, split=None, subset=None):
        if subset is not None and subset not in SUBSET_FRAMES:
            raise ConfigError(
                "Unknown AVSS subset {!r}; expected one of {} or None (all).".format(
                    subset, sorted(SUBSET_FRAMES))
            )
        self.root = root
        self.split = split
        self.subset = subset

    @property
    def num_frames(self):
        """Frames per clip; with every subset, the longest (v2: 10)."""
        if self.subset is None:
            return max(SUBSET_FRAMES.values())
        return SUBSET_FRAMES[self.subset]

    @property
    def metadata_file(self):
        return os.path.join(self.root, "metadata.csv")

    def records(self):
        """Yield {"uid", "subset", "split"} per clip, streaming metadata.csv."""
        path = self.metadata_file
        header, rows = read_csv(path, "AVSS metadata file")
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise DataError(
                "{} lacks column(s) {} (columns found: {}). Use the metadata.csv of the "
                "official AVSBench-semantic release.".format(path, missing, header)
            )
        position = {c: header.index(c) for c in _COLUMNS}
        records = (self._record(row, position, path, line) for line, row in enumerate(rows, 2))
        records = select_rows(records, path, "split", self.split, key=lambda r: r["split"])
        yield from select_rows(records, path, "label (subset)", self.subset,
                               key=lambda r: r["subset"])

    @staticmethod
    def _record(row, position, path, line):
        if len(row) <= max(position.values()):
            raise DataError("{} line {}: too few values; fix or delete the line.".format(
                path, line))
        record = {"uid": row[position["uid"]], "subset": row[position["label"]],
                  "split": row[position["split"]]}
        if record["subset"] not in SUBSET_FRAMES:
            raise DataError("{} line {}: unknown label (subset) {!r}; expected one of {}.".format(
                path, line, record["subset"], sorted(SUBSET_FRAMES)))
        return record

    def clip_dict(self, record):
        """Dataset dict of one clip, without height/width (see load_avs_clips).

        Lists ``frames/`` and raises ValueError naming the clip folder when the frames are
        not exactly 0..T-1 for the subset's T.
        """
        clip_dir = os.path.join(self.root, record["subset"], record["uid"])
        frames = _list_frames(os.path.join(clip_dir, "frames"), SUBSET_FRAMES[record["subset"]])
        labels_dir = os.path.join(clip_dir, "labels_semantic")
        mask_format = "avss_index"
        if not os.path.isdir(labels_dir):
            labels_dir, mask_format = os.path.join(clip_dir, "labels_rgb"), "avss_rgb"
        # Official protocol: v1s training clips annotate frame 0 only; other label files of
        # such clips are used when present.
        sparse = record["subset"] == "v1s" and record["split"] == "train"
        masks = []
        for i in range(len(frames)):
            path = os.path.join(labels_dir, "{}.png".format(i))
            masks.append(path if (i == 0 or not sparse or os.path.isfile(path)) else None)
        return {
            "clip_id": record["uid"],
            "file_names": frames,
            "sem_seg_file_names": masks,
            "mask_format": mask_format,
            "audio_file_name": os.path.join(clip_dir, "audio.wav"),
            "audio_log_mel_file": None,
            "subset": record["subset"],
        }


def _list_frames(frames_dir, expected):
    """Frame paths 0..expected-1 of an AVSS ``frames/`` folder, checked."""
    if not os.path.isdir(frames_dir):
        raise missing_path_error(frames_dir, "AVSS frame folder")
    by_index = {}
    for entry in os.listdir(frames_dir):
        stem, ext = os.path.splitext(entry)
        if ext.lower() in _FRAME_EXTENSIONS and re.fullmatch(r"\d+", stem):
            by_index[int(stem)] = os.path.join(frames_dir, entry)
    if sorted(by_index) != list(range(expected)):
        raise DataError(
            "AVSS clip folder {} should hold frames 0..{} (frames/<i>.jpg, {} frames for its "
            "subset) but holds {} frame(s) numbered {}. Restore the missing frames from the "
            "release (python -m selm_d2.data.check_avsbench lists every such clip).".format(
                os.path.dirname(frames_dir), expected - 1, expected, len(by_index),
                sorted(by_index)[:12])
        )
    return [by_index[i] for i in range(expected)]
