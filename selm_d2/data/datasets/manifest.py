"""The "manifest" layout: users' own clips listed in one JSON or CSV file.

JSON: a list of clips, or ``{"mask_format": ..., "clips": [...]}``. One clip::

    {"clip_id": "dog_01",                                  # required, unique
     "frames": ["dog_01/0.jpg", "dog_01/1.jpg"]            # required: list, or a glob
               | "dog_01/frames/*.jpg",                    #   pattern (sorted naturally)
     "audio": "dog_01/audio.wav",                          # required
     "masks": ["dog_01/0.png", null],                      # optional, aligned with frames;
                                                           #   null = frame not annotated
     "split": "train",                                     # optional
     "mask_format": "binary"}                              # optional: binary (default) |
                                                           #   avss_rgb | avss_index

CSV: a header with the same names (``clip_id,frames,audio`` required; ``masks``, ``split``,
``mask_format`` optional); list cells are ``;``-separated and an empty mask entry means
"not annotated" (``a/0.png;;;;``). Relative paths are relative to the manifest's folder.
"""
import csv
import glob
import json
import os

from ...utils import natural_key
from ..masks import MASK_FORMATS
from .common import require_file, select_rows
from ...utils import ConfigError, DataError, MissingFileError

__all__ = ["ManifestLayout"]

_REQUIRED = ("clip_id", "frames", "audio")


class ManifestLayout:
    """Clips listed in a manifest file (`root` is the .json or .csv file)."""

    name = "manifest"

    def __init__(self, root, split=None, subset=None):
        if subset is not None:
            raise ConfigError(
                "The 'manifest' layout has no subsets (got subset={!r}); register one dataset "
                "per manifest or split instead.".format(subset)
            )
        if os.path.splitext(root)[1].lower() not in (".json", ".csv"):
            raise ConfigError(
                "A manifest dataset's root must be the manifest file itself, ending in .json "
                "or .csv; got {!r} (see datasets/README.md, 'Your own data').".format(root)
            )
        self.root = root
        self.split = split

    @property
    def metadata_file(self):
        return self.root

    def records(self):
        """Yield one validated clip record (a dict) per clip of the split."""
        path = require_file(self.root, "Manifest file")
        seen = set()
        records = (self._checked(entry, i, seen) for i, entry in enumerate(self._entries(path)))
        yield from select_rows(records, path, "split", self.split, key=lambda r: r.get("split"))

    def _entries(self, path):
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is dropped
                try:
                    content = json.load(f)
                except ValueError as e:
                    raise DataError("Manifest {} is not valid JSON: {}".format(path, e)) from e
            clips, default_format = content, "binary"
            if isinstance(content, dict):
                clips = content.get("clips")
                default_format = content.get("mask_format", "binary")
            if not isinstance(clips, list):
                raise DataError(
                    "Manifest {} must be a JSON list of clips or an object with a \"clips\" "
                    "list.".format(path)
                )
            for clip in clips:
                if isinstance(clip, dict):
                    clip = dict(clip)
                    clip.setdefault("mask_format", default_format)
                yield clip
            return
        with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is dropped
            reader = csv.DictReader(f)
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    "Manifest {} lacks column(s) {} (header: {}).".format(
                        path, missing, reader.fieldnames)
                )
            for row in reader:
                clip = {k: v.strip() for k, v in row.items() if k and v is not None and v.strip()}
                frames = clip.get("frames", "")
                if ";" in frames:
                    clip["frames"] = [p.strip() for p in frames.split(";")]
                if "masks" in clip:
                    clip["masks"] = [p.strip() or None for p in clip["masks"].split(";")]
                clip.setdefault("mask_format", "binary")
                yield clip

    def _checked(self, clip, index, seen):
        where = "Manifest {} clip #{}".format(self.root, index)
        if not isinstance(clip, dict):
            raise DataError("{} is a {}, expected an object.".format(where, type(clip).__name__))
        missing = [k for k in _REQUIRED if not clip.get(k)]
        if missing:
            raise DataError("{} lacks {}.".format(where, missing))
        clip_id = str(clip["clip_id"])
        if clip_id in seen:
            raise DataError("{}: clip_id {!r} is used twice; clip ids must be unique.".format(
                where, clip_id))
        seen.add(clip_id)
        if clip["mask_format"] not in MASK_FORMATS:
            raise DataError("{} ({}): mask_format {!r} is not one of {}.".format(
                where, clip_id, clip["mask_format"], MASK_FORMATS))
        frames, masks = clip["frames"], clip.get("masks")
        if not isinstance(frames, (str, list)) or (masks is not None
                                                   and not isinstance(masks, list)):
            raise DataError(
                "{} ({}): 'frames' must be a list or a glob pattern and 'masks' a list.".format(
                    where, clip_id))
        if isinstance(frames, list) and masks is not None and len(masks) != len(frames):
            raise DataError("{} ({}): {} masks for {} frames; give one entry per frame (null "
                            "for unannotated frames).".format(where, clip_id, len(masks),
                                                              len(frames)))
        return dict(clip, clip_id=clip_id)

    def _path(self, path):
        path = os.path.expanduser(path)
        return path if os.path.isabs(path) else os.path.join(os.path.dirname(self.root), path)

    def clip_dict(self, record):
        """Dataset dict of one manifest clip, without height/width (see load_avs_clips)."""
        frames = record["frames"]
        if isinstance(frames, str):
            pattern = self._path(frames)
            frames = sorted(glob.glob(pattern), key=natural_key)
            if not frames:
                raise MissingFileError(
                    "Manifest {} clip {!r}: no frame matches {}. Check the pattern and that "
                    "paths are relative to the manifest's folder.".format(
                        self.root, record["clip_id"], pattern)
                )
        else:
            frames = [self._path(p) for p in frames]
        masks = record.get("masks") or [None] * len(frames)
        if len(masks) != len(frames):
            raise DataError(
                "Manifest {} clip {!r}: {} masks for the {} frames its pattern matched; give "
                "one entry per frame (null for unannotated frames).".format(
                    self.root, record["clip_id"], len(masks), len(frames))
            )
        return {
            "clip_id": record["clip_id"],
            "file_names": frames,
            "sem_seg_file_names": [self._path(m) if m else None for m in masks],
            "mask_format": record["mask_format"],
            "audio_file_name": self._path(record["audio"]),
            "audio_log_mel_file": None,
        }
