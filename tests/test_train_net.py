"""train_net.py end to end on tiny generated AVS-Synth data: train -> checkpoint -> resume -> eval."""
import json
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from conftest import REPO_ROOT, synth_ms3_tree
from selm_d2 import add_selm_config
from selm_d2.data import register_avs_dataset
from selm_d2.data.synthetic import generate

SYNTH_CONFIG = os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    """Registers 4 train / 5 test MS3-layout clips at 32x32; returns the dataset names."""
    root = synth_ms3_tree(tmp_path_factory, "synth", train=4, test=5, seed=3)
    names = {}
    for split in ("train", "test"):
        names[split] = "_test_train_net_ms3_{}".format(split)
        register_avs_dataset(names[split], root, "avsbench_ms3", split=split)
    return names


def _opts(names, output_dir, max_iter):
    return ["DATASETS.TRAIN", "('{}',)".format(names["train"]), "DATASETS.TEST", "('{}',)".format(names["test"]),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
            "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(output_dir), "MODEL.DEVICE", "cpu"]


def _cfg(names, output_dir, max_iter):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_file(SYNTH_CONFIG)
    cfg.merge_from_list(_opts(names, output_dir, max_iter))
    cfg.freeze()
    return cfg


@pytest.mark.slow
def test_train_resume_and_evaluate(tiny_synth, tmp_path):
    from train_net import Trainer, get_parser, main

    trainer = Trainer(_cfg(tiny_synth, tmp_path, max_iter=4))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "model_final.pth").is_file()
    saved = torch.load(tmp_path / "model_final.pth")
    assert saved["iteration"] == 3

    resumed = Trainer(_cfg(tiny_synth, tmp_path, max_iter=6))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    restored = resumed._trainer.optimizer.state_dict()["state"]
    for key, state in saved["trainer"]["optimizer"]["state"].items():
        assert torch.equal(restored[key]["exp_avg"], state["exp_avg"])
    resumed.train()
    assert torch.load(tmp_path / "model_final.pth")["iteration"] == 5

    # --eval-only through the script's own main(), with the illusion passes.
    args = get_parser().parse_args(
        ["--config-file", SYNTH_CONFIG, "--eval-only"] + _opts(tiny_synth, tmp_path, 6)
        + ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "TEST.AVS.ILLUSION", "True"])
    results = main(args)["sem_seg"]
    for key in ("M_J", "M_F_official_bs4", "M_F_dataset", "silenced/M_J", "swapped/M_J"):
        assert 0.0 <= results[key] <= 100.0, key
    out = tmp_path / "inference" / tiny_synth["test"]
    with open(out / "avs_results.json") as f:
        assert json.load(f)["num_clips"] == 5
    assert (out / "avs_results_silenced.json").is_file() and (out / "avs_results_swapped.json").is_file()


@pytest.mark.slow
def test_evaluation_inside_training_runs_in_inference_mode_and_training_goes_on(
        tiny_synth, tmp_path, monkeypatch):
    """Trainer.test runs the model under torch.inference_mode; an evaluation in the middle of
    training (EvalHook) must not leave anything behind that the next training steps trip on
    (inference tensors cannot be saved for backward)."""
    from selm_d2.evaluation.avs_evaluator import AVSEvaluator
    from train_net import Trainer

    modes = []
    process = AVSEvaluator.process
    monkeypatch.setattr(AVSEvaluator, "process", lambda self, inputs, outputs: modes.append(
        torch.is_inference_mode_enabled()) or process(self, inputs, outputs))
    cfg = _cfg(tiny_synth, tmp_path, max_iter=4).clone()
    cfg.defrost()
    cfg.TEST.EVAL_PERIOD = 2
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert torch.load(tmp_path / "model_final.pth")["iteration"] == 3
    # Evaluations at iterations 2 and 4 (the last), 5 test clips each, all in inference mode.
    assert len(modes) == 10 and all(modes)


def test_swapped_audio_really_changes_the_audio(tiny_synth):
    from detectron2.data import DatasetCatalog

    from selm_d2.engine.trainer import _silenced, _swapped

    dicts = DatasetCatalog.get(tiny_synth["test"])
    swapped = _swapped(dicts)
    assert [d["audio_file_name"] for d in swapped] == [d["audio_file_name"] for d in dicts[1:] + dicts[:1]]
    assert [d["file_names"] for d in swapped] == [d["file_names"] for d in dicts]
    assert all(d["audio_override"] == "silence" for d in _silenced(dicts))
    assert "audio_override" not in dicts[0]  # the registered dicts are left untouched


def test_illusion_on_one_clip_warns_that_swapping_needs_two(tiny_synth):
    from detectron2.data import DatasetCatalog

    from selm_d2.engine.trainer import _swapped

    from test_audio import _Records

    one = DatasetCatalog.get(tiny_synth["test"])[:1]
    with _Records("selm_d2.engine.trainer") as records:
        assert _swapped(one)[0]["audio_file_name"] == one[0]["audio_file_name"]
        _swapped(DatasetCatalog.get(tiny_synth["test"])[:2])
    assert len(records) == 1 and "at least 2 clips" in records[0], records


def test_num_classes_mismatch_fails_before_training():
    """configs/synth/avss.yaml (K = 6) pointed at AVSBench-semantic (70 classes)."""
    from train_net import Trainer

    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "synth", "avss.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", "('avss_train',)", "DATASETS.TEST", "('avss_test',)"])
    for build in (Trainer.build_train_loader, lambda c: Trainer.build_test_loader(c, "avss_test"),
                  lambda c: Trainer.build_evaluator(c, "avss_test")):
        # the check runs before any file is read: no AVSS data is needed to see it
        with pytest.raises(ValueError, match=r"NUM_CLASSES is 6 .*'avss_\w+' has 71 .*"
                                             r"NUM_CLASSES 70"):
            build(cfg)


def test_evaluator_type_missing_is_a_clear_error():
    from detectron2.data import MetadataCatalog

    from train_net import Trainer

    MetadataCatalog.get("_test_train_net_no_type")
    cfg = get_cfg()
    add_selm_config(cfg)
    with pytest.raises(ValueError, match="_test_train_net_no_type.*evaluator_type"):
        Trainer.build_evaluator(cfg, "_test_train_net_no_type")


@pytest.mark.slow
def test_avss_trains_and_evaluates_with_padded_clips(tmp_path):
    """AVSS-layout clips of 5 and 10 frames, padded to 10: training and mIoU/F evaluation."""
    from train_net import Trainer

    root = str(tmp_path / "synth")
    generate(root, layouts=("avss",), clips_per_split={"train": 3, "val": 0, "test": 4}, size=32,
             seed=5, progress=False)
    names = {split: "_test_train_net_avss_{}".format(split) for split in ("train", "test")}
    for split, name in names.items():
        register_avs_dataset(name, os.path.join(root, "AVSS"), "avss", split=split)
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "synth", "avss.yaml"))
    cfg.merge_from_list(_opts(names, tmp_path, max_iter=2) + ["TEST.AVS.EVAL_SIZE", "32"])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)["sem_seg"]
    for key in ("mIoU", "F", "mIoU_noBg", "F_noBg"):
        assert 0.0 <= results[key] <= 100.0, key


def test_optimizer_groups_follow_the_decay_and_lr_rules(tiny_synth, tmp_path):
    """One group per (lr, weight decay); parameters of norm layers get WEIGHT_DECAY_NORM, all
    others WEIGHT_DECAY; the backbone gets its LR multiplier; frozen parameters are left out;
    every trainable parameter is in exactly one group."""
    from selm_d2.engine import trainer
    from detectron2.modeling import build_model

    cfg = _cfg(tiny_synth, tmp_path, 1)
    cfg.defrost()
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0  # the synth config's are equal: make them differ
    cfg.MODEL.SELM.AUDIO.FREEZE = True
    model = build_model(cfg)
    optimizer = trainer.Trainer.build_optimizer(cfg, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.startswith("audio_encoder.") for n, _ in trainable)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable) == len(group_of)
    keys = [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert len(keys) == len(set(keys)) == 4
    in_norm = {id(p) for m in model.modules() if isinstance(m, trainer._NORM_TYPES)
               for p in m.parameters(recurse=False)}
    assert in_norm  # BatchNorm, GroupNorm, LayerNorm
    base = cfg.SOLVER.BASE_LR
    for name, p in trainable:
        group = group_of[id(p)]
        assert group["lr"] == pytest.approx(base * 0.1 if name.startswith("backbone.") else base), name
        assert group["weight_decay"] == (0.0 if id(p) in in_norm else cfg.SOLVER.WEIGHT_DECAY), name


def _parameters(path, names):
    return {name: value for name, value in torch.load(path)["model"].items() if name in names}


@pytest.mark.slow
def test_backbone_freeze_iters_holds_the_visual_encoder_through_train_net(tiny_synth, tmp_path):
    """SOLVER.BACKBONE_FREEZE_ITERS 2 on a 4-iteration run of train_net.py, from a known
    MODEL.WEIGHTS: after iteration 2 (the checkpoint model_0000001.pth) the visual encoder's
    parameters are the initial ones while the rest of the model has learnt; after iteration 4
    the encoder has learnt too. BatchNorm statistics keep updating while it is frozen."""
    from detectron2.modeling import build_model

    from train_net import get_parser, main

    cfg = _cfg(tiny_synth, tmp_path, 4)
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("init")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {n for n in names if n.startswith("backbone.")}
    out = tmp_path / "train"
    main(get_parser().parse_args(
        ["--config-file", SYNTH_CONFIG] + _opts(tiny_synth, out, 4)
        + ["MODEL.WEIGHTS", str(tmp_path / "init.pth"), "SOLVER.BACKBONE_FREEZE_ITERS", "2"]))
    assert "Visual encoder frozen until iteration 2" in (out / "log.txt").read_text()

    init = _parameters(tmp_path / "init.pth", names)
    at_2 = _parameters(out / "model_0000001.pth", names)
    final = _parameters(out / "model_final.pth", names)
    assert backbone and set(init) == set(at_2) == set(final) == names
    assert all(torch.equal(at_2[n], init[n]) for n in backbone), "encoder moved while frozen"
    for module in ("audio_encoder.", "audio_proj.", "dam.", "sem_seg_head."):
        assert any(not torch.equal(at_2[n], init[n]) for n in names if n.startswith(module)), module
    unfrozen = [n for n in backbone if not torch.equal(final[n], init[n])]
    assert len(unfrozen) == len(backbone), sorted(backbone - set(unfrozen))
    stats = "backbone.stem.conv1.norm.running_mean"
    assert not torch.equal(torch.load(out / "model_0000001.pth")["model"][stats],
                           torch.load(tmp_path / "init.pth")["model"][stats])
