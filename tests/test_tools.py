"""tools/gpu_check.py runs its steps end to end (on CPU here, without AMP or mamba-ssm);
tools/benchmark.py's per-part timing puts every module of SelM in its part, and each of its
sections runs (tiny, on the AVS-Synth configs); tools/run_demo.py trains SelM and its
visual-only twin side by side and draws the summary picture; selm_d2.engine.jobs shares the
threads out and reports a failing job."""
import collections
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import benchmark  # noqa: E402
import gpu_check  # noqa: E402
import run_demo  # noqa: E402
from selm_d2.engine import jobs  # noqa: E402


@pytest.mark.slow
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


# The parts of the time breakdown, written out here rather than taken from benchmark.py: each
# module path prefix of SelM and the part it belongs to.
EXPECTED_PARTS = [("backbone.", "visual encoder"), ("audio_encoder.", "VGGish"),
                  ("audio_proj.", "projections"), ("sem_seg_head.in_proj.", "projections"),
                  ("sem_seg_head.bcsm.", "BCSM"), ("sem_seg_head.clever.", "CLEVER")] + [
    ("dam.{}.".format(stage), "DAM " + stage) for stage in ("res2", "res3", "res4", "res5")]


def _expected_part(path):
    parts = [label for prefix, label in EXPECTED_PARTS if path.startswith(prefix)]
    assert len(parts) == 1, path  # no module of SelM outside the parts
    return parts[0]


def test_benchmark_breakdown_puts_every_module_in_its_part(monkeypatch):
    """The parts are timed by hooks on the model's modules: a module left out would silently
    move its time into "other". A fake clock makes the check exact: it advances by 1 per call
    of every innermost module and by 1000 per Mamba scan (a function, not a module, inside
    BCSM), so each part's "seconds" are a count that is known from the calls themselves."""
    from selm_d2.modeling import mamba

    cfg = benchmark.load_cfg(benchmark.SYNTH_CONFIG, "cpu")
    model = benchmark.build_seeded(cfg).eval()
    now = [0.0]
    calls = collections.Counter()
    scans = [0]

    def tick(path):
        def hook(module, inputs, output):
            now[0] += 1
            calls[_expected_part(path)] += 1
        return hook

    # Registered before the timer's own hooks, so that each tick lands inside its part.
    for path, module in model.named_modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(tick(path))
    forward = mamba._mixer_forward

    def slow_mixer(*args, **kwargs):
        now[0] += 1000
        calls["BCSM"] += 1000
        scans[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(mamba, "_mixer_forward", slow_mixer)
    repeats = 2
    seconds = benchmark.time_parts(model, benchmark.clip_input(2, cfg.INPUT.AVS.SIZE), "cpu",
                                   repeats, clock=lambda: now[0])
    per_call = {part: count / (1 + repeats) for part, count in calls.items()}  # + warm-up
    assert set(seconds) == set(per_call) | {"other", "total"}
    assert set(per_call) == {"visual encoder", "VGGish", "DAM res2", "DAM res3", "DAM res4",
                             "DAM res5", "projections", "BCSM", "CLEVER"}
    for part, count in per_call.items():
        assert seconds[part] == count, part
    # 4 levels x 2 Mamba stacks (video, audio) x NUM_BLOCKS blocks, one scan each per call.
    assert scans[0] == (1 + repeats) * 4 * 2 * cfg.MODEL.SELM.BCSM.NUM_BLOCKS
    assert seconds["other"] == 0 and seconds["total"] == sum(per_call.values())
    # The timer's hooks are gone afterwards (it registered the only pre-hooks).
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.slow
def test_benchmark_quick_runs_every_section(tmp_path):
    report = benchmark.main(["--quick", "--device", "cpu", "--output-dir", str(tmp_path)])
    assert set(benchmark.SECTIONS) <= set(report) and report["quick"]
    with open(tmp_path / "benchmark.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    for name in ("benchmark.md", "scaling.png", "breakdown.png"):
        assert (tmp_path / name).is_file(), name
    table = (tmp_path / "benchmark.md").read_text()
    assert "--quick" in table and "| AVS-Synth (5 × 64²) |" in table
    (row,) = report["breakdown"]
    assert {"visual encoder", "VGGish", "DAM res5", "projections", "BCSM", "CLEVER"} <= set(
        row["seconds"])
    assert [r["size"] for r in report["scaling"]["resolution"]] == [64, 96]
    assert len(report["avss_memory"]) == 3 and report["avss_memory"][0]["T"] == 10
    assert [(r["size"], r["selm_d2_uses_nnpack"]) for r in report["conv3x3"]] == [
        (16, False), (96, True)]
    assert "| 32 → 256 (2 × 96²) |" in table and report["conv3x3"][1]["nnpack_workspace_mb"] > 0


def test_benchmark_ratios_pair_the_sides_of_each_round():
    """A slow spell that hits both sides of one round does not move the ratio; one that hits
    a single call lands in the quartiles, not the median. Hand-computed values."""
    selm = [1.2, 2.4, 1.2, 1.2, 3.0]  # round 2: the machine is 2x slower for both sides
    encoders = [1.0, 2.0, 1.0, 1.0, 1.0]  # round 5: only SelM's call is hit
    ratio = benchmark.paired_ratio(selm, encoders)
    assert ratio == pytest.approx({"median": 1.2, "q1": 1.2, "q3": 1.2})
    # The table shows median (quartiles) of each ratio.
    row = {"backbone": "R50", "T": 5, "size": 448, "rounds": 5, "selm_s": 1.2, "backbone_alone_s": 0.9,
           "encoders_alone_s": 1.0, "selm_over_backbone": benchmark.paired_ratio(selm, [1.0] * 5),
           "selm_over_encoders": ratio, "clips_per_s": 1 / 1.2}
    table = benchmark.markdown({"machine": {"cpu": "x", "torch": "t", "cpu_threads": 2,
                                            "device": "cpu"}, "latency": [row]})
    assert "| R50 (5 × 448²) | 1.200 | 0.900 | 1.000 | 1.20× (1.20–2.40) | 1.20× (1.20–1.20) |" in table
    assert "median over rounds of that round's ratio" in table


@pytest.mark.slow
def test_run_demo_trains_selm_and_its_twin_side_by_side(tmp_path, monkeypatch):
    from selm_d2.data.synthetic import generate

    generate(str(tmp_path / "data" / "avs_synth"), layouts=("ms3",),
             clips_per_split={"train": 2, "val": 0, "test": 4}, size=32, seed=1, progress=False)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"))
    env.pop("OMP_NUM_THREADS", None)
    opts = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2"]
    root = tmp_path / "demo"
    results = run_demo.train_pair(str(root), env, 0, opts, twin=True)
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
    # The summary picture: per clip, rows ground truth / prediction / CLEVER hit map over its
    # 5 frames, each 32 x 32 frame enlarged to DISPLAY_SIZE so that outlines stay legible.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    summary = np.asarray(Image.open(run_demo.render(str(root), 1, opts)))
    assert summary.shape == (3 * run_demo.DISPLAY_SIZE, 5 * run_demo.DISPLAY_SIZE, 3)
    assert len(list((root / "overlays").glob("*/heatmap_*.png"))) == 5


def test_jobs_split_the_threads_and_report_a_failing_job(tmp_path):
    assert jobs.threads_per_job(2, cpus=2) == 1
    assert jobs.threads_per_job(2, cpus=8) == 4
    assert jobs.threads_per_job(3, cpus=2) == 1
    assert jobs.job_env({"OMP_NUM_THREADS": "3"}, 2)["OMP_NUM_THREADS"] == "3"
    assert jobs.job_env({}, 1)["OMP_NUM_THREADS"] == str(jobs.threads_per_job(1))
    # Both jobs run to the end although one fails; the error names it and shows its log.
    ok, bad = tmp_path / "ok.log", tmp_path / "bad.log"
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*bad\.log.*went wrong") as err:
        jobs.run_jobs(
            [([sys.executable, "-c", "print('fine')"], str(ok)),
             ([sys.executable, "-c", "import sys; print('went wrong'); sys.exit(3)"], str(bad))],
            dict(os.environ), str(tmp_path))
    assert "print('fine')" not in str(err.value)
    assert ok.read_text().endswith("fine\n")


@pytest.mark.slow
def test_benchmark_official_times_both_sides(tmp_path):
    """The official section on S4 R50, one round: both sides' times and peak memory, ratios
    that are the quotient of the two sides (one round: the median of one ratio), the table."""
    import official

    if os.environ.get("SELM_BENCH_OFFICIAL") != "1":
        # Full-size models, four calls per side and a memory profile: too long for every run.
        pytest.skip("times two full-size models: SELM_BENCH_OFFICIAL=1 runs it")
    official.require_official()
    official.require_mamba_sdist()
    report = benchmark.main(["--sections", "official", "--official-models", "s4:R50",
                             "--repeats", "1", "--device", "cpu", "--output-dir", str(tmp_path)])
    with open(tmp_path / "benchmark.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    (row,) = saved["official"]
    assert (row["task"], row["backbone"], row["T"], row["size"]) == ("s4", "R50", 5, 224)
    assert row["rounds"] == 1 and row["amp"] is None
    for part, target in (("inference", 0.8), ("train_step", 1.0)):
        side = row[part]
        assert side["selm_d2_ms"] > 0 and side["official_ms"] > 0, part
        assert len(side["selm_d2_ms_rounds"]) == len(side["official_ms_rounds"]) == 1
        quotient = side["selm_d2_ms"] / side["official_ms"]
        assert side["ratio"] == pytest.approx({"median": quotient, "q1": quotient, "q3": quotient})
        assert side["target_ratio"] == target and side["target_met"] == (quotient <= target)
        memory = row["peak_memory_mb"][part]
        assert memory["selm_d2"] > 0 and memory["official"] > 0, part
        assert memory["target_met"] == (memory["selm_d2"] <= memory["official"])
    assert row["weights_mb"]["selm_d2"] > 0 and row["weights_mb"]["official"] > 0
    table = (tmp_path / "benchmark.md").read_text()
    assert "| s4 | R50 | 5 × 224² | {:.0f} | {:.0f} | ".format(
        row["inference"]["selm_d2_ms"], row["inference"]["official_ms"]) in table
    assert "CPU " in table and "no optimizer step" in table


def test_mean_std_over_seeds_by_hand():
    assert jobs.mean_std([90.0, 88.0, 86.0]) == (88.0, 2.0)
    assert jobs.format_mean_std([90.7, 89.6, 86.6]) == "89.0 ± 2.1"
    assert jobs.format_mean_std([0.25], digits=2) == "0.25"


def test_train_command_resumes_and_read_metrics_names_a_missing_run(tmp_path):
    cmd = jobs.train_command("configs/synth/ms3.yaml", str(tmp_path), ["SEED", "1"])
    assert cmd[1:5] == ["train_net.py", "--config-file", "configs/synth/ms3.yaml", "--resume"]
    assert cmd[-2:] == ["SEED", "1"]
    with pytest.raises(FileNotFoundError, match="inference"):
        jobs.read_metrics(str(tmp_path), "avs_synth_ms3_test")
