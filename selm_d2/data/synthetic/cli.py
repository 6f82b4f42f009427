"""``python -m selm_d2.data.synthetic``: generate AVS-Synth from the command line."""
import argparse
import logging
import os

from .scene import (
    DEFAULT_CLIPS_PER_SPLIT,
    DEFAULT_SIZE,
    LAYOUTS,
    MAX_CATEGORIES,
    SPLITS,
    SYNTH_CATEGORIES,
)
from .writers import generate


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
