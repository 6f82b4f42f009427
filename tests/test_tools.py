"""tools/gpu_check.py runs its steps end to end (on CPU here, without AMP or mamba-ssm);
tools/benchmark.py's per-part timing sees every part of the paper model;
tools/ablate.py trains a row, writes the tables and resumes; tools/run_demo.py trains SelM and
its visual-only twin side by side and draws the summary picture."""
import json
import os
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import ablate  # noqa: E402
import benchmark  # noqa: E402
import gpu_check  # noqa: E402
import run_demo  # noqa: E402
import train_jobs  # noqa: E402


def test_gpu_check_steps_run_and_report(tmp_path):
    report = gpu_check.main(["--device", "cpu", "--iters", "2", "--clips", "4",
                             "--scan-lengths", "5", "--output-dir", str(tmp_path)])
    with open(tmp_path / "gpu_check.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    training = report["training"]
    assert training["iterations"] == 2 and not training["amp"]
    assert 0.0 <= training["metrics"]["M_J"] <= 100.0
    assert (tmp_path / "train" / "model_final.pth").is_file()
    assert report["scan"][0]["L"] == 5 and report["scan"][0]["vectorised_s"] > 0
    assert not report["mamba_parity"]["available"]
    assert "mamba-ssm" in report["mamba_parity"]["reason"]


def test_gpu_check_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit, match="No CUDA device.*--device cpu"):
        gpu_check.main(["--output-dir", str(tmp_path)])


def test_benchmark_breakdown_times_every_part_of_the_paper_model(monkeypatch):
    # The parts are found by module hooks: work that runs outside its part's module forward
    # would silently move into "other". So the Mamba layers are slowed down by a known time,
    # which must show up in BCSM's share.
    from selm_d2.modeling import mamba

    calls, forward = [], mamba._mixer_forward
    monkeypatch.setattr(mamba, "_mixer_forward", lambda *a, **k: calls.append(time.sleep(0.02))
                        or forward(*a, **k))
    (row,) = benchmark.bench_breakdown("cpu", repeats=1, frames=(2,))
    seconds = row["seconds"]
    slept = 0.02 * len(calls) / 2  # per forward: one warm-up and one timed
    assert slept > 0 and seconds["BCSM"] >= slept and seconds["other"] < slept
    assert row["T"] == 2
    assert set(seconds) == {"visual encoder", "VGGish", "DAM res2", "DAM res3", "DAM res4",
                            "DAM res5", "projections", "BCSM", "CLEVER", "other", "total"}
    assert all(v > 0 for k, v in seconds.items() if k != "other")
    parts = sum(v for k, v in seconds.items() if k not in ("other", "total"))
    assert abs(parts + seconds["other"] - seconds["total"]) < 1e-9


def test_benchmark_ratios_pair_the_sides_of_each_round():
    """A slow spell that hits both sides of one round does not move the ratio; one that hits
    a single call lands in the quartiles, not the median. Hand-computed values."""
    selm = [1.2, 2.4, 1.2, 1.2, 3.0]  # round 2: the machine is 2x slower for both sides
    encoders = [1.0, 2.0, 1.0, 1.0, 1.0]  # round 5: only SelM's call is hit
    ratio = benchmark.paired_ratio(selm, encoders)
    assert ratio == pytest.approx({"median": 1.2, "q1": 1.2, "q3": 1.2})
    # The table shows median (quartiles) of each ratio.
    row = {"backbone": "R50", "rounds": 5, "selm_s": 1.2, "backbone_alone_s": 0.9,
           "encoders_alone_s": 1.0, "selm_over_backbone": benchmark.paired_ratio(selm, [1.0] * 5),
           "selm_over_encoders": ratio, "clips_per_s": 1 / 1.2}
    table = benchmark.markdown({"machine": {"cpu": "x", "torch": "t", "cpu_threads": 2,
                                            "device": "cpu"}, "latency": [row]})
    assert "| R50 | 1.200 | 0.900 | 1.000 | 1.20× (1.20–2.40) | 1.20× (1.20–1.20) |" in table
    assert "median over rounds of that round's ratio" in table


def test_ablate_trains_one_row_writes_the_tables_and_skips_finished_runs(tmp_path, monkeypatch):
    from selm_d2.data.synthetic import generate

    root = str(tmp_path / "data")
    generate(root, layouts=("ms3",), clips_per_split={"train": 2, "val": 0, "test": 4}, size=32,
             seed=1, progress=False)
    # The recipe is a config file of the user's, based on the AVS-Synth one.
    config = tmp_path / "recipe.yaml"
    config.write_text("_BASE_: {}\n".format(os.path.join(REPO_ROOT, "configs/synth/ms3.yaml")))
    # Two runs side by side (--jobs 2), as make ablate trains them.
    argv = ["--only", "full", "bcsm_off", "--seeds", "0", "--max-iter", "2", "--jobs", "2",
            "--config-file", str(config), "--output-dir", str(tmp_path / "ablate"),
            "--dataset", "abl_train=avsbench_ms3:{}:train".format(root),
            "--dataset", "abl_test=avsbench_ms3:{}:test".format(root),
            "DATASETS.TRAIN", "('abl_train',)", "DATASETS.TEST", "('abl_test',)",
            "INPUT.AVS.SIZE", "32", "SOLVER.IMS_PER_BATCH", "2"]
    results = ablate.main(argv)
    assert set(results) == {"full", "bcsm_off"} and results["full"]["M_J"]["n"] == 1
    for row in results:
        log = (tmp_path / "ablate" / "runs" / row / "seed0" / "train_net.log").read_text()
        assert "Starting training from iteration 0" in log and "copypaste: " in log
    assert 0.0 <= results["full"]["M_J"]["mean"] <= 100.0
    text = (tmp_path / "ablate" / "tables.md").read_text()
    for title in ("Table 3", "Table 4", "Table 5", "Table 6", "Table 7", "Table 8"):
        assert title in text
    assert "| SelM | {:.1f} |".format(results["full"]["M_J"]["mean"]) in text
    with open(tmp_path / "ablate" / "tables.json") as f:
        saved = json.load(f)
    assert saved["rows"]["full"]["runs"][0]["seed"] == 0

    # A finished run is not trained again; another recipe in the same folder is refused.
    monkeypatch.setattr(ablate, "run_jobs", None)
    assert ablate.main(argv) == results
    with pytest.raises(SystemExit, match="another recipe.*opts"):
        ablate.main(argv + ["SOLVER.BASE_LR", "0.01"])
    with pytest.raises(SystemExit, match="SOLVER.BASE_LRR"):
        ablate.main(argv + ["SOLVER.BASE_LRR", "0.01"])
    # So is a run on AVS-Synth of another frame size (the data is part of the recipe).
    result = tmp_path / "ablate" / "runs" / "full" / "seed0" / ablate.RESULT_FILE
    assert saved["rows"]["full"]["runs"][0]["recipe"]["synth_size"] is None  # --dataset
    stamped = json.loads(result.read_text())
    stamped["recipe"]["synth_size"] = 128
    result.write_text(json.dumps(stamped))
    with pytest.raises(SystemExit, match="another recipe.*synth_size"):
        ablate.main(argv)
    stamped["recipe"]["synth_size"] = None
    result.write_text(json.dumps(stamped))
    # So is one whose config file has changed since, under the same name and options.
    config.write_text(config.read_text() + "SOLVER:\n  BASE_LR: 0.01\n")
    with pytest.raises(SystemExit, match="another recipe.*config_digest"):
        ablate.main(argv)


def test_ablate_summary_and_rows():
    stats = ablate.summarise([60.0, 62.0, 64.0])
    assert stats == {"mean": 62.0, "std": 2.0, "n": 3}
    assert ablate.summarise([5.0])["std"] is None
    table = ablate.tables({"full": {"M_J": stats, "M_F": stats},
                           "dam_none": {"M_J": ablate.summarise([58.0]), "M_F": stats}}, "#")
    assert "| w/o DAM | 58.0 (-4.0) | 62.0 ± 2.0 (+0.0) | 1 |" in table
    assert "| SelM | 62.0 ± 2.0 | 62.0 ± 2.0 | 3 |" in table
    # The AVSS head study reports mIoU and F, without a "full" row to compare with.
    avss = ablate.tables({"head_mix": {"mIoU": stats, "F": ablate.summarise([30.0])}}, "#",
                         ablate.STUDIES["avss_heads"].tables, ablate.STUDIES["avss_heads"].metrics)
    assert "| Method | mIoU | F | seeds |" in avss
    assert "| {} | 62.0 ± 2.0 | 30.0 | 3 |".format(ablate.ROWS["head_mix"][0]) in avss
    # Every study's rows are defined, and every row is in a table.
    in_tables = {key for study in ablate.STUDIES.values() for _, rows in study.tables
                 for key, _ in rows}
    assert in_tables == set(ablate.ROWS)


def test_run_demo_trains_selm_and_its_twin_side_by_side(tmp_path, monkeypatch):
    from selm_d2.data.synthetic import generate

    generate(str(tmp_path / "data" / "avs_synth"), layouts=("ms3",),
             clips_per_split={"train": 2, "val": 0, "test": 4}, size=32, seed=1, progress=False)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"))
    env.pop("OMP_NUM_THREADS", None)
    opts = ["SOLVER.MAX_ITER", "2", "INPUT.AVS.SIZE", "32", "SOLVER.IMS_PER_BATCH", "2"]
    root = tmp_path / "demo"
    results = run_demo.train_pair(str(root), env, 0, opts)
    for model in ("selm", "visual_only"):
        assert 0.0 <= results[model]["M_J"] <= 100.0
        assert (root / model / "model_final.pth").is_file()
    selm = results["selm"]
    assert selm["swapped_drop"] == selm["M_J"] - selm["swapped/M_J"]
    assert "silenced/fg_rate" in selm and "swapped/M_J" not in results["visual_only"]
    # The twin trained on silence, with its log in a file (SelM's went to the console).
    twin_log = (root / "visual_only.log").read_text()
    assert "Starting training from iteration 0" in twin_log and "copypaste: " in twin_log
    with open(root / "visual_only" / "config.yaml") as f:
        assert "SOURCE: silence" in f.read()
    md = run_demo.table({0: results}, [0], 1.0)
    assert "| SelM M_J | {:.1f} | ≥ 90 |".format(selm["M_J"]) in md
    # The summary picture: per clip, rows ground truth / prediction / BCSM map over its 5
    # frames, each 32 x 32 frame enlarged to DISPLAY_SIZE so that outlines stay legible.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    summary = np.asarray(Image.open(run_demo.render(str(root), 1, opts)))
    assert summary.shape == (3 * run_demo.DISPLAY_SIZE, 5 * run_demo.DISPLAY_SIZE, 3)
    assert len(list((root / "overlays").glob("*/heatmap_*.png"))) == 5


def test_train_jobs_split_the_threads_and_report_a_failing_job(tmp_path):
    assert train_jobs.threads_per_job(2, cpus=2) == 1
    assert train_jobs.threads_per_job(2, cpus=8) == 4
    assert train_jobs.threads_per_job(3, cpus=2) == 1
    assert train_jobs.job_env({"OMP_NUM_THREADS": "3"}, 2)["OMP_NUM_THREADS"] == "3"
    assert train_jobs.job_env({}, 1)["OMP_NUM_THREADS"] == str(train_jobs.threads_per_job(1))
    # Both jobs run to the end although one fails; the error names it and shows its log.
    ok, bad = tmp_path / "ok.log", tmp_path / "bad.log"
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*bad\.log.*went wrong") as err:
        train_jobs.run_jobs(
            [([sys.executable, "-c", "print('fine')"], str(ok)),
             ([sys.executable, "-c", "import sys; print('went wrong'); sys.exit(3)"], str(bad))],
            dict(os.environ), str(tmp_path))
    assert "print('fine')" not in str(err.value)
    assert ok.read_text().endswith("fine\n")
