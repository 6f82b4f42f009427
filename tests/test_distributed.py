"""Multi-process training and evaluation on CPU over gloo, started the way users start it.

torchrun launches train_net.py (the same command runs NCCL on GPUs); detectron2 v0.6's own
launcher asserts CUDA, so torchrun is the multi-process path on CPU for v0.6 and main alike.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, synth_ms3_tree

SYNTH_CONFIG = os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")
# Every switch whose value leaves a module out of the model (paper Tables 3, 4, 5, 7) or
# builds another variant of one (the paper-literal and our variants of BCSM and CLEVER).
BRANCH_ABLATIONS = [
    "MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN=False", "MODEL.SELM.CLEVER.VIDEO_CROSS_ATTN=False",
    "MODEL.SELM.CLEVER.CROSS_LEVEL=False", "MODEL.SELM.BCSM.MODE=off", "MODEL.SELM.BCSM.MODE=a2v",
    "MODEL.SELM.BCSM.MODE=v2a", "MODEL.SELM.DAM.MODE=none", "MODEL.SELM.DAM.MODE=a2v",
    "MODEL.SELM.DAM.MODE=v2a", "MODEL.SELM.BCSM.A2V_SELECTION=channel",
    "MODEL.SELM.CLEVER.MASK_FUSION=False", "MODEL.SELM.CLEVER.MASK_HEAD=semantic",
    "MODEL.SELM.CLEVER.MASK_HEAD=dot,MODEL.SELM.CLEVER.NUM_QUERIES=1",
]


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
    opts = ["DATASETS.TRAIN", "('ddp_train',)", "DATASETS.TEST", "('ddp_test',)",
            "INPUT.AVS.SIZE", "32", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", "100"]
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


def test_every_branch_dropping_ablation_trains_in_two_processes(synth_root, tmp_path):
    _torchrun([os.path.join(REPO_ROOT, "tests", "ddp_ablations.py"), synth_root, str(tmp_path)]
              + BRANCH_ABLATIONS, cwd=str(tmp_path))
    for ablation in BRANCH_ABLATIONS:
        assert (tmp_path / ablation / "model_final.pth").is_file(), ablation
