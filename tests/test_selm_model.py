"""The SelM meta-architecture end to end, on the small CPU configs (configs/synth/ms3.yaml:
binary; configs/synth/avss.yaml: 6 classes, padded clips); 64 x 64 frames, d = 64."""
import os

import pytest
import torch
from torch.nn import functional as F

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from selm_d2.config import load_config
from selm_d2.selm_model import SelM

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs", "synth")
SIZE = 64  # INPUT.AVS.SIZE of the synth configs


def build(task, *opts):
    cfg = load_config(os.path.join(CONFIG_DIR, task + ".yaml"), opts)
    torch.manual_seed(0)
    return build_model(cfg), cfg


def make_clip(t=3, num_classes=1, num_real=None, annotated=None, mask_size=SIZE, orig=None,
              seed=0):
    """A mapper-style clip dict: random frames and log-mel, a rectangle of class
    ``num_classes`` as ground truth (255 on unannotated and padding frames)."""
    g = torch.Generator().manual_seed(seed)
    num_real = t if num_real is None else num_real
    valid = torch.arange(t) < num_real
    flags = valid.clone() if annotated is None else torch.as_tensor(annotated) & valid
    sem_seg = torch.zeros(t, mask_size, mask_size, dtype=torch.long)
    sem_seg[:, mask_size // 4: mask_size // 2, mask_size // 3:] = num_classes
    sem_seg[~flags] = 255
    height, width = orig or (SIZE, SIZE)
    return {
        "image": torch.randint(0, 256, (t, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
        "audio": torch.randn(t, 1, 96, 64, generator=g),
        "sem_seg": sem_seg,
        "frame_mask_flags": flags,
        "frame_valid": valid,
        "height": height,
        "width": width,
        "clip_id": "clip{}".format(seed),
    }


def train_step(model, batch, seed=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    return losses, total


def test_is_the_registered_meta_architecture():
    assert type(build("ms3")[0]) is SelM


@pytest.mark.parametrize("task,keys", [
    ("ms3", ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_bce", "loss_dice"]),
    ("avss", ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_ce"]),
])
def test_training_returns_the_losses_and_reaches_every_parameter(task, keys):
    model, cfg = build(task)
    num_classes = cfg.MODEL.SELM.NUM_CLASSES
    batch = [make_clip(num_classes=num_classes), make_clip(num_classes=num_classes, seed=1)]
    losses, total = train_step(model, batch)
    assert sorted(losses) == keys
    assert torch.isfinite(total) and total > 0
    # No parameter left out of the graph (DDP without find_unused_parameters).
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_binary_probabilities_and_output_sizes():
    """Probabilities are sigmoid / 1 - sigmoid of the logits, resized bilinearly (corners
    aligned) to the clip's original size, or to "output_size" when given."""
    model, _ = build("ms3", "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False")
    model.eval()
    clip = make_clip(t=3, orig=(50, 70))
    with torch.no_grad():
        probs = model([clip])[0]["sem_seg"]
        small = model([dict(clip, output_size=(20, 30))])[0]["sem_seg"]
        images = (clip["image"].float() - model.pixel_mean) / model.pixel_std
        logits = model.forward_logits(images, clip["audio"], clip["frame_valid"][None])[0]
    assert logits.shape == (3, 1, SIZE, SIZE)  # 64 / 4, upsampled twice
    foreground = F.interpolate(logits, size=(50, 70), mode="bilinear",
                               align_corners=True).sigmoid()[:, 0]
    assert probs.shape == (3, 2, 50, 70) and small.shape == (3, 2, 20, 30)
    torch.testing.assert_close(probs[:, 1], foreground, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs[:, 0], 1 - foreground, rtol=1e-5, atol=1e-6)


def test_semantic_probabilities_and_labels():
    model, cfg = build("avss", "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False")
    model.eval()
    classes = cfg.MODEL.SELM.NUM_CLASSES
    clip = make_clip(t=3, num_classes=classes, orig=(40, 48))
    with torch.no_grad():
        probs = model([clip])[0]["sem_seg"]
        labels = model([dict(clip, output_format="labels")])[0]
        images = (clip["image"].float() - model.pixel_mean) / model.pixel_std
        logits = model.forward_logits(images, clip["audio"], clip["frame_valid"][None])[0]
    expected = F.interpolate(logits, size=(40, 48), mode="bilinear",
                             align_corners=True).softmax(dim=1)
    assert probs.shape == (3, classes + 1, 40, 48)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    assert sorted(labels) == ["sem_seg_labels", "sem_seg_scores"]
    assert labels["sem_seg_labels"].dtype == torch.int64
    assert torch.equal(labels["sem_seg_labels"], probs.argmax(dim=1))
    torch.testing.assert_close(labels["sem_seg_scores"], probs.max(dim=1).values)
    with pytest.raises(ValueError, match="output_format 'mask' is unknown"):
        model([dict(clip, output_format="mask")])


def test_padding_frames_are_dropped_and_do_not_leak():
    """An AVSS clip of 4 real frames padded to 6: outputs (probabilities, hit maps, gates)
    hold the 4 real frames, and the padding frames' content changes nothing; a clip without
    "frame_valid" counts every frame as real."""
    model, cfg = build("avss", "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False",
                       "MODEL.SELM.RETURN_MAPS", "True")
    model.eval()
    clip = make_clip(t=6, num_real=4, num_classes=3)
    changed = dict(clip, image=clip["image"].clone(), audio=clip["audio"].clone())
    changed["image"][4:] = 255 - changed["image"][4:]
    changed["audio"][4:] += 3.0
    full = dict(clip)
    del full["frame_valid"]
    with torch.no_grad():
        out, out2 = model([clip, changed])
        whole = model([full])[0]
    assert out["sem_seg"].shape[0] == 4 and whole["sem_seg"].shape[0] == 6
    torch.testing.assert_close(out["sem_seg"], out2["sem_seg"])
    assert all(m.shape[0] == 4 for m in out["hit_maps"].values())
    assert all(g.shape[0] == 4 for g in out["bcsm_gates"].values())


def test_return_maps_keys_and_shapes():
    """RETURN_MAPS: per CLEVER layer the audio token's assignment map at 64 / 16, / 8, / 4
    (0/1 values), per visual stage BCSM's [T, d] channel gates."""
    model, cfg = build("ms3", "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False",
                       "MODEL.SELM.RETURN_MAPS", "True")
    model.eval()
    clip = make_clip(t=3)
    with torch.no_grad():
        out = model([clip])[0]
        images = (clip["image"].float() - model.pixel_mean) / model.pixel_std
        _, maps, gates = model.forward_logits(images, clip["audio"], clip["frame_valid"][None])
    assert sorted(out) == ["bcsm_gates", "hit_maps", "sem_seg"]
    assert sorted(out["hit_maps"]) == [0, 1, 2]
    for layer, side in enumerate((SIZE // 16, SIZE // 8, SIZE // 4)):
        hit = out["hit_maps"][layer]
        assert hit.shape == (3, side, side)
        assert set(hit.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(hit, maps[layer][:, -1])  # the last (audio-carrying) token
    d = cfg.MODEL.SELM.HIDDEN_DIM
    assert sorted(out["bcsm_gates"]) == ["res2", "res3", "res4", "res5"]
    for stage, gate in out["bcsm_gates"].items():
        assert gate.shape == (3, d)
        torch.testing.assert_close(gate, gates[stage][0])
    without = build("ms3", "MODEL.SELM.CLEVER.INFERENCE_NOISE", "False")[0].eval()
    with torch.no_grad():
        assert sorted(without([clip])[0]) == ["sem_seg"]


def test_masks_smaller_than_frames():
    """INPUT.AVS.MASK_SIZE (the authors train on 224 x 224 masks of 448 x 448 frames): the
    logits are resized to the masks (bilinear, corners aligned) before the losses."""
    model, cfg = build("ms3", "INPUT.AVS.MASK_SIZE", "32")
    clip = make_clip(t=3, mask_size=32)
    seen = []
    model.criterion.register_forward_pre_hook(lambda module, args: seen.append(args))
    losses, total = train_step(model, [clip], seed=4)
    assert torch.isfinite(total)
    logits, maps, targets, flags = seen[0]
    assert logits.shape == (3, 1, 32, 32) and targets.shape == (3, 32, 32)
    # The same step by hand: same random state (dropout, Gumbel noise), resize, criterion.
    torch.manual_seed(4)
    images = (clip["image"].float() - model.pixel_mean) / model.pixel_std
    raw, raw_maps, _ = model.forward_logits(images, clip["audio"], clip["frame_valid"][None])
    assert raw.shape[-2:] == (SIZE, SIZE)
    resized = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(logits, resized, rtol=1e-5, atol=1e-6)
    expected = model.criterion(resized, raw_maps, clip["sem_seg"], flags)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6)


def test_padding_frames_do_not_count_in_the_losses_even_if_flagged():
    """The losses read frames that are both annotated and real: a padding frame flagged as
    annotated, with a ground truth, changes nothing."""
    model, cfg = build("avss")
    classes = cfg.MODEL.SELM.NUM_CLASSES
    clip = make_clip(t=4, num_real=2, num_classes=classes)
    ref = train_step(model, [clip], seed=1)[1].item()
    flagged = dict(clip, frame_mask_flags=torch.ones(4, dtype=torch.bool),
                   sem_seg=clip["sem_seg"].clone())
    flagged["sem_seg"][2:] = 1
    model.zero_grad()
    assert train_step(model, [flagged], seed=1)[1].item() == pytest.approx(ref, rel=1e-6)


def test_bad_batches_are_explained():
    model, _ = build("ms3")
    model.eval()
    with pytest.raises(ValueError, match="equal frame count and size"):
        model([make_clip(t=3), make_clip(t=4)])
    small = make_clip(t=3)
    small["image"] = small["image"][..., :32, :32]
    with pytest.raises(ValueError, match="equal frame count and size"):
        model([make_clip(t=3), small])
    clip = make_clip(t=3)
    clip["audio"] = clip["audio"][:2]
    with pytest.raises(ValueError, match="3 frames but 2 audio examples"):
        model([clip])
    model.train()
    for key in ("sem_seg", "frame_mask_flags"):
        clip = make_clip(t=3)
        del clip[key]
        with pytest.raises(ValueError, match="'sem_seg' and 'frame_mask_flags'"):
            model([clip])


def test_wrong_sem_seg_head_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NAME='SemSegFPNHead'.*SelMHead"):
        build("ms3", "MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead")


def test_frozen_vggish_trains_nothing_and_everything_else_learns():
    """MODEL.SELM.AUDIO.FREEZE (the authors run VGGish under no_grad): no VGGish parameter
    gets a gradient, every other one does."""
    model, _ = build("ms3", "MODEL.SELM.AUDIO.FREEZE", "True")
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    train_step(model, [make_clip()])
    assert not model.audio_encoder.training
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    missing = [n for n, p in model.named_parameters()
               if not n.startswith("audio_encoder.") and p.grad is None]
    assert not missing, missing


def test_loads_weight_files(tmp_path):
    """Building reads no weight file (a trained checkpoint is enough for inference); the
    trainer's load_pretrained_encoders reads MODEL.SELM.VISUAL_WEIGHTS and AUDIO.WEIGHTS."""
    from selm_d2.modeling.pretrained import load_pretrained_encoders

    source, _ = build("ms3")
    torch.manual_seed(3)
    with torch.no_grad():
        for param in list(source.backbone.parameters()) + list(
                source.audio_encoder.parameters()):
            param.normal_()
    visual_path, audio_path = str(tmp_path / "visual.pth"), str(tmp_path / "vggish.pth")
    torch.save(source.backbone.state_dict(), visual_path)
    torch.save(source.audio_encoder.state_dict(), audio_path)
    opts = ("MODEL.SELM.VISUAL_WEIGHTS", visual_path, "MODEL.SELM.AUDIO.WEIGHTS", audio_path)
    model, cfg = build("ms3", *opts)
    weight = model.backbone.res3[0].conv1.weight
    assert not torch.equal(weight, source.backbone.res3[0].conv1.weight)
    load_pretrained_encoders(model, cfg)
    for part in ("backbone", "audio_encoder"):
        loaded = getattr(model, part).state_dict()
        for name, value in getattr(source, part).state_dict().items():
            assert torch.equal(loaded[name], value), (part, name)

    missing = ("MODEL.SELM.AUDIO.WEIGHTS", str(tmp_path / "missing.pth"))
    model, cfg = build("ms3", *missing)  # builds: the file is only needed to start training
    with pytest.raises(FileNotFoundError, match="MODEL.SELM.AUDIO.WEIGHTS"):
        load_pretrained_encoders(model, cfg)


@pytest.mark.slow  # bfloat16 on CPU: about 4 s on 2 shared cores
def test_trains_and_infers_under_autocast():
    """AMP readiness (the authors train AVSS under autocast; SOLVER.AMP.ENABLED on GPUs),
    checked with CPU bfloat16 autocast."""
    model, cfg = build("avss")
    clip = make_clip(t=2, num_classes=cfg.MODEL.SELM.NUM_CLASSES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, total = train_step(model, [clip])
    assert torch.isfinite(total)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model.eval()([clip])[0]["sem_seg"]
    assert torch.isfinite(probs.float()).all()
