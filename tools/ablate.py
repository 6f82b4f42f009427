#!/usr/bin/env python
"""`make ablate`: the paper's ablations (Tables 3-8) on AVS-Synth MS3 with the CPU recipe.

Every row is ``configs/synth/ms3.yaml`` plus the row's switches, trained and evaluated by
``train_net.py`` in a subprocess for each seed (``SEED``), ``--jobs`` runs at a time with the
CPU threads split between them; the full model is trained once and shared by every table.
Tables 3-8 go to ``<output-dir>/tables.md`` (and ``tables.json``) as mean ± sample std over
seeds of M_J and M_F (official batch protocol), with the difference to the full model and the
number of seeds, as the paper reports them.

A run whose ``result.json`` exists is skipped, and an interrupted run resumes from its last
checkpoint, so re-running the command continues where it stopped. The tables hold every
finished run of the same recipe (config, --max-iter, --dataset, options, AVS-Synth's
frame size) in the output folder.

    python tools/ablate.py                                  # every row, seeds 0 1 2
    python tools/ablate.py --only full bcsm_off --seeds 0 --max-iter 100
    python tools/ablate.py --dataset t=avsbench_ms3:/data/tree:train ... DATASETS.TRAIN "('t',)"

Without ``--dataset`` the AVS-Synth MS3 data is generated first (a no-op when present), as
``make demo`` does. Arguments after the options are config options for every run.
"""
import argparse
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import namedtuple

from tqdm import tqdm

from selm_d2 import load_config
from selm_d2.utils import write_text_atomic
from train_jobs import job_env, run_jobs

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_CONFIG = "configs/synth/ms3.yaml"
RESULT_FILE = "result.json"

# Row key -> (label, config options). The switches are the paper's ablations (README,
# "Ablations"); "w/o CLEVER" is our single-level decoder, the paper swaps in AVSegFormer's.
ROWS = {
    "full": ("SelM", []),
    "bcsm_off": ("w/o BCSM", ["MODEL.SELM.BCSM.MODE", "off"]),
    "dam_none": ("w/o DAM", ["MODEL.SELM.DAM.MODE", "none"]),
    "single_level": ("w/o CLEVER (single-level decoder)",
                     ["MODEL.SELM.CLEVER.CROSS_LEVEL", "False"]),
    "dam_add": ("Add", ["MODEL.SELM.DAM.MODE", "add"]),
    "dam_concat": ("Concat", ["MODEL.SELM.DAM.MODE", "concat"]),
    "no_audio_ca": ("w/o Audio CA", ["MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN", "False"]),
    "no_video_ca": ("w/o Video CA", ["MODEL.SELM.CLEVER.VIDEO_CROSS_ATTN", "False"]),
    "dam_a2v": ("A2V Block", ["MODEL.SELM.DAM.MODE", "a2v"]),
    "dam_v2a": ("V2A Block", ["MODEL.SELM.DAM.MODE", "v2a"]),
    "bcsm_a2v": ("A2V-SeM", ["MODEL.SELM.BCSM.MODE", "a2v"]),
    "bcsm_v2a": ("V2A-SeM", ["MODEL.SELM.BCSM.MODE", "v2a"]),
    "loss_bce": ("BCE", ["MODEL.SELM.LOSS.DICE_WEIGHT", "0.0",
                         "MODEL.SELM.LOSS.AUX_WEIGHTS", "[0.0, 0.0, 0.0]"]),
    "loss_bce_dice": ("+DICE", ["MODEL.SELM.LOSS.AUX_WEIGHTS", "[0.0, 0.0, 0.0]"]),
    # CLEVER's mask head for AVSS (study "avss_heads"; NUM_QUERIES 8 from the synth recipe).
    "head_dot": ("dot (paper): one query per output, 71 queries",
                 ["MODEL.SELM.CLEVER.MASK_HEAD", "dot", "MODEL.SELM.CLEVER.NUM_QUERIES", "71"]),
    "head_mix": ("mix (ours): 1x1 conv of 8 query maps to 71 logits, rank 8",
                 ["MODEL.SELM.CLEVER.MASK_HEAD", "mix"]),
    "head_semantic": ("semantic (Mask2Former): 8 queries' class scores x masks",
                      ["MODEL.SELM.CLEVER.MASK_HEAD", "semantic"]),
}
# (title, [(row key, label in this table)]), the full model last as in the paper.
TABLES = [
    ("Table 3: Effect of the essential components",
     [("bcsm_off", None), ("dam_none", None), ("single_level", None), ("full", "SelM")]),
    ("Table 4: Effects of early fusion strategies",
     [("dam_add", None), ("dam_concat", None), ("full", "DAM")]),
    ("Table 5: Ablation study on CLEVER",
     [("no_audio_ca", None), ("no_video_ca", None), ("full", "CLEVER")]),
    ("Table 6: Impact of dual modality alignment in early fusion",
     [("dam_a2v", None), ("dam_v2a", None), ("full", "DAM")]),
    ("Table 7: Ablation study on BCSM",
     [("bcsm_a2v", None), ("bcsm_v2a", None), ("full", "BCSM")]),
    ("Table 8: Ablation study on loss function",
     [("loss_bce", None), ("loss_bce_dice", None), ("full", "+DICE+Aux")]),
]
# config: every row starts from it; data: (folder, layout, categories) of the AVS-Synth it
# generates; tables: as TABLES; metrics: (region, boundary) of its task.
Study = namedtuple("Study", "config data tables metrics")
STUDIES = {
    "paper": Study(DEFAULT_CONFIG, ("avs_synth", "ms3", 6), TABLES, ("M_J", "M_F")),
    "avss_heads": Study("configs/synth/avss70.yaml", ("avs_synth70", "avss", 70),
                        [("AVSS mask heads on AVS-Synth-70 (70 categories + background)",
                          [("head_dot", None), ("head_mix", None), ("head_semantic", None)])],
                        ("mIoU", "F")),
}


def _run_dir(output_dir, row, seed):
    return os.path.join(output_dir, "runs", row, "seed{}".format(seed))


def _read_metrics(run_dir):
    """{"M_J", "M_F", "M_F_key"} (binary tasks) or {"mIoU", "F", "M_F_key": "F"} (AVSS) from
    the evaluation train_net.py ran after training."""
    paths = sorted(glob.glob(os.path.join(run_dir, "inference", "*", "avs_results.json")))
    if not paths:
        raise SystemExit("no evaluation results under {}/inference: is DATASETS.TEST set?"
                         .format(run_dir))
    with open(paths[0]) as f:
        metrics = json.load(f)["metrics"]
    dataset = os.path.basename(os.path.dirname(paths[0]))
    if "mIoU" in metrics:
        return {"mIoU": metrics["mIoU"], "F": metrics["F"], "M_F_key": "F", "dataset": dataset}
    f_key = next(k for k in sorted(metrics) if k.startswith("M_F_official"))
    return {"M_J": metrics["M_J"], "M_F": metrics[f_key], "M_F_key": f_key, "dataset": dataset}


def _schedule(args):
    return ["SOLVER.MAX_ITER", str(args.max_iter)] if args.max_iter else []


def _resolved_config(args):
    """The config every run of this invocation starts from, resolved as train_net.py resolves
    it (defaults, config file, schedule, options)."""
    try:
        return load_config(os.path.join(REPO, args.config_file),
                           _schedule(args) + list(args.opts))
    except (KeyError, ValueError) as e:
        raise SystemExit(str(e.args[0])) from None


def _config_digest(cfg):
    """sha256 of ``cfg`` less what differs between runs or does not change the model (output
    folder, seed, checkpoint and evaluation periods).

    The file name and options alone do not identify a recipe: the file or a default can
    change between two invocations, and the old runs must then not count as the new recipe.
    """
    cfg = cfg.clone()
    cfg.OUTPUT_DIR, cfg.SEED = "", 0
    cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD = 0, 0
    return hashlib.sha256(cfg.dump().encode()).hexdigest()


def _recipe(args):
    """What every run of this invocation shares; runs of another recipe are not mixed in."""
    return {"config_file": args.config_file, "max_iter": args.max_iter,
            "dataset": list(args.dataset), "opts": list(args.opts),
            "config_digest": args.config_digest, "synth_size": args.synth_size}


def _finished(run_dir, args):
    """The saved metrics of a finished run, or None; refuses a run of another recipe."""
    result = os.path.join(run_dir, RESULT_FILE)
    if not os.path.isfile(result):
        return None
    with open(result) as f:
        done = json.load(f)
    recipe = _recipe(args)
    if done["recipe"] != recipe:
        differ = sorted(k for k in set(recipe) | set(done["recipe"])
                        if done["recipe"].get(k) != recipe.get(k))
        raise SystemExit("{} was trained with another recipe ({} differ: {} there, {} now; "
                         "config_digest covers the config file and the defaults, synth_size "
                         "the AVS-Synth frame size): use another "
                         "--output-dir or delete it".format(
                             run_dir, ", ".join(differ),
                             {k: done["recipe"].get(k) for k in differ},
                             {k: recipe.get(k) for k in differ}))
    return done


def _command(row, seed, args):
    """train_net.py for one run (resuming if interrupted; it evaluates after training)."""
    datasets = [a for spec in args.dataset for a in ("--dataset", spec)]
    return ([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
             args.config_file, "--resume"] + datasets
            + ["OUTPUT_DIR", _run_dir(args.output_dir, row, seed), "SEED", str(seed),
               "TEST.EVAL_PERIOD", "0"] + _schedule(args) + list(args.opts) + ROWS[row][1])


def train_and_evaluate(runs, args, env):
    """Train the unfinished ``(row, seed)`` runs, ``args.jobs`` at a time, and save their metrics.

    Each run's log is ``<run dir>/train_net.log``.
    """
    todo = [(row, seed) for row, seed in runs
            if _finished(_run_dir(args.output_dir, row, seed), args) is None]
    groups = [todo[i:i + args.jobs] for i in range(0, len(todo), args.jobs)]
    bar = tqdm(total=len(todo), desc="ablations", unit="run")
    for group in groups:
        bar.set_postfix_str(", ".join("{} seed {}".format(row, seed) for row, seed in group))
        dirs = [_run_dir(args.output_dir, row, seed) for row, seed in group]
        try:
            run_jobs([(_command(row, seed, args), os.path.join(run_dir, "train_net.log"))
                      for (row, seed), run_dir in zip(group, dirs)],
                     job_env(env, len(group)), REPO)
        except RuntimeError as e:
            raise SystemExit(str(e))
        for (row, seed), run_dir in zip(group, dirs):
            write_text_atomic(os.path.join(run_dir, RESULT_FILE), json.dumps(
                dict(_read_metrics(run_dir), row=row, seed=seed, recipe=_recipe(args)),
                indent=2))
        bar.update(len(group))
    bar.close()


def summarise(values):
    """Mean, sample std (None for one value) and count of a list of numbers."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def _cell(stats, full):
    text = "{:.1f}".format(stats["mean"])
    if stats["std"] is not None:
        text += " ± {:.1f}".format(stats["std"])
    if full is not None:
        text += " ({:+.1f})".format(stats["mean"] - full["mean"])
    return text


def tables(results, header, study_tables=TABLES, metrics=STUDIES["paper"].metrics):
    """Markdown of a study's tables from {row: {metric: summary}}; rows not run are left out.

    Rows are compared with "full" (the paper tables) where it is in the table.
    """
    lines = [header, ""]
    for title, rows in study_tables:
        done = [(key, label) for key, label in rows if key in results]
        if not done:
            continue
        lines += ["### " + title, "",
                  "| Method | {} | {} | seeds |".format(*metrics), "|---|---|---|---|"]
        for key, label in done:
            full = results.get("full") if key != "full" else None
            lines.append("| {} | {} | {} | {} |".format(
                label or ROWS[key][0],
                *(_cell(results[key][m], full[m] if full else None) for m in metrics),
                results[key][metrics[0]]["n"]))
        lines.append("")
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="rows: " + ", ".join(ROWS))
    parser.add_argument("--study", choices=list(STUDIES), default="paper",
                        help="paper: Tables 3-8 on AVS-Synth MS3; avss_heads: CLEVER's mask "
                             "heads on AVS-Synth-70 AVSS (default: %(default)s)")
    parser.add_argument("--config-file", default=None,
                        help="the recipe every row starts from (default: the study's, "
                             "{})".format(", ".join(s.config for s in STUDIES.values())))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, default=0,
                        help="SOLVER.MAX_ITER of every run (default: the config's)")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), metavar="ROW",
                        help="train only these rows (default: all): " + ", ".join(ROWS))
    parser.add_argument("--synth-size", type=int, default=0,
                        help="frame size of the AVS-Synth it generates (default: the config's "
                             "INPUT.AVS.SIZE; the README's tables of 2026-12-01 used 128)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs trained at once, the CPU threads split between them "
                             "(default: %(default)s; 2 was fastest on 2 cores)")
    parser.add_argument("--output-dir", default=None,
                        help="default: output/ablate (paper) or output/ablate_<study>")
    parser.add_argument("--dataset", action="append", default=[],
                        metavar="NAME=LAYOUT:ROOT[:SPLIT]",
                        help="passed to train_net.py (repeatable); skips generating AVS-Synth")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config options (KEY VALUE ...) for every run")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    config_file, (data_dir, layout, categories), study_tables, metrics = STUDIES[args.study]
    args.config_file = args.config_file or config_file
    cfg = _resolved_config(args)
    args.config_digest = _config_digest(cfg)
    # The data is part of the recipe: AVS-Synth at another size is another benchmark.
    args.synth_size = None if args.dataset else (args.synth_size or cfg.INPUT.AVS.SIZE)
    args.output_dir = os.path.abspath(args.output_dir or (
        "output/ablate" if args.study == "paper" else "output/ablate_" + args.study))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    if not args.dataset:
        subprocess.run([sys.executable, "-m", "selm_d2.data.synthetic", "--out",
                        os.path.join(env["DETECTRON2_DATASETS"], data_dir), "--layouts", layout,
                        "--num-categories", str(categories), "--size", str(args.synth_size)],
                       cwd=REPO, env=env, check=True)
    study_rows = [key for _, rows in study_tables for key, _ in rows]
    rows = args.only or list(dict.fromkeys(study_rows))
    train_and_evaluate([(row, seed) for row in rows for seed in args.seeds], args, env)
    # The tables hold every finished run, also of rows or seeds not asked for this time.
    per_row = {}
    for path in sorted(glob.glob(os.path.join(args.output_dir, "runs", "*", "seed*",
                                              RESULT_FILE))):
        with open(path) as f:
            run = json.load(f)
        if run["row"] in ROWS and run["recipe"] == _recipe(args):
            per_row.setdefault(run["row"], []).append(run)
    results = {row: {m: summarise([r[m] for r in finished]) for m in metrics}
               for row, finished in per_row.items()}
    finished = [r for row_runs in per_row.values() for r in row_runs]
    f_keys = sorted({r["M_F_key"] for r in finished})
    datasets = sorted({r["dataset"] for r in finished})
    header = ("## SelM ablations ({}) on {}\n\n"
              "Recipe: `{}` plus each row's switch{}. {} and {} ({}) × 100, mean ± sample std "
              "over seeds{}.".format(
                  "paper Tables 3-8" if args.study == "paper" else args.study,
                  ", ".join(datasets), args.config_file,
                  ", SOLVER.MAX_ITER {}".format(args.max_iter) if args.max_iter else "",
                  metrics[0], metrics[1], ", ".join(f_keys),
                  ", in brackets the difference to the full model" if "full" in study_rows
                  else ""))
    text = tables(results, header, study_tables, metrics)
    os.makedirs(args.output_dir, exist_ok=True)
    write_text_atomic(os.path.join(args.output_dir, "tables.md"), text)
    write_text_atomic(os.path.join(args.output_dir, "tables.json"), json.dumps(
        {"rows": {row: dict(results[row], label=ROWS[row][0], opts=ROWS[row][1],
                            runs=sorted(per_row[row], key=lambda r: r["seed"]))
                  for row in results},
         "tables": [{"title": t, "rows": [k for k, _ in rows]} for t, rows in study_tables]},
        indent=2))
    print("\n" + text)
    print("Written to {}/tables.md and tables.json".format(args.output_dir))
    return results


if __name__ == "__main__":
    main()
