"""`train_net.py --eval-only` scores S4/MS3 as the SelM authors' test.py does.

A model's predictions on a small AVS-Synth MS3 test set are scored twice: by SelM-D2's
evaluator through train_net.py, and by the authors' own metric functions
(``utils/utility.py``: ``mask_iou`` and ``Eval_Fmeasure``) on the same logits, in their test
loop's batches of 2 clips, averaged over batches as their AvgMeter does.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from selm_d2 import load_config
from selm_d2.data import AVSClipDatasetMapper
from selm_d2.data.masks import read_clip_masks
from selm_d2.data.synthetic import generate

import official
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIG = os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")
TEST_SET = "avs_synth_ms3_test"
OPTS = ["TEST.AVS.F_BATCH_SIZE", "2", "SEED", "5"]


def test_eval_only_scores_as_the_authors_metric_functions(tmp_path, monkeypatch):
    official.require_official()
    utility = official.load_task("avs_ms3").utility
    datasets = tmp_path / "datasets"
    generate(str(datasets / "avs_synth"), layouts=("ms3",),
             clips_per_split={"train": 0, "val": 0, "test": 6}, size=64, seed=3, progress=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))

    cfg = load_config(CONFIG, OPTS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Untrained weights give near-constant masks: a larger bias on the mask logits spreads
    # the predictions over both sides of the thresholds.
    with torch.no_grad():
        model.sem_seg_head.clever.projector.audio_linear.weight.mul_(30)
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)

    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS",
         str(weights), "OUTPUT_DIR", str(out), *OPTS], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=600, env=dict(os.environ, DETECTRON2_DATASETS=str(datasets)))
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = glob.glob(str(out / "inference" / TEST_SET / "avs_results*.json"))
    with open(path) as f:
        ours = json.load(f)["metrics"]

    mapper = AVSClipDatasetMapper(cfg, is_train=False)
    dicts = DatasetCatalog.get(TEST_SET)
    batches_iou, batches_f = [], []
    for start in range(0, len(dicts), 2):  # the authors' test batch of 2 clips
        logits, masks = [], []
        for clip in dicts[start:start + 2]:
            inputs = mapper(clip)
            with torch.no_grad():
                images, audio, valid = model._preprocess([inputs])
                out_logits, _, _ = model.forward_logits(images, audio, valid)
            logits.append(F.interpolate(out_logits, size=(clip["height"], clip["width"]),
                                        mode="bilinear", align_corners=True)[:, 0])
            masks.append(torch.from_numpy((read_clip_masks(clip) > 0).astype(np.float32)))
        logits, masks = torch.cat(logits), torch.cat(masks)
        batches_iou.append(utility.mask_iou(logits, masks).item())
        batches_f.append(utility.Eval_Fmeasure(logits, masks, str(tmp_path)))
    assert ours["M_J_official_bs2"] == pytest.approx(100 * np.mean(batches_iou), abs=1e-4)
    assert ours["M_F_official_bs2"] == pytest.approx(100 * np.mean(batches_f), abs=1e-4)
    # Not a degenerate case: the predictions are neither all background nor all foreground.
    assert 1 < ours["fg_rate"] < 99
