"""Helpers shared by the layout parsers: metadata files, CSV rows, frame sizes, errors."""
import csv
import os

from PIL import Image
from ...utils import DataError, MissingFileError

__all__ = [
    "SPLITS",
    "NoClipsSelected",
    "missing_path_error",
    "read_csv",
    "require_file",
    "image_size",
    "select_rows",
]

SPLITS = ("train", "val", "test")

_HOW_TO_FIX = (
    "Builtin datasets are found under $DETECTRON2_DATASETS (now {!r}); see datasets/README.md "
    "for how to obtain AVSBench and the expected folder layout."
)


def missing_path_error(path, what):
    """MissingFileError for a missing dataset file/folder, saying where data is looked for."""
    hint = _HOW_TO_FIX.format(os.getenv("DETECTRON2_DATASETS", "datasets"))
    return MissingFileError("{} not found: expected {}. {}".format(
        what, os.path.abspath(path), hint))


def require_file(path, what):
    """Return `path`, raising `missing_path_error` when it is not a file."""
    if not os.path.isfile(path):
        raise missing_path_error(path, what)
    return path


class NoClipsSelected(DataError):
    """A metadata file lists no clip of the requested split (or subset)."""


def read_csv(path, what):
    """Rows of a metadata CSV: (first row, iterator of the other rows), cells stripped, blank
    rows skipped; the first row is usually the header. Streams the file. A UTF-8 byte-order
    mark (spreadsheet exports) is dropped."""
    require_file(path, what)

    def rows():
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield [cell.strip() for cell in row]

    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [cell.strip() for cell in next(csv.reader(f), [])]
    return header, rows()


def select_rows(rows, path, key_name, wanted, key):
    """Yield the rows whose `key(row)` equals `wanted` (all rows when wanted is None).

    Raises NoClipsSelected (a ValueError) naming the file when no row matches (e.g. a
    misspelt split, or a split that is not part of the data).
    """
    seen = set()
    matched = False
    for row in rows:
        value = key(row)
        if wanted is None or value == wanted:
            matched = True
            yield row
        else:
            seen.add(value)
    if not matched:
        raise NoClipsSelected(
            "No clip with {} {!r} in {} (values present: {}).".format(
                key_name, wanted, path, sorted(seen) or "none")
        )


def image_size(path):
    """(height, width) of an image from its header, without decoding the pixels."""
    if not os.path.isfile(path):
        raise MissingFileError(
            "Frame file not found: {}. Run `python -m selm_d2.data.check_avsbench <root>` to "
            "list every missing file of the dataset.".format(path)
        )
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as e:
        raise DataError(
            "Cannot read the image header of {} ({}). Replace the file with a valid image; "
            "`python -m selm_d2.data.check_avsbench <root>` lists every such file.".format(
                path, e)
        ) from e
    return height, width
