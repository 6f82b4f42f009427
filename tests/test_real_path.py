"""The path users take: a paper config plus trained weights only, converted encoder
checkpoints, datasets named on the command line, and logged automatic changes."""
import glob
import os
import sys

import pytest
import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import REPO_ROOT, synth_ms3_tree
from selm_d2 import add_selm_config
from selm_d2.data.datasets import parse_dataset_spec, register_dataset_specs
from selm_d2.modeling.audio import VGGish

PAPER_CONFIG = os.path.join(REPO_ROOT, "configs", "ms3", "selm_R50.yaml")
# The paper model at 64 x 64 instead of 448 x 448: CLEVER's position embeddings follow.
SMALL = ["INPUT.AVS.SIZE", "64", "MODEL.SELM.CLEVER.POS_EMBED_SIZES", "[4, 8, 16]"]
SYNTH_CONFIG = os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return synth_ms3_tree(tmp_path_factory, "real_path", train=2, test=2, seed=7)


def _cfg(config, *opts):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(opts))
    return cfg


@pytest.mark.slow
def test_paper_config_evaluates_and_demos_with_model_weights_only(synth_root, tmp_path,
                                                                   monkeypatch):
    from train_net import get_parser, main

    monkeypatch.chdir(tmp_path)  # the config's pretrained_backbones/... files do not exist here
    cfg = _cfg(PAPER_CONFIG, *SMALL)
    assert not os.path.exists(cfg.MODEL.SELM.VISUAL_WEIGHTS)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("trained")
    weights = str(tmp_path / "trained.pth")

    args = get_parser().parse_args(
        ["--config-file", PAPER_CONFIG, "--eval-only",
         "--dataset", "rp_test=avsbench_ms3:{}:test".format(synth_root),
         "DATASETS.TEST", "('rp_test',)", "DATALOADER.NUM_WORKERS", "0",
         "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "eval")] + SMALL)
    assert 0.0 <= main(args)["sem_seg"]["M_J"] <= 100.0

    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    import demo

    frames = glob.glob(os.path.join(synth_root, "Multi-sources", "ms3_data", "visual_frames", "*"))[0]
    wav = glob.glob(os.path.join(synth_root, "Multi-sources", "ms3_data", "audio_wav", "test",
                                 "*.wav"))[0]
    demo.main(["--config-file", PAPER_CONFIG, "--input", frames, "--audio", wav,
               "--output", str(tmp_path / "demo"), "--opts", "MODEL.WEIGHTS", weights] + SMALL)
    assert (tmp_path / "demo" / "frame_4.png").is_file()


def test_converted_encoders_initialise_training_without_the_original_files(synth_root, tmp_path):
    """torchvision's own ResNet-18 file and a VGGish file -> one MODEL.WEIGHTS checkpoint."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import convert_pretrained

    from train_net import Trainer

    widths = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "64", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    vggish = VGGish(_cfg(SYNTH_CONFIG))
    torch.save(vggish.state_dict(), tmp_path / "vggish.pth")
    convert_pretrained.main(["--config-file", SYNTH_CONFIG, "--visual", str(tmp_path / "resnet18.pth"),
                             "--audio", str(tmp_path / "vggish.pth"),
                             "--output", str(tmp_path / "init.pth"), "--opts"] + widths)
    for f in ("resnet18.pth", "vggish.pth"):
        os.remove(tmp_path / f)  # MODEL.WEIGHTS alone must be enough from here on

    register_dataset_specs(["rp_train=avsbench_ms3:{}:train".format(synth_root)])
    cfg = _cfg(SYNTH_CONFIG, *widths, "DATASETS.TRAIN", "('rp_train',)", "DATASETS.TEST", "()",
               "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1",
               "MODEL.WEIGHTS", str(tmp_path / "init.pth"),
               "MODEL.SELM.VISUAL_WEIGHTS", str(tmp_path / "resnet18.pth"),
               "MODEL.SELM.AUDIO.WEIGHTS", str(tmp_path / "vggish.pth"),
               "OUTPUT_DIR", str(tmp_path / "train"))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert torch.equal(model.backbone.res3[0].conv1.weight, resnet.layer2[0].conv1.weight)
    assert torch.equal(model.backbone.stem.conv1.norm.running_var, resnet.bn1.running_var)
    assert torch.equal(model.audio_encoder.embeddings[2].weight, vggish.embeddings[2].weight)

    # Without MODEL.WEIGHTS the trainer needs the original files, and says both routes.
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(FileNotFoundError, match="VISUAL_WEIGHTS.*convert_pretrained.*MODEL.WEIGHTS"):
        Trainer(cfg).resume_or_load(resume=False)


@pytest.mark.parametrize("spec,parsed", [
    ("a=avsbench_ms3:/data/tree:train", ("a", "avsbench_ms3", "/data/tree", "train")),
    ("b=manifest:/data/clips.json", ("b", "manifest", "/data/clips.json", None)),
    ("c=avss:C:/avss:test", ("c", "avss", "C:/avss", "test")),
    ("d=avsbench_s4:/data/x:y", ("d", "avsbench_s4", "/data/x:y", None)),
])
def test_dataset_specs_parse(spec, parsed):
    assert parse_dataset_spec(spec) == parsed


@pytest.mark.parametrize("spec,match", [
    ("no_layout", "NAME=LAYOUT:ROOT"),
    ("x=coco:/data", "unknown layout 'coco'"),
    ("avsbench_ms3_test=avsbench_ms3:/data:test", "already registered"),
])
def test_bad_dataset_specs_are_explained(spec, match):
    with pytest.raises(ValueError, match=match):
        register_dataset_specs([spec])


def test_same_spec_twice_in_one_process_is_not_a_clash(synth_root):
    spec = "rp_twice=avsbench_ms3:{}:test".format(synth_root)
    assert register_dataset_specs([spec]) == register_dataset_specs([spec]) == ["rp_twice"]


def test_automatic_changes_are_logged(tmp_path):
    from train_net import get_parser, setup

    args = get_parser().parse_args(["--config-file", SYNTH_CONFIG, "SOLVER.AMP.ENABLED", "True",
                                    "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path)])
    if torch.cuda.is_available():
        pytest.skip("the automatic CPU fallbacks only happen without CUDA")
    cfg = setup(args)
    assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED
    log = (tmp_path / "log.txt").read_text()
    assert "Changed SOLVER.AMP.ENABLED True -> False" in log
    assert "Changed MODEL.DEVICE cuda -> cpu" in log
