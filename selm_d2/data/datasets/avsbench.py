"""AVSBench-object parsers: S4 (Single-source) and MS3 (Multi-sources), official layouts.

S4, under ``<root>/Single-source/`` (``s4_meta_data.csv``: name, start, category, split)::

    s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png   k = 1..5
    s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png        train: k = 1 only
    s4_data/audio_wav/<split>/<category>/<name>.wav
    s4_data/audio_log_mel/<split>/<category>/<name>.pkl              optional

MS3, under ``<root>/Multi-sources/`` (``ms3_meta_data.csv``: name, split)::

    ms3_data/visual_frames/<name>/<name>.mp4_<k>.png                 no split folder
    ms3_data/gt_masks/<split>/<name>/<name>_<k>.png                  k = 1..5, every split
    ms3_data/audio_wav/<split>/<name>.wav
    ms3_data/audio_log_mel/<split>/<name>.pkl                        optional

`root` may also be the ``Single-source``/``Multi-sources`` folder itself. The metadata
columns are read by header name when the first row names them (the official files: S4
``name,start,category,split``, MS3 ``video_id,split``), in any order; a file without a
header row is read by position, in the order above.
File names are implied by the layout, so parsing reads only the CSV: missing files are
reported by the mapper (and listed by ``python -m selm_d2.data.check_avsbench``).
"""
import itertools
import os

from .common import SPLITS, read_csv, select_rows
from ...utils import ConfigError, DataError

__all__ = ["S4_CATEGORIES", "S4Layout", "MS3Layout"]

# The 23 S4 categories (column "category" of s4_meta_data.csv).
S4_CATEGORIES = [
    "ambulance_siren", "baby_laughter", "cap_gun_shooting", "cat_meowing", "chainsawing_trees",
    "coyote_howling", "dog_barking", "driving_buses", "female_singing", "helicopter",
    "horse_clip-clop", "lawn_mowing", "lions_roaring", "male_speech", "mynah_bird_singing",
    "playing_acoustic_guitar", "playing_glockenspiel", "playing_piano", "playing_tabla",
    "playing_ukulele", "playing_violin", "race_car", "typing_on_computer_keyboard",
]


class _AVSBenchObjectLayout:
    """Common part of S4 and MS3: a positional metadata CSV and 5 frames per clip."""

    name = None  # layout name used by register_avs_dataset
    folder = None  # "Single-source" | "Multi-sources"
    csv_name = None
    data_folder = None  # "s4_data" | "ms3_data"
    columns = ()  # CSV columns in positional order (files without a header row)
    # Header names accepted for a column; the official MS3 file calls "name" "video_id".
    aliases = {"name": ("name", "video_id")}
    used = ()  # the columns clip_dict reads
    num_frames = 5

    def __init__(self, root, split=None, subset=None):
        if subset is not None:
            raise ConfigError(
                "Layout {!r} has no subsets (got subset={!r}); subsets exist only in the "
                "'avss' layout.".format(self.name, subset)
            )
        self.root = root
        self.split = split

    @property
    def data_root(self):
        """The ``Single-source``/``Multi-sources`` folder (resolved when the data is read)."""
        nested = os.path.join(self.root, self.folder)
        if not os.path.isdir(nested) and os.path.isfile(os.path.join(self.root, self.csv_name)):
            return self.root
        return nested

    @property
    def metadata_file(self):
        return os.path.join(self.data_root, self.csv_name)

    def records(self):
        """Yield one record {column: value} per clip of the split, streaming the metadata CSV."""
        path = self.metadata_file
        first, rows = read_csv(path, "AVSBench {} metadata file".format(self.name))
        position = self._positions(first, path)
        if position is None:  # no header row: the first row is a clip
            position = {c: self.columns.index(c) for c in self.used}
            rows, start = itertools.chain([first], rows), 1
            self._check_headerless(first, path)
        else:
            start = 2
        records = self._records(rows, position, path, start)
        yield from select_rows(records, path, "split", self.split, key=lambda r: r["split"])

    def _positions(self, header, path):
        """{column: index} from a header row, or None when the row names no known column."""
        names = {c: self.aliases.get(c, (c,)) for c in self.columns}
        if not any(cell in alias for cell in header for alias in names.values()):
            return None
        found = {c: next((header.index(a) for a in names[c] if a in header), None)
                 for c in self.used}
        missing = [c for c in self.used if found[c] is None]
        if missing:
            raise DataError(
                "{} lacks column(s) {} (header: {}). The {} layout reads the columns {} by "
                "header name, in any order; add the missing column(s), e.g. from the metadata "
                "CSV of the official AVSBench release.".format(
                    path, missing, ",".join(header), self.name, ",".join(self.used))
            )
        return found

    def _check_headerless(self, first, path):
        """A first row that names no column must be a clip, else it is an unknown header."""
        split = self.columns.index("split")
        if len(first) <= split or first[split] not in SPLITS:
            raise DataError(
                "{}: the first row ({}) names none of the columns {} and is not a clip of "
                "split {}. Name the columns in the header (or remove the header row to read "
                "the columns by position in that order).".format(
                    path, ",".join(first), ",".join(self.columns), "/".join(SPLITS))
            )

    def _records(self, rows, position, path, start):
        needed = max(position.values()) + 1
        for line, row in enumerate(rows, start=start):
            if len(row) < needed:
                raise DataError(
                    "{} line {}: {} value(s) but column {!r} is number {}; fix or delete the "
                    "line.".format(path, line, len(row),
                                   max(position, key=position.get), needed)
                )
            yield {c: row[i] for c, i in position.items()}

    def _base(self, *parts):
        return os.path.join(self.data_root, self.data_folder, *parts)

    def _log_mel_if_present(self, path):
        return path if os.path.isfile(path) else None


class S4Layout(_AVSBenchObjectLayout):
    """AVSBench Single-source (S4): one sounding object category per clip."""

    name = "avsbench_s4"
    folder = "Single-source"
    csv_name = "s4_meta_data.csv"
    data_folder = "s4_data"
    columns = ("name", "start", "category", "split")
    used = ("name", "category", "split")

    def clip_dict(self, record):
        """Dataset dict of one metadata record, without height/width (see load_avs_clips)."""
        name, category, split = record["name"], record["category"], record["split"]
        folder = (split, category, name)
        frames = [self._base("visual_frames", *folder, "{}_{}.png".format(name, k))
                  for k in range(1, self.num_frames + 1)]
        # The official release annotates only the first frame of training clips.
        annotated = 1 if split == "train" else self.num_frames
        masks = [self._base("gt_masks", *folder, "{}_{}.png".format(name, k))
                 if k <= annotated else None for k in range(1, self.num_frames + 1)]
        return {
            "clip_id": name,
            "file_names": frames,
            "sem_seg_file_names": masks,
            "mask_format": "binary",
            "audio_file_name": self._base("audio_wav", split, category, name + ".wav"),
            "audio_log_mel_file": self._log_mel_if_present(
                self._base("audio_log_mel", split, category, name + ".pkl")),
            "category": category,
        }


class MS3Layout(_AVSBenchObjectLayout):
    """AVSBench Multi-sources (MS3): several, changing sounding objects per clip."""

    name = "avsbench_ms3"
    folder = "Multi-sources"
    csv_name = "ms3_meta_data.csv"
    data_folder = "ms3_data"
    columns = ("name", "split")
    used = ("name", "split")

    def clip_dict(self, record):
        """Dataset dict of one metadata record, without height/width (see load_avs_clips)."""
        name, split = record["name"], record["split"]
        steps = range(1, self.num_frames + 1)
        return {
            "clip_id": name,
            # Frames were extracted from "<name>.mp4" and kept that name; no split folder.
            "file_names": [self._base("visual_frames", name, "{}.mp4_{}.png".format(name, k))
                           for k in steps],
            "sem_seg_file_names": [
                self._base("gt_masks", split, name, "{}_{}.png".format(name, k)) for k in steps],
            "mask_format": "binary",
            "audio_file_name": self._base("audio_wav", split, name + ".wav"),
            "audio_log_mel_file": self._log_mel_if_present(
                self._base("audio_log_mel", split, name + ".pkl")),
        }
