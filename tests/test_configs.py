"""Every shipped config merges, names registered datasets, builds its model and trains a step;
the paper configs hold the paper's choices, the selm_plus configs differ only in ours."""
import glob
import os

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import EventStorage

import selm_d2.data.datasets  # noqa: F401  (dataset registration)
import selm_d2.selm_model  # noqa: F401  (meta-architecture registration)
from selm_d2.config import load_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
ALL_CONFIGS = sorted(os.path.relpath(p, CONFIG_DIR)
                     for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))
PAPER_CONFIGS = ["{}/selm_{}.yaml".format(task, bb) for task in ("s4", "ms3", "avss")
                 for bb in ("R50", "pvt_v2_b5")]
PLUS_CONFIGS = [name.replace("/selm_", "/selm_plus_") for name in PAPER_CONFIGS]
SYNTH_CONFIGS = ["synth/s4.yaml", "synth/ms3.yaml", "synth/avss.yaml", "synth/avss70.yaml"]
BASE_CONFIGS = ["Base-SelM.yaml", "Base-SelM-plus.yaml", "synth/Base-Synth.yaml"]
# What Base-SelM-plus.yaml changes: (key, value in selm_plus configs).
PLUS_KEYS = {
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.SELM.BCSM.A2V_SELECTION": "spatial",
    "MODEL.SELM.CLEVER.MASK_HEAD": "mix",
    "MODEL.SELM.CLEVER.NUM_QUERIES": 16,
    "MODEL.SELM.CLEVER.MASK_FUSION": True,
    "MODEL.SELM.LOSS.SEMANTIC": "ce",
    "SOLVER.WARMUP_ITERS": 200,
    "SOLVER.WARMUP_FACTOR": 0.01,
    "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
}


def load(name, *opts):
    return load_config(os.path.join(CONFIG_DIR, name), opts)


def build_on_meta(cfg):
    """Builds the model without allocating or initialising weights (structure only)."""
    with torch.device("meta"):
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            out.update(_flat(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def test_expected_configs_are_shipped():
    assert set(PAPER_CONFIGS + PLUS_CONFIGS + SYNTH_CONFIGS + BASE_CONFIGS) <= set(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds(name):
    cfg = load(name, "MODEL.SELM.VISUAL_WEIGHTS", "", "MODEL.SELM.AUDIO.WEIGHTS", "")
    model = build_on_meta(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "SelM" and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "SelMHead"
    assert cfg.SEED >= 0  # every shipped config is reproducible
    assert sorted(model.dam) == ["res2", "res3", "res4", "res5"]
    assert model.sem_seg_head.clever.layer_levels == ["res5", "res4", "res3"]
    outputs = 1 if cfg.MODEL.SELM.NUM_CLASSES == 1 else cfg.MODEL.SELM.NUM_CLASSES + 1
    assert model.sem_seg_head.clever.mask_head.out_channels == outputs
    for dataset in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert dataset in DatasetCatalog.list(), (name, dataset)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_recipes(name):
    cfg = load(name)
    task, backbone = name.split("/")
    epochs, clips, classes = {"s4": (40, 3452, 1), "ms3": (100, 296, 1),
                              "avss": (30, 8498, 70)}[task]
    assert cfg.SOLVER.MAX_ITER == round(epochs * clips / cfg.SOLVER.IMS_PER_BATCH)
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.BASE_LR == 2e-5
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.INPUT.AVS.SIZE == 224
    assert cfg.MODEL.SELM.NUM_CLASSES == classes
    assert cfg.MODEL.SELM.AUDIO.WEIGHTS == "pretrained_backbones/vggish-10086976.pth"
    assert cfg.MODEL.SELM.AUDIO.FREEZE
    assert cfg.MODEL.SELM.LOSS.AUX_WEIGHTS == [0.001, 0.01, 0.1]
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    if backbone == "selm_R50.yaml":
        assert cfg.MODEL.BACKBONE.NAME == "StagedResNet" and cfg.MODEL.RESNETS.DEPTH == 50
        assert cfg.MODEL.SELM.VISUAL_WEIGHTS == "pretrained_backbones/resnet50-19c8e357.pth"
    else:
        assert cfg.MODEL.BACKBONE.NAME == "StagedPVTv2" and cfg.MODEL.PVT.VARIANT == "pvt_v2_b5"
        assert cfg.MODEL.SELM.VISUAL_WEIGHTS == "pretrained_backbones/pvt_v2_b5.pth"
    if task == "avss":
        assert cfg.INPUT.AVS.NUM_FRAMES == cfg.INPUT.AVS.PAD_TO_FRAMES == 10
        assert cfg.INPUT.AVS.AUDIO.SHORT_POLICY == "zero_pad" and cfg.TEST.AVS.EVAL_SIZE == 224
        assert cfg.TEST.AVS.AVSS_PROTOCOL == "official"  # the protocol of the paper's numbers
    # The paper's modules, read literally (README: deviation table).
    selm = cfg.MODEL.SELM
    assert selm.BCSM.A2V_SELECTION == "channel"
    assert selm.CLEVER.MASK_HEAD == "dot" and not selm.CLEVER.MASK_FUSION
    assert selm.CLEVER.NUM_QUERIES == (1 if classes == 1 else classes + 1)
    assert selm.LOSS.SEMANTIC == "bce"
    # No warm-up, no gradient clipping, AVSBench's trainable BatchNorm, AVSBench's seed.
    assert cfg.SOLVER.WARMUP_ITERS == 0 and not cfg.SOLVER.CLIP_GRADIENTS.ENABLED
    assert not cfg.SOLVER.STEPS and cfg.SEED == 123
    if backbone == "selm_R50.yaml":
        assert cfg.MODEL.RESNETS.NORM == "BN"


@pytest.mark.parametrize("name", PLUS_CONFIGS)
def test_plus_configs_differ_from_the_paper_configs_only_in_our_variants(name):
    plus = _flat(load(name))
    paper = _flat(load(name.replace("/selm_plus_", "/selm_")))
    differ = {key for key in plus if plus[key] != paper[key]}
    assert differ <= set(PLUS_KEYS), differ - set(PLUS_KEYS)
    for key, value in PLUS_KEYS.items():
        assert plus[key] == value, key


@pytest.mark.parametrize("name", SYNTH_CONFIGS)
def test_synth_configs_keep_their_recipe(name):
    cfg = load(name)
    assert cfg.MODEL.DEVICE == "cpu" and not cfg.MODEL.SELM.VISUAL_WEIGHTS
    # Our variants, listed in Base-Synth.yaml (the recipe of the README's make-demo numbers).
    selm = cfg.MODEL.SELM
    assert (selm.BCSM.A2V_SELECTION, selm.CLEVER.MASK_HEAD, selm.CLEVER.NUM_QUERIES,
            selm.CLEVER.MASK_FUSION, selm.LOSS.SEMANTIC) == ("spatial", "mix", 8, True, "ce")
    assert cfg.SEED == 0


@pytest.mark.parametrize("name", PAPER_CONFIGS + PLUS_CONFIGS + SYNTH_CONFIGS)
def test_config_trains_one_step_on_a_tiny_clip(name):
    """The real model of every shipped config: one training step on 2 frames at 64 x 64."""
    cfg = load(name, "MODEL.DEVICE", "cpu")
    torch.manual_seed(0)
    model = META_ARCH_REGISTRY.get("SelM")(cfg)
    t, size = 2, 64
    clip = {
        "image": torch.randint(0, 256, (t, 3, size, size), dtype=torch.uint8),
        "audio": torch.randn(t, 1, 96, 64),
        "sem_seg": torch.randint(0, cfg.MODEL.SELM.NUM_CLASSES + 1, (t, size, size)),
        "frame_mask_flags": torch.ones(t, dtype=torch.bool),
        "frame_valid": torch.ones(t, dtype=torch.bool),
        "height": size, "width": size,
    }
    model.train()
    with EventStorage():
        total = sum(model([clip]).values())
    total.backward()
    assert torch.isfinite(total)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_renamed_key_names_its_successor():
    with pytest.raises(KeyError, match="TEST.AVS.AVSS_PROTOCOL"):
        load("avss/selm_R50.yaml", "TEST.AVS.COUNT_PADDED_FRAMES", "True")


def test_unknown_keys_name_the_key_and_where_keys_are_listed(tmp_path):
    # On the command line (yacs alone raises a bare AssertionError there) and in a file.
    with pytest.raises(KeyError, match=r"SOLVER.BASE_LRR.*command line.*selm_d2/config.py"):
        load("ms3/selm_R50.yaml", "SOLVER.BASE_LRR", "0.1")
    config = tmp_path / "mine.yaml"
    config.write_text("_BASE_: {}\nMODEL:\n  SELM:\n    HIDDEN_DIMM: 64\n".format(
        os.path.join(CONFIG_DIR, "ms3", "selm_R50.yaml")))
    with pytest.raises(KeyError, match=r"HIDDEN_DIMM.*mine.yaml.*selm_d2/config.py"):
        load_config(str(config))
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        load("ms3/selm_R50.yaml", "SOLVER.BASE_LR")
