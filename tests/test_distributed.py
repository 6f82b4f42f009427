"""Multi-process training and evaluation on CPU over gloo, started the way users start it.

torchrun launches train_net.py (the same command runs NCCL on GPUs); detectron2 v0.6's own
launcher asserts CUDA, so torchrun is the multi-process path on CPU for v0.6 and main alike.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, synth_ms3_tree

pytestmark = [pytest.mark.slow, pytest.mark.dist]

SYNTH_CONFIG = os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")


def _torchrun(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2"] + args,
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return synth_ms3_tree(tmp_path_factory, "ddp_synth", train=4, test=5, seed=3)


def test_two_process_training_and_evaluation_match_one_process(synth_root, tmp_path):
    from train_net import get_parser, main

    datasets = ["--dataset", "ddp_train=avsbench_ms3:{}:train".format(synth_root),
                "--dataset", "ddp_test=avsbench_ms3:{}:test".format(synth_root)]
    # Without CLEVER's Gumbel noise at inference, which each process would draw differently.
    opts = ["DATASETS.TRAIN", "('ddp_train',)", "DATASETS.TEST", "('ddp_test',)",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False"]
    out = tmp_path / "ddp"
    log = _torchrun([os.path.join(REPO_ROOT, "train_net.py"), "--config-file", SYNTH_CONFIG]
                    + datasets + opts + ["SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3",
                                         "OUTPUT_DIR", str(out)], cwd=str(tmp_path))
    assert "on 2 devices" in log  # evaluation ran in both processes
    with open(out / "inference" / "ddp_test" / "avs_results.json") as f:
        two_process = json.load(f)
    assert two_process["num_clips"] == 5

    args = get_parser().parse_args(
        ["--config-file", SYNTH_CONFIG, "--eval-only"] + datasets + opts
        + ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "one")])
    one_process = main(args)["sem_seg"]
    assert set(one_process) <= set(two_process["metrics"])
    for key, value in one_process.items():
        assert two_process["metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_backbone_freeze_trains_in_two_processes(synth_root, tmp_path):
    """SOLVER.BACKBONE_FREEZE_ITERS under DDP, 2 iterations from the same MODEL.WEIGHTS: frozen
    for both, the visual encoder keeps its initial weights while the rest learns; frozen for
    the first only, DDP synchronises its gradients from the second on and it learns."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from selm_d2 import load_config

    torch.manual_seed(0)
    model = build_model(load_config(SYNTH_CONFIG, ["MODEL.DEVICE", "cpu"]))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("init")
    init = str(tmp_path / "init.pth")
    runs = ["SOLVER.BACKBONE_FREEZE_ITERS={},MODEL.WEIGHTS={}".format(n, init) for n in (2, 1)]
    _torchrun([os.path.join(REPO_ROOT, "tests", "ddp_train.py"), synth_root, str(tmp_path)] + runs,
              cwd=str(tmp_path))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {n for n in names if n.startswith("backbone.")}
    before = torch.load(init)["model"]
    frozen, unfrozen = (torch.load(tmp_path / run / "model_final.pth")["model"] for run in runs)
    assert all(torch.equal(frozen[n], before[n]) for n in backbone)
    assert any(not torch.equal(frozen[n], before[n]) for n in names - backbone)
    assert all(not torch.equal(unfrozen[n], before[n]) for n in backbone)
