"""Every shipped config builds (and runs, shapes only); the six task configs carry the SelM
authors' per-task values, read from their code (train.sh, train.py, model/, loss.py) and
from the AVSBench metadata; the small synth configs train a step on CPU."""
import csv
import functools
import glob
import inspect
import os
import re

import pytest
import torch
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import EventStorage

import selm_d2.data.datasets  # noqa: F401  (dataset registration)
import selm_d2.selm_model  # noqa: F401  (meta-architecture registration)
from selm_d2.config import load_config

import official

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
ALL_CONFIGS = sorted(os.path.relpath(p, CONFIG_DIR)
                     for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))
TASK_CONFIGS = ["{}/selm_{}.yaml".format(task, bb) for task in ("s4", "ms3", "avss")
                for bb in ("R50", "pvt_v2_b5")]
SYNTH_CONFIGS = ["synth/s4.yaml", "synth/ms3.yaml", "synth/ms3_sigmoid_dam.yaml", "synth/avss.yaml",
                 "synth/avss70.yaml"]
BASE_CONFIGS = ["Base-SelM.yaml", "synth/Base-Synth.yaml"]

# task -> (the authors' folder, the metadata file of its clips, its split column)
_TASKS = {"s4": ("avs_s4", "s4_meta_data.csv"), "ms3": ("avs_ms3", "ms3_meta_data.csv"),
          "avss": ("avss", "avss_metadata.csv")}


def load(name, *opts):
    return load_config(os.path.join(CONFIG_DIR, name), opts)


def test_expected_configs_are_shipped():
    assert set(TASK_CONFIGS + SYNTH_CONFIGS + BASE_CONFIGS) <= set(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_and_runs(name):
    """Every config builds its model and runs it at INPUT.AVS.SIZE, on the meta device (shapes
    only, no weights allocated): CLEVER's positional embeddings fit the input size."""
    cfg = load(name, "MODEL.SELM.VISUAL_WEIGHTS", "", "MODEL.SELM.AUDIO.WEIGHTS", "",
               "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False")
    assert cfg.MODEL.META_ARCHITECTURE == "SelM" and cfg.MODEL.SEM_SEG_HEAD.NAME == "SelMHead"
    assert cfg.INPUT.FORMAT == "RGB" and cfg.SEED >= 0
    size = cfg.INPUT.AVS.SIZE
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).eval()
        with torch.no_grad():
            logits, maps, gates = model.forward_logits(
                torch.zeros(2, 3, size, size), torch.zeros(2, 1, 96, 64),
                torch.ones(1, 2, dtype=torch.bool))
    classes = cfg.MODEL.SELM.NUM_CLASSES
    assert logits.shape[:2] == (2, 1 if classes == 1 else classes + 1)
    assert [m.shape[-1] for m in maps] == [size // 16, size // 8, size // 4]
    assert sorted(gates) == ["res2", "res3", "res4", "res5"]
    for dataset in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert dataset in DatasetCatalog.list(), (name, dataset)


# ------------------------------------------------------------------ the authors' values

@functools.lru_cache(maxsize=None)
def _train_sh(folder):
    """{option: value} of the authors' train.sh."""
    with open(os.path.join(official.OFFICIAL_ROOT, folder, "train.sh")) as f:
        return dict(re.findall(r"--(\w+)\s+([^\s\\]+)", f.read()))


def _read(folder, path):
    with open(os.path.join(official.OFFICIAL_ROOT, folder, path)) as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def _their_model(folder, backbone):
    """What the authors' decoder and BCSM are built with, read off their modules."""
    mods = official.load_task(folder)
    cls = mods.SelM.SelM_R50 if backbone == "R50" else mods.SelM.SelM_PVT
    call = re.search(r"Decoder\(([^)]*)\)", inspect.getsource(cls.__init__)).group(1)
    kwargs = dict(re.findall(r"(\w+)\s*=\s*'?(\w+)'?", call))
    decoder = mods.decoder.Decoder(int(kwargs["token_dim"]), int(kwargs["num_token"]),
                                   **({"backbone": kwargs["backbone"]} if "backbone" in kwargs
                                      else {}))
    bcsm = mods.BCSM.BCSM()
    return {
        "frozen_at_start": "self.freeze(True)" in inspect.getsource(cls.__init__),
        "token_dim": int(kwargs["token_dim"]),
        "num_tokens": decoder.tokens.num_embeddings,
        "pe_shapes": [layer.pe_shape for layer in decoder.layers],
        "audio_layers": [hasattr(layer, "loadtoken") for layer in decoder.layers],
        "audio_dropout": [layer.loadtoken.cross_attn.attn_drop.p for layer in decoder.layers],
        "grouping_dropout": [getattr(decoder, "cgattention{}".format(i)).proj_drop.p
                             for i in (1, 2, 3)],
        "upsamples": sum(isinstance(m, nn.Upsample) for m in decoder.proj.vis),
        "projector_out": decoder.proj.audio_linear.out_features,
        "bcsm_blocks": len(bcsm.video_encoder[0].layers),
        "mamba": bcsm.video_encoder[0].layers[0].mamba_block,
    }


def _train_clips(meta_dir, task):
    with open(os.path.join(meta_dir, _TASKS[task][1]), newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row["split"] == "train")


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_task_config_carries_the_authors_values(name, avsbench_meta_dir):
    official.require_official()
    task, backbone = name.split("/")[0], "R50" if "R50" in name else "PVT"
    folder = _TASKS[task][0]
    cfg = load(name)
    selm, clever, solver = cfg.MODEL.SELM, cfg.MODEL.SELM.CLEVER, cfg.SOLVER
    theirs = _their_model(folder, backbone)

    # Encoders: ResNet-50 or PVT-v2-b5; VGGish run frozen (under no_grad in their train.py).
    if backbone == "R50":
        assert cfg.MODEL.BACKBONE.NAME == "StagedResNet" and cfg.MODEL.RESNETS.DEPTH == 50
    else:
        assert cfg.MODEL.BACKBONE.NAME == "StagedPVTv2" and cfg.MODEL.PVT.VARIANT == "pvt_v2_b5"
    assert re.search(r"with torch\.no_grad\(\):\s*\n\s*\w+\s*=\s*audio_backbone\(",
                     _read(folder, "train.py"))
    assert selm.AUDIO.FREEZE

    # Decoder: widths, tokens, positional embeddings (so the input size: the first layer's
    # map is at stride 16), projector, dropouts; the mask is made at 224 x 224 ...
    assert selm.HIDDEN_DIM == theirs["token_dim"] == 256
    assert clever.NUM_TOKENS == theirs["num_tokens"]
    assert list(clever.POS_EMBED_SIZES) == theirs["pe_shapes"]
    assert cfg.INPUT.AVS.SIZE == 16 * theirs["pe_shapes"][0]
    assert list(clever.AUDIO_LAYERS) == theirs["audio_layers"]
    assert [clever.AUDIO_DROPOUT] * 3 == theirs["audio_dropout"]
    assert list(clever.GROUPING_DROPOUT) == theirs["grouping_dropout"]
    assert clever.PROJECTOR_UPSAMPLES == theirs["upsamples"]
    outputs, bias = divmod(theirs["projector_out"], theirs["token_dim"])
    assert clever.PROJECTOR_BIAS == bool(bias)
    assert (1 if selm.NUM_CLASSES == 1 else selm.NUM_CLASSES + 1) == outputs
    assert outputs == (71 if task == "avss" else 1)
    assert clever.INFERENCE_NOISE  # their CGAttention samples Gumbel noise at inference too
    assert selm.DAM.AUDIO_ATTENTION == "softmax"
    # ... to which their forward resizes the logits (AVSS: to the 224 x 224 input).
    size_in_forward = "(224, 224)" in inspect.getsource(
        official.load_task(folder).SelM.SelM_R50.forward)
    assert (cfg.INPUT.AVS.MASK_SIZE or cfg.INPUT.AVS.SIZE) == 224
    assert size_in_forward or (task == "avss" and cfg.INPUT.AVS.SIZE == 224)

    # BCSM: stacks of 3 blocks of mamba-ssm's Mamba with its default sizes.
    assert selm.BCSM.NUM_BLOCKS == theirs["bcsm_blocks"]
    mamba = theirs["mamba"]
    assert (selm.MAMBA.D_STATE, selm.MAMBA.D_CONV, selm.MAMBA.EXPAND) == (
        mamba.d_state, mamba.d_conv, mamba.expand)

    # Losses: the hit-map weights of their loss.py.
    weights = re.search(r"zip\(hitmaps,\s*\[([^\]]*)\]\)", _read(folder, "loss.py")).group(1)
    assert list(selm.LOSS.AUX_WEIGHTS) == [float(w) for w in weights.split(",")]

    # Solver: AdamW on every parameter with train.sh's learning rate, weight decay and batch;
    # their max_step = (train clips // batch) * epochs; constant LR; FixSeed.
    sh = _train_sh(folder)
    batch = int(sh["train_batch_size"])
    per_epoch = _train_clips(avsbench_meta_dir, task) // batch
    assert "torch.optim.AdamW(model_params" in _read(folder, "train.py")
    assert solver.OPTIMIZER == "ADAMW"
    assert solver.BASE_LR == float(sh["lr"])
    assert solver.WEIGHT_DECAY == solver.WEIGHT_DECAY_NORM == float(sh["wt_dec"])
    assert solver.IMS_PER_BATCH == batch
    assert solver.MAX_ITER == int(sh["max_epoches"]) * per_epoch
    assert not solver.STEPS and solver.WARMUP_ITERS == 0
    assert not solver.CLIP_GRADIENTS.ENABLED
    seed = re.search(r"FixSeed\s*=\s*(\d+)", _read(folder, "train.py")).group(1)
    assert cfg.SEED == int(seed)
    # The visual encoder: frozen at construction (SelM_R50), unfrozen at a given epoch.
    unfreeze = re.search(r"if epoch\s*==\s*(\d+):\s*\n\s*model\.freeze\(False\)",
                         _read(folder, "train.py"))
    frozen_epochs = int(unfreeze.group(1)) if unfreeze and theirs["frozen_at_start"] else 0
    assert solver.BACKBONE_FREEZE_ITERS == frozen_epochs * per_epoch
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0

    if task == "avss":
        assert cfg.INPUT.AVS.NUM_FRAMES == cfg.INPUT.AVS.PAD_TO_FRAMES == 10
    else:
        assert cfg.INPUT.AVS.NUM_FRAMES == 5 and cfg.INPUT.AVS.PAD_TO_FRAMES == 0


@pytest.mark.parametrize("name", ["avss/selm_R50", "avss/selm_pvt_v2_b5"])
def test_avss_configs_train_as_the_authors_avss_script(name):
    """avss/train.py trains under autocast with a GradScaler and converts BatchNorm to
    SyncBatchNorm (the ResNet's; PVT-v2 has none)."""
    official.require_official()
    train_py = _read("avss", "train.py")
    cfg = load(name + ".yaml")
    assert ("GradScaler" in train_py) == cfg.SOLVER.AMP.ENABLED
    if cfg.MODEL.BACKBONE.NAME == "StagedResNet":
        assert ("convert_sync_batchnorm" in train_py) == (cfg.MODEL.RESNETS.NORM == "SyncBN")


def test_ms3_resnet_is_the_only_config_with_a_frozen_encoder():
    """A cross-check by hand of the previous test's reading of train.py: 15 epochs of 296
    clips at batch 1 for MS3 / ResNet-50, nothing elsewhere."""
    frozen = {name: load(name).SOLVER.BACKBONE_FREEZE_ITERS for name in TASK_CONFIGS}
    assert frozen == {name: 15 * 296 if name == "ms3/selm_R50.yaml" else 0
                      for name in TASK_CONFIGS}


# ------------------------------------------------------------------ the small configs

@pytest.mark.parametrize("name", SYNTH_CONFIGS)
def test_synth_config_trains_one_step_on_cpu(name):
    """The small configs need no download: no pretrained weights, CPU, and one training step
    of their real model on a clip at their input size reaches every parameter."""
    cfg = load(name)
    assert cfg.MODEL.DEVICE == "cpu"
    assert not cfg.MODEL.SELM.VISUAL_WEIGHTS and not cfg.MODEL.SELM.AUDIO.WEIGHTS
    torch.manual_seed(0)
    model = META_ARCH_REGISTRY.get("SelM")(cfg)
    t, size = 2, cfg.INPUT.AVS.SIZE
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


def test_sigmoid_dam_variant_differs_from_the_synth_config_only_in_dam():
    ours, variant = load("synth/ms3.yaml"), load("synth/ms3_sigmoid_dam.yaml")
    assert ours.MODEL.SELM.DAM.AUDIO_ATTENTION == "softmax"
    variant.MODEL.SELM.DAM.AUDIO_ATTENTION = "softmax"
    assert variant == ours
