#!/usr/bin/env python
"""`make demo`: AVS-Synth end to end on CPU.

1. generate AVS-Synth (MS3 layout) under $DETECTRON2_DATASETS/avs_synth at the config's
   INPUT.AVS.SIZE (no-op when present);
2. train SelM (configs/synth/ms3.yaml) with train_net.py, resuming if interrupted;
3. with ``--twin``, at the same time its visual-only twin (same recipe, every clip hears
   silence), each with half of the CPU threads; the twin's log is output/demo/visual_only.log;
4. evaluate after training (SelM also with silenced / swapped audio);
5. draw overlays and CLEVER hit maps of test clips into output/demo/overlays/ and a summary
   picture output/demo/summary.png; print and save the results table (output/demo/results.md).

``--seeds 0 1 2`` repeats 2-4 with each seed (``SEED``) and reports mean ± standard deviation
over the seeds: the README's numbers come from that command. The first seed's models are in
output/demo/{selm,visual_only}/ (what ``make app`` serves), the others in output/demo/seed<S>/.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from selm_d2 import load_config
from selm_d2.data.masks import read_clip_masks
from selm_d2.engine import jobs
from selm_d2.engine.predictor import AVSPredictor, metadata_for
from selm_d2.utils import write_text_atomic
from selm_d2.utils.visualizer import (
    draw_heatmap,
    draw_prediction,
    enlarge,
    finest_level,
    write_image_atomic,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = "configs/synth/ms3.yaml"
TRAIN_SET, TEST_SET = "avs_synth_ms3_train", "avs_synth_ms3_test"
DISPLAY_SIZE = 128  # short side the overlays and the summary picture enlarge frames to
# Rows of the results table: (label, model, metric key, target text).
ROWS = [
    ("SelM M_J", "selm", "M_J", "≥ 90"),
    ("SelM M_F (official, bs 4)", "selm", "M_F_official_bs4", ""),
    ("SelM foreground on entirely silent clips (% pixels)", "selm", "fg_rate_silent", ""),
    ("SelM with silenced audio: foreground (% pixels)", "selm", "silenced/fg_rate", "≤ 1"),
    ("SelM with silenced audio: M_J", "selm", "silenced/M_J", ""),
    ("SelM with the next clip's audio: M_J", "selm", "swapped/M_J", ""),
    ("drop of M_J with swapped audio (points)", "selm", "swapped_drop", "≥ 35"),
    ("visual-only twin M_J (same recipe, silent audio)", "visual_only", "M_J", ""),
]


def run(cmd, env):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def train_pair(root, env, seed, opts=(), twin=False):
    """Train and evaluate SelM and, with ``twin``, its visual-only twin side by side.

    SelM's log goes to this console, the twin's to ``<root>/visual_only.log``; ``opts`` are
    config options for both.
    Returns: {"selm": metrics[, "visual_only": metrics]}.
    """
    seed_opts = list(opts) + ["SEED", str(seed)]
    selm_dir, twin_dir = os.path.join(root, "selm"), os.path.join(root, "visual_only")
    # The options given last win: the caller's and the seed over the illusion setting.
    runs = [(jobs.train_command(CONFIG, selm_dir, ["TEST.AVS.ILLUSION", "True"] + seed_opts),
             None)]
    if twin:
        runs.append((jobs.train_command(CONFIG, twin_dir, ["TEST.AVS.ILLUSION", "False"] + seed_opts
                                        + ["INPUT.AVS.AUDIO.SOURCE", "silence"]), twin_dir + ".log"))
    for cmd, log in runs:
        print("\n$ " + " ".join(cmd) + ("  > " + log if log else ""), flush=True)
    jobs.run_jobs(runs, jobs.job_env(env, len(runs)), REPO)
    selm = jobs.read_metrics(selm_dir, TEST_SET)
    selm["swapped_drop"] = selm["M_J"] - selm["swapped/M_J"]
    results = {"selm": selm}
    if twin:
        results["visual_only"] = jobs.read_metrics(twin_dir, TEST_SET)
    return results


def render(out_root, num_clips, opts=()):
    """Overlays + heat maps for the first test clips, and one summary picture."""
    cfg = load_config(os.path.join(REPO, CONFIG), list(opts) + [
        "MODEL.WEIGHTS", os.path.join(out_root, "selm", "model_final.pth"),
        "MODEL.SELM.RETURN_MAPS", "True"])
    cfg.freeze()
    predictor = AVSPredictor(cfg)
    metadata = metadata_for(cfg)
    dicts = DatasetCatalog.get(TEST_SET)
    rows = []
    for clip in dicts[:num_clips]:
        out = predictor(clip)
        labels = out["sem_seg_labels"].cpu().numpy()
        gt = read_clip_masks(clip)
        maps = out.get("hit_maps", {})
        finest = finest_level(maps) if maps else None
        row_pred, row_gt, row_heat = [], [], []
        for k, path in enumerate(clip["file_names"]):
            frame = read_image(path, format="RGB")
            # Enlarged before drawing so that outlines on 64x64 frames stay legible.
            frame, label, gt_label = (enlarge(a, DISPLAY_SIZE) for a in (
                frame, labels[k], np.where(gt[k] == 255, 0, gt[k])))
            pred = draw_prediction(frame, label, metadata)
            truth = draw_prediction(frame, gt_label, metadata)
            heat = draw_heatmap(frame, maps[finest][k].float().cpu().numpy()) if finest else frame
            folder = os.path.join(out_root, "overlays", clip["clip_id"])
            write_image_atomic(os.path.join(folder, "frame_{}.png".format(k)), pred)
            write_image_atomic(os.path.join(folder, "heatmap_{}.png".format(k)), heat)
            row_pred.append(pred)
            row_gt.append(truth)
            row_heat.append(heat)
        rows.append(np.concatenate([np.concatenate(r, axis=1) for r in (row_gt, row_pred, row_heat)], axis=0))
    summary = os.path.join(out_root, "summary.png")
    write_image_atomic(summary, np.concatenate(rows, axis=0))
    return summary


def table(results, seeds, minutes):
    """Markdown table of mean ± sample standard deviation over ``seeds``.

    results: {seed: {"selm": metrics, "visual_only": metrics}}.
    """
    header = "seed {}".format(seeds[0]) if len(seeds) == 1 else "mean ± std over seeds {}".format(
        ", ".join(map(str, seeds)))
    lines = ["| AVS-Synth MS3 test (100 clips) | {} | target |".format(header), "|---|---|---|"]
    for label, model, key, target in ROWS:
        values = [r.get(model, {}).get(key) for r in results.values()]
        if any(v is None for v in values):
            continue
        lines.append("| {} | {} | {} |".format(label, jobs.format_mean_std(values), target))
    lines.append("| wall time after install (min) | {:.1f} | ≤ 15 per seed |".format(minutes))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--render-clips", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train and evaluate with each seed; report mean ± std")
    parser.add_argument("--twin", action="store_true",
                        help="also train the visual-only twin (silent audio) side by side")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config options (KEY VALUE ...) for both trainings; the README's "
                             "numbers use none")
    args = parser.parse_args(argv)
    start = time.time()
    env = dict(os.environ)
    env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    out_root = os.path.join(REPO, args.output_dir)

    # Frames and masks at the size the model trains and is scored at (synthetic.DEFAULT_SIZE).
    size = load_config(os.path.join(REPO, CONFIG), args.opts).INPUT.AVS.SIZE
    run([sys.executable, "-m", "selm_d2.data.synthetic", "--out",
         os.path.join(env["DETECTRON2_DATASETS"], "avs_synth"), "--layouts", "ms3",
         "--size", str(size)], env)
    results = {}
    for seed in args.seeds:
        root = out_root if seed == args.seeds[0] else os.path.join(out_root, "seed{}".format(seed))
        results[seed] = train_pair(root, env, seed, args.opts, twin=args.twin)
    os.environ["DETECTRON2_DATASETS"] = env["DETECTRON2_DATASETS"]
    summary = render(out_root, args.render_clips, args.opts)

    text = table(results, args.seeds, (time.time() - start) / 60 / len(args.seeds))
    write_text_atomic(os.path.join(out_root, "results.md"), text)
    write_text_atomic(os.path.join(out_root, "results.json"), json.dumps(results, indent=2))
    print("\n" + text)
    print("Overlays and heat maps: {}/overlays/, summary picture: {}".format(out_root, summary))


if __name__ == "__main__":
    main()
