"""tools/gpu_check.py runs its steps end to end (on CPU here, without AMP or mamba-ssm);
tools/ablate.py trains a row, writes the tables and resumes."""
import json
import os
import sys

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import ablate  # noqa: E402
import gpu_check  # noqa: E402


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


def test_ablate_trains_one_row_writes_the_tables_and_skips_finished_runs(tmp_path, monkeypatch):
    from selm_d2.data.synthetic import generate

    root = str(tmp_path / "data")
    generate(root, layouts=("ms3",), clips_per_split={"train": 2, "val": 0, "test": 4}, size=32,
             seed=1, progress=False)
    argv = ["--only", "full", "--seeds", "0", "--max-iter", "2",
            "--output-dir", str(tmp_path / "ablate"),
            "--dataset", "abl_train=avsbench_ms3:{}:train".format(root),
            "--dataset", "abl_test=avsbench_ms3:{}:test".format(root),
            "DATASETS.TRAIN", "('abl_train',)", "DATASETS.TEST", "('abl_test',)",
            "INPUT.AVS.SIZE", "32", "SOLVER.IMS_PER_BATCH", "2"]
    results = ablate.main(argv)
    assert set(results) == {"full"} and results["full"]["M_J"]["n"] == 1
    assert 0.0 <= results["full"]["M_J"]["mean"] <= 100.0
    text = (tmp_path / "ablate" / "tables.md").read_text()
    for title in ("Table 3", "Table 4", "Table 5", "Table 6", "Table 7", "Table 8"):
        assert title in text
    assert "| SelM | {:.1f} |".format(results["full"]["M_J"]["mean"]) in text
    with open(tmp_path / "ablate" / "tables.json") as f:
        saved = json.load(f)
    assert saved["rows"]["full"]["runs"][0]["seed"] == 0

    # A finished run is not trained again; another recipe in the same folder is refused.
    monkeypatch.setattr(ablate.subprocess, "run", None)
    assert ablate.main(argv) == results
    with pytest.raises(SystemExit, match="another recipe"):
        ablate.main(argv + ["SOLVER.BASE_LR", "0.01"])


def test_ablate_summary_and_rows():
    stats = ablate.summarise([60.0, 62.0, 64.0])
    assert stats == {"mean": 62.0, "std": 2.0, "n": 3}
    assert ablate.summarise([5.0])["std"] is None
    table = ablate.tables({"full": {"M_J": stats, "M_F": stats},
                           "dam_none": {"M_J": ablate.summarise([58.0]), "M_F": stats}}, "#")
    assert "| w/o DAM | 58.0 (-4.0) | 62.0 ± 2.0 (+0.0) | 1 |" in table
    assert "| SelM | 62.0 ± 2.0 | 62.0 ± 2.0 | 3 |" in table
    # Every paper table's rows are defined, and every row is in a table.
    in_tables = {key for _, rows in ablate.TABLES for key, _ in rows}
    assert in_tables == set(ablate.ROWS)
