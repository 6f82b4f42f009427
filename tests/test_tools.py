"""tools/gpu_check.py runs its steps end to end (on CPU here, without AMP or mamba-ssm)."""
import json
import os
import sys

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
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
