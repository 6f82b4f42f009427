"""Check an AVS dataset on disk before training: missing, mis-sized and corrupt files.

    python -m selm_d2.data.check_avsbench <root> [--layout auto] [--splits train val test]
                                                 [--deep] [--max-report 20]

`root` is ``$DETECTRON2_DATASETS``, ``avsbench_object/``, ``avsbench_semantic/`` or a
manifest file; ``--layout auto`` finds every S4/MS3/AVSS release under it. Clips are parsed
by the same layout parsers as the registered datasets and streamed (one clip in memory at a
time). Without ``--deep`` only file existence and image headers (sizes) are checked;
``--deep`` also decodes every image and mask (PIL verify + load, AVSS palette check) and
every audio file, and reports audio that gives fewer whole 0.96 s VGGish examples than the
clip has frames (e.g. a wav cut short: libsndfile reads the samples that are there).

A split that the metadata does not list (e.g. a download of the test split only) is reported
as absent, not as a problem. Exit status 1 when any problem is found, or nothing to check.
"""
import argparse
import os
import sys
from collections import OrderedDict

from PIL import Image
from tqdm import tqdm

from .audio import AudioError, min_audio_seconds, num_whole_examples, read_waveform
from .datasets.common import NoClipsSelected
from .datasets.register import LAYOUTS, build_layout
from .masks import read_mask

__all__ = ["PROBLEMS", "check_split", "detect_layouts", "main"]

PROBLEMS = OrderedDict([
    ("bad_clips", "clip folders/metadata that cannot be parsed (e.g. frame count)"),
    ("missing_frames", "frame files that do not exist"),
    ("missing_masks", "mask files that do not exist"),
    ("missing_audio", "audio files that do not exist"),
    ("size_mismatch", "masks (or frames) whose size differs from the clip's first frame"),
    ("corrupt_images", "frames/masks that cannot be read or decoded"),
    ("corrupt_audio", "audio files that cannot be decoded or hold no/non-finite samples "
                      "(--deep)"),
    ("short_audio", "audio shorter than the clip: fewer 0.96 s examples than frames (--deep)"),
])


def detect_layouts(root):
    """[(layout, layout_root)] of every dataset whose metadata file is under `root`."""
    if os.path.isfile(root):
        return [("manifest", root)]
    found = []
    for base in (root, os.path.join(root, "avsbench_object"),
                 os.path.join(root, "avsbench_semantic")):
        for layout in ("avsbench_s4", "avsbench_ms3", "avss"):
            if os.path.isfile(build_layout(base, layout).metadata_file):
                found.append((layout, base))
    return found


class _SplitReport:
    """Problem counts of one split; prints the first `max_report` paths of each kind."""

    def __init__(self, name, max_report):
        self.name = name
        self.max_report = max_report
        self.clips = 0
        self.absent = None  # why the split has no clip, when it has none
        self.counts = OrderedDict((kind, 0) for kind in PROBLEMS)

    def add(self, kind, message):
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_report:
            tqdm.write("[{}] {}: {}".format(kind, self.name, message))
        elif self.counts[kind] == self.max_report + 1:
            tqdm.write("[{}] {}: further problems of this kind are counted, not "
                       "printed".format(kind, self.name))

    @property
    def total(self):
        return sum(self.counts.values())


def _image_size(path, report, deep):
    """(W, H) of an image, or None after reporting it as corrupt."""
    try:
        with Image.open(path) as image:
            size = image.size
            if deep:
                image.verify()
        if deep:
            with Image.open(path) as image:
                image.load()
        return size
    except Exception as e:  # PIL raises many types for broken files
        report.add("corrupt_images", "{} ({}: {})".format(path, type(e).__name__, e))
        return None


def _check_image(path, missing_kind, expected_size, report, deep):
    """Report a missing, corrupt or wrongly sized image; returns its (W, H) or None."""
    if not os.path.isfile(path):
        report.add(missing_kind, path)
        return None
    size = _image_size(path, report, deep)
    if size is not None and expected_size is not None and size != expected_size:
        report.add("size_mismatch", "{} is {}x{}, the clip's first frame {}x{}".format(
            path, size[0], size[1], expected_size[0], expected_size[1]))
    return size


def _check_clip(clip, report, deep):
    frame_size = None
    for path in clip["file_names"]:
        size = _check_image(path, "missing_frames", frame_size, report, deep)
        frame_size = frame_size or size
    for path in clip["sem_seg_file_names"]:
        if path is None:
            continue
        size = _check_image(path, "missing_masks", frame_size, report, deep)
        if deep and size is not None:
            try:
                read_mask(path, clip["mask_format"])
            except ValueError as e:  # e.g. colours outside the AVSS palette
                report.add("corrupt_images", str(e))
    audio = clip["audio_file_name"]
    if not os.path.isfile(audio):
        report.add("missing_audio", audio)
    elif deep:
        _check_audio(audio, len(clip["file_names"]), report)


def _check_audio(path, num_frames, report):
    """Decode an audio file; report it when corrupt or shorter than `num_frames` examples."""
    try:
        waveform, rate = read_waveform(path)
    except AudioError as e:
        report.add("corrupt_audio", str(e))
        return
    count = num_whole_examples(waveform.shape[0], rate)
    if count < num_frames:
        report.add("short_audio", "{} holds {:.2f} s of audio: {} whole 0.96 s example(s) for "
                   "the clip's {} frames (needs {:.3f} s); loading pads it by "
                   "INPUT.AVS.AUDIO.SHORT_POLICY".format(
                       path, waveform.shape[0] / rate, count, num_frames,
                       min_audio_seconds(num_frames)))


def check_split(layout, root, split, deep=False, max_report=20):
    """Check one split of a dataset; returns its _SplitReport (clips and problem counts)."""
    parser = build_layout(root, layout, split=split)
    report = _SplitReport("{} {}".format(layout, split or "all"), max_report)
    try:
        total = sum(1 for _ in parser.records())
        records = parser.records()
    except NoClipsSelected as e:
        report.absent = str(e)
        return report
    except (OSError, ValueError) as e:
        report.add("bad_clips", str(e))
        return report
    for record in tqdm(records, total=total, desc=report.name, unit="clip", leave=False,
                       file=sys.stderr):
        report.clips += 1
        try:
            clip = parser.clip_dict(record)
        except (OSError, ValueError) as e:
            report.add("bad_clips", str(e))
            continue
        _check_clip(clip, report, deep)
    return report


def _print_table(reports, deep):
    columns = ["dataset", "clips"] + list(PROBLEMS)
    rows = [[r.name, "absent" if r.absent else str(r.clips)] + [str(n) for n in r.counts.values()]
            for r in reports]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print()
    for row in [columns] + rows:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
    if not deep:
        print("(images were checked by header only and audio by existence: add --deep to "
              "decode every file)")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m selm_d2.data.check_avsbench",
        description="Check an AVSBench (S4/MS3/AVSS) or manifest dataset for missing, "
                    "mis-sized and corrupt files.")
    parser.add_argument("root", help="$DETECTRON2_DATASETS, avsbench_object/, "
                                     "avsbench_semantic/ or a manifest .json/.csv file")
    parser.add_argument("--layout", default="auto", choices=["auto"] + sorted(LAYOUTS))
    parser.add_argument("--splits", nargs="+", default=None,
                        help="default: train val test (manifests: every clip)")
    parser.add_argument("--deep", action="store_true",
                        help="decode every image/mask and open every audio file")
    parser.add_argument("--max-report", type=int, default=20,
                        help="paths printed per problem kind and split")
    args = parser.parse_args(argv)

    datasets = detect_layouts(args.root) if args.layout == "auto" else [(args.layout, args.root)]
    if not datasets:
        print("No AVSBench metadata (Single-source/s4_meta_data.csv, "
              "Multi-sources/ms3_meta_data.csv or metadata.csv) found under {}. See "
              "datasets/README.md for the expected layout.".format(os.path.abspath(args.root)))
        return 1
    reports = []
    for layout, root in datasets:
        splits = args.splits or ([None] if layout == "manifest" else ["train", "val", "test"])
        print("Checking {} at {}".format(layout, os.path.abspath(root)))
        for split in splits:
            reports.append(check_split(layout, root, split, args.deep, args.max_report))
    _print_table(reports, args.deep)
    absent = [r for r in reports if r.absent]
    for r in absent:
        print("{}: absent ({})".format(r.name, r.absent))
    present = sorted({r.name.split()[-1] for r in reports if not r.absent})
    if absent and present:
        print("Absent splits are not problems; `--splits {}` checks only the splits "
              "present.".format(" ".join(present)))
    problems = sum(r.total for r in reports)
    if not present:
        print("No clip to check: every requested split is absent from the metadata.")
        return 1
    print("{} problem(s) found.".format(problems) if problems else "No problems found.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
