"""tools/convert_selm_official.py on a checkpoint written by the authors' own model class."""
import os
import subprocess
import sys

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from selm_d2 import load_config

import official
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TOOL = os.path.join(REPO_ROOT, "tools", "convert_selm_official.py")


def _convert(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """An authors' S4 ResNet-50 checkpoint as their train.py saves it (under DDP: with the
    ``module.`` prefix) and their VGGish file."""
    official.require_official()
    folder = tmp_path_factory.mktemp("released")
    model = official.build_official("avs_s4", "R50", seed=3)
    checkpoint = folder / "S4_resnet.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, checkpoint)
    vggish = folder / "vggish-10086976.pth"
    torch.save(official.build_official_vggish("avs_s4", seed=4).state_dict(), vggish)
    return checkpoint, vggish, model.state_dict()


def test_converted_checkpoint_loads_with_model_weights(released, tmp_path):
    checkpoint, vggish, reference = released
    out = tmp_path / "selm_s4_R50.pth"
    result = _convert("--config-file", "configs/s4/selm_R50.yaml", "--vggish", vggish,
                      checkpoint, out)
    assert result.returncode == 0, result.stderr
    assert "MODEL.WEIGHTS" in result.stdout
    cfg = load_config(os.path.join(REPO_ROOT, "configs/s4/selm_R50.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    incompatible = DetectionCheckpointer(model)._load_model(
        DetectionCheckpointer(model)._load_file(str(out)))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    # A tensor arrives under its new name unchanged.
    assert torch.equal(model.sem_seg_head.clever.tokens.weight, reference["decoder.tokens.weight"])
    assert torch.equal(model.backbone.res4[0].conv1.weight, reference["resnet.layer3_1.0.conv1.weight"])


def test_checkpoint_of_another_task_names_its_config(released, tmp_path):
    checkpoint, vggish, _ = released
    result = _convert("--config-file", "configs/ms3/selm_R50.yaml", "--vggish", vggish,
                      checkpoint, tmp_path / "out.pth")
    assert result.returncode != 0
    assert "S4 R50" in result.stderr and "configs/s4/selm_R50.yaml" in result.stderr
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("content", [b"this is not a checkpoint", None])
def test_not_a_checkpoint_names_the_file(released, tmp_path, content):
    _, vggish, _ = released
    bad = tmp_path / "bad.pth"
    if content is None:  # a real PyTorch file, but of another network
        torch.save(torch.nn.Linear(3, 2).state_dict(), bad)
    else:
        bad.write_bytes(content)
    result = _convert("--config-file", "configs/s4/selm_R50.yaml", "--vggish", vggish, bad,
                      tmp_path / "out.pth")
    assert result.returncode != 0
    assert str(bad) in result.stderr
    assert "Traceback" not in result.stderr
