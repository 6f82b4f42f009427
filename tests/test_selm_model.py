"""End-to-end tests of the SelM meta-architecture on tiny models (detectron2 e2e style)."""
import math

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from selm_d2.config import add_selm_config
from selm_d2.modeling.audio import VGGish
from selm_d2.modeling.pretrained import load_pretrained_encoders
from selm_d2.selm_model import SelM


def tiny_cfg(*opts):
    """A SelM small enough for CPU unit tests, from scratch; the paper's choices (config.py
    defaults: channel A2V selection, "dot" mask head with 1 query, no stride-4 fusion)."""
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.META_ARCHITECTURE", "SelM",
        "MODEL.SEM_SEG_HEAD.NAME", "SelMHead",
        "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53],
        "MODEL.PIXEL_STD", [58.395, 57.12, 57.375],
        "MODEL.BACKBONE.NAME", "StagedResNet",
        "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.SELM.HIDDEN_DIM", 16,
        "MODEL.SELM.AUDIO.FREEZE", False,
        "MODEL.SELM.AUDIO.CHANNELS", [4, 8, 8, 8],
        "MODEL.SELM.AUDIO.FC_DIMS", [16, 16, 16],
        "MODEL.SELM.DAM.DROPOUT", 0.0,
        "MODEL.SELM.BCSM.NUM_BLOCKS", 1,
        "MODEL.SELM.BCSM.POOL_SIZE", 2,
        "MODEL.SELM.MAMBA.D_STATE", 4,
        "MODEL.SELM.MAMBA.IMPL", "torch",
        "MODEL.SELM.CLEVER.NHEADS", 2,
        "MODEL.SELM.CLEVER.DIM_FEEDFORWARD", 32,
    ] + list(opts))
    return cfg


def tiny_model(*opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg(*opts))


def make_clip(t=5, h=61, w=77, num_classes=1, num_real=None, annotated=None, orig=None, seed=0):
    """A mapper-style clip dict with random frames/audio and a square ground truth."""
    g = torch.Generator().manual_seed(seed)
    num_real = t if num_real is None else num_real
    valid = torch.arange(t) < num_real
    flags = valid.clone() if annotated is None else torch.as_tensor(annotated) & valid
    sem_seg = torch.zeros(t, h, w, dtype=torch.long)
    sem_seg[:, h // 4: h // 2, w // 3: w // 2] = num_classes
    sem_seg[~flags] = 255
    height, width = orig if orig is not None else (h, w)
    return {
        "image": torch.randint(0, 256, (t, 3, h, w), generator=g, dtype=torch.uint8),
        "audio": torch.randn(t, 1, 96, 64, generator=g),
        "sem_seg": sem_seg,
        "frame_mask_flags": flags,
        "frame_valid": valid,
        "height": height,
        "width": width,
        "clip_id": "clip{}".format(seed),
    }


def train_losses(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    return losses, total


def grad_norm(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("t", [5, 10])
def test_train_reaches_every_module_and_infers_at_original_size(t):
    model = tiny_model()
    batch = [make_clip(t=t, seed=0), make_clip(t=t, seed=1)]
    losses, total = train_losses(model, batch)
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_bce", "loss_dice"]
    assert torch.isfinite(total)
    for name in ("backbone", "audio_encoder", "dam"):
        assert grad_norm(getattr(model, name)) > 0, name
    for name in ("bcsm", "clever", "visual_proj", "audio_proj"):
        assert grad_norm(getattr(model.sem_seg_head, name)) > 0, name

    model.eval()
    batch = [make_clip(t=t, orig=(120, 150)), make_clip(t=t, seed=1, orig=(61, 77))]
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2 and set(outputs[0]) == {"sem_seg"}
    assert outputs[0]["sem_seg"].shape == (t, 2, 120, 150)
    assert outputs[1]["sem_seg"].shape == (t, 2, 61, 77)
    probs = outputs[0]["sem_seg"]
    assert probs.min() >= 0 and probs.max() <= 1
    assert torch.allclose(probs.sum(dim=1), torch.ones(t, 120, 150), atol=1e-5)


def test_frozen_vggish_gets_no_grad_but_dam_before_it_does():
    model = tiny_model("MODEL.SELM.AUDIO.FREEZE", True)
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    train_losses(model, [make_clip(t=3, h=32, w=32)])
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    # res2's V2A output re-enters VGGish at conv2: its gradient crossed the frozen blocks.
    assert grad_norm(model.dam["res2"].v2a) > 0


# Each entry: config options (KEY, VALUE, ...) of one ablation (paper Tables 3-8) or one variant
# of a module (paper-literal vs ours).
ABLATIONS = [
    ("MODEL.SELM.DAM.MODE", "none"), ("MODEL.SELM.DAM.MODE", "add"),
    ("MODEL.SELM.DAM.MODE", "concat"), ("MODEL.SELM.DAM.MODE", "a2v"),
    ("MODEL.SELM.DAM.MODE", "v2a"), ("MODEL.SELM.DAM.STAGES", ["res4", "res5"]),
    ("MODEL.SELM.BCSM.MODE", "off"), ("MODEL.SELM.BCSM.MODE", "a2v"),
    ("MODEL.SELM.BCSM.MODE", "v2a"), ("MODEL.SELM.BCSM.A2V_SELECTION", "spatial"),
    ("MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN", False), ("MODEL.SELM.CLEVER.VIDEO_CROSS_ATTN", False),
    ("MODEL.SELM.CLEVER.CROSS_LEVEL", False),
    ("MODEL.SELM.CLEVER.CROSS_LEVEL", False, "MODEL.SELM.CLEVER.MASK_FUSION", True),
    ("MODEL.SELM.CLEVER.MASK_FUSION", True),
    ("MODEL.SELM.CLEVER.MASK_FUSION", True, "MODEL.SELM.CLEVER.MASK_IN_FEATURE", "res1"),
    ("MODEL.SELM.DAM.FEATURE_CONV", "depthwise"),
    ("MODEL.SELM.CLEVER.MASK_HEAD", "mix", "MODEL.SELM.CLEVER.NUM_QUERIES", 4),
    ("MODEL.SELM.CLEVER.MASK_HEAD", "semantic", "MODEL.SELM.CLEVER.NUM_QUERIES", 4),
    ("MODEL.SELM.LOSS.DICE_WEIGHT", 0.0), ("MODEL.SELM.LOSS.BCE_WEIGHT", 0.0),
    ("MODEL.SELM.LOSS.AUX_WEIGHTS", [0.0, 0.0, 0.0]),
]


def _opts_id(opts):
    return ",".join("{}={}".format(k.split(".")[-1], v) for k, v in zip(opts[::2], opts[1::2]))


@pytest.mark.parametrize("opts", ABLATIONS, ids=[_opts_id(o) for o in ABLATIONS])
def test_ablation_switches_train(opts):
    model = tiny_model(*opts)
    head = model.sem_seg_head
    switches = dict(zip(opts[::2], opts[1::2]))
    losses, total = train_losses(model, [make_clip(t=3, h=32, w=40)])
    assert torch.isfinite(total) and total > 0
    # Only modules whose outputs are read are built, so DDP needs no find_unused_parameters.
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    if switches.get("MODEL.SELM.DAM.MODE") == "none":
        assert len(model.dam) == 0
    if "MODEL.SELM.DAM.STAGES" in switches:
        assert sorted(model.dam) == ["res4", "res5"]
    if switches.get("MODEL.SELM.CLEVER.CROSS_LEVEL") is False:
        assert sorted(head.bcsm) == ["res3"]
        # res5's visual output feeds nothing; its audio output still feeds the embedding.
        assert model.dam["res5"].a2v is None and model.dam["res5"].v2a is not None
    # The mask level is read (and projected) only with the fusion.
    fusion = switches.get("MODEL.SELM.CLEVER.MASK_FUSION", False)
    mask_level = switches.get("MODEL.SELM.CLEVER.MASK_IN_FEATURE", "res2")
    assert (mask_level in head.visual_proj) == fusion
    assert (head.clever.mask_mix is not None) == fusion
    if "MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN" in switches:
        # T^s feeds only the audio cross-attention: BCSM keeps its A2V branch alone.
        assert all(b.v2a is None and b.a2v is not None for b in head.bcsm.values())
    key = opts[0]
    if key.startswith("MODEL.SELM.LOSS"):
        dropped = {"DICE_WEIGHT": ["loss_dice"], "BCE_WEIGHT": ["loss_bce"],
                   "AUX_WEIGHTS": ["loss_aux_0", "loss_aux_1", "loss_aux_2"]}[key.split(".")[-1]]
        assert not set(dropped) & set(losses)
    assert grad_norm(head.clever) > 0


MASK_VARIANTS = [("dot", False), ("dot", True), ("mix", False), ("mix", True),
                 ("semantic", False), ("semantic", True)]


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("mask_head,fusion", MASK_VARIANTS)
def test_mask_head_variants_shapes_and_probabilities(mask_head, fusion, num_classes):
    outputs = 1 if num_classes == 1 else num_classes + 1
    queries = outputs if mask_head == "dot" else 4
    model = tiny_model("MODEL.SELM.NUM_CLASSES", num_classes,
                       "MODEL.SELM.CLEVER.MASK_HEAD", mask_head,
                       "MODEL.SELM.CLEVER.NUM_QUERIES", queries,
                       "MODEL.SELM.CLEVER.MASK_FUSION", fusion,
                       "MODEL.SELM.LOSS.SEMANTIC", "ce" if mask_head == "semantic" else "bce")
    clip = make_clip(t=3, h=64, w=96, num_classes=num_classes, orig=(50, 70))
    model.eval()
    with torch.no_grad():
        images, audio, valid = model._preprocess([clip])
        visual, tokens, embedding = model._encode(images, audio, 3)
        raw = model.sem_seg_head(visual, tokens, embedding, valid)[0]
        probs = model([clip])[0]["sem_seg"]
    # Final masks at stride 4 with the fusion, else at the last layer's stride 8 (res3).
    stride = 4 if fusion else 8
    assert raw["pred_masks"].shape == (3, outputs, 64 // stride, 96 // stride)
    assert [a.shape[-1] for a in raw["aux_masks"]] == [96 // 32, 96 // 16, 96 // 8]
    if not fusion:
        assert raw["pred_masks"] is raw["aux_masks"][-1]
    assert probs.shape == (3, num_classes + 1, 50, 70)
    assert probs.min() >= 0 and probs.max() <= 1
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, 50, 70), atol=1e-5)


def test_res1_mask_level_gives_stride_2_masks():
    """ResNet's res1 (conv1 before the max-pool) as the fused mask level: masks at stride 2,
    and the stem feature is detectron2's BasicStem activation."""
    model = tiny_model("MODEL.SELM.CLEVER.MASK_FUSION", True,
                       "MODEL.SELM.CLEVER.MASK_IN_FEATURE", "res1")
    clip = make_clip(t=3, h=64, w=96, orig=(50, 70))
    model.eval()
    with torch.no_grad():
        images, audio, valid = model._preprocess([clip])
        stem_out, levels = model.backbone.forward_stem(images)
        torch.testing.assert_close(stem_out, model.backbone.stem(images))
        torch.testing.assert_close(
            torch.nn.functional.max_pool2d(levels["res1"], 3, 2, 1), stem_out)
        visual, tokens, embedding = model._encode(images, audio, 3)
        raw = model.sem_seg_head(visual, tokens, embedding, valid)[0]
        probs = model([clip])[0]["sem_seg"]
    assert raw["pred_masks"].shape == (3, 1, 32, 48)
    assert probs.shape == (3, 2, 50, 70)
    assert probs.min() >= 0 and probs.max() <= 1
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, 50, 70), atol=1e-5)


@pytest.mark.parametrize("selection", ["channel", "spatial"])
def test_semantic_padding_frames_and_selection_maps(selection):
    model = tiny_model("MODEL.SELM.NUM_CLASSES", 3, "MODEL.SELM.CLEVER.NUM_QUERIES", 4,
                       "MODEL.SELM.RETURN_SELECTION_MAPS", True,
                       "MODEL.SELM.BCSM.A2V_SELECTION", selection)
    batch = [make_clip(t=10, num_classes=3, num_real=5, annotated=[True] + [False] * 9),
             make_clip(t=10, num_classes=2, seed=1)]
    losses, total = train_losses(model, batch)
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_bce"]
    assert torch.isfinite(total)

    model.eval()
    with torch.no_grad():
        out = model(batch)
        # Padding frames' content does not reach the real frames.
        changed = [dict(batch[0]), batch[1]]
        changed[0]["image"] = batch[0]["image"].clone()
        changed[0]["image"][5:] = 255 - changed[0]["image"][5:]
        changed[0]["audio"] = batch[0]["audio"].clone()
        changed[0]["audio"][5:] += 3.0
        out2 = model(changed)
    assert out[0]["sem_seg"].shape == (5, 4, 61, 77)
    assert out[1]["sem_seg"].shape == (10, 4, 61, 77)
    assert torch.allclose(out[0]["sem_seg"], out2[0]["sem_seg"], atol=1e-5)
    assert torch.allclose(out[0]["sem_seg"].sum(dim=1), torch.ones(5, 61, 77), atol=1e-5)
    maps = out[0]["selection_maps"]
    assert sorted(maps) == ["res3", "res4", "res5"]
    for level, stride in (("res3", 8), ("res4", 16), ("res5", 32)):
        assert maps[level].shape == (5, math.ceil(61 / stride), math.ceil(77 / stride))
        if selection == "spatial":  # the weight map itself
            assert ((maps[level] > 0) & (maps[level] < 1)).all()
        else:  # the energy of the selected features
            assert (maps[level] >= 0).all() and maps[level].max() > 0


SEMANTIC_TASKS = [
    (), ("MODEL.SELM.NUM_CLASSES", 3, "MODEL.SELM.CLEVER.NUM_QUERIES", 4),
    ("MODEL.SELM.NUM_CLASSES", 3, "MODEL.SELM.CLEVER.NUM_QUERIES", 4,
     "MODEL.SELM.LOSS.SEMANTIC", "ce"),
    ("MODEL.SELM.NUM_CLASSES", 3, "MODEL.SELM.CLEVER.MASK_HEAD", "semantic",
     "MODEL.SELM.CLEVER.NUM_QUERIES", 3, "MODEL.SELM.LOSS.SEMANTIC", "ce"),
]


@pytest.mark.parametrize("opts", SEMANTIC_TASKS, ids=["binary", "avss-bce", "avss-ce",
                                                      "avss-semantic-head-ce"])
def test_padding_frames_and_unannotated_frames_do_not_change_losses(opts):
    model = tiny_model(*opts)
    num_classes = 1 if not opts else 3
    clip = make_clip(t=5, h=32, w=32, num_real=3, annotated=[True, False, True, True, True],
                     num_classes=num_classes)
    # Every parameter learns (no unused parameter) with every semantic loss and head.
    losses, _ = train_losses(model, [clip])
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad()
    torch.manual_seed(1)
    ref = train_losses(model, [clip])[1].item()
    other = dict(clip)
    other["sem_seg"] = clip["sem_seg"].clone()
    other["sem_seg"][1] = num_classes  # unannotated frame (flag False): ignored
    other["sem_seg"][3:] = num_classes  # padding frames: ignored
    model.zero_grad()
    torch.manual_seed(1)
    assert train_losses(model, [other])[1].item() == pytest.approx(ref, rel=1e-6)


def test_empty_and_unannotated_clips_give_finite_losses():
    model = tiny_model()
    empty = make_clip(t=3, h=32, w=32)
    empty["sem_seg"] = torch.zeros_like(empty["sem_seg"])
    losses, total = train_losses(model, [empty])
    assert torch.isfinite(total) and total > 0

    model.zero_grad()
    unannotated = make_clip(t=3, h=32, w=32, annotated=[False, False, False])
    losses, total = train_losses(model, [unannotated])
    assert len(losses) == 5 and total.item() == 0.0
    # Still connected to the graph: every decoder parameter has a (zero) gradient.
    assert all(p.grad is not None for p in model.sem_seg_head.clever.parameters())


def test_tiny_model_overfits_one_clip():
    model = tiny_model("MODEL.SELM.LOSS.AUX_WEIGHTS", [0.0, 0.0, 0.0])
    batch = [make_clip(t=2, h=32, w=32)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    history = []
    with EventStorage():
        for _ in range(60):
            total = sum(model(batch).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
            if history[-1] < history[0] / 10:
                break
    assert history[-1] < history[0] / 10, history


def test_loads_weight_files(tmp_path):
    torch.manual_seed(3)
    cfg = tiny_cfg()
    audio = VGGish(cfg)
    audio_path = str(tmp_path / "vggish.pth")
    torch.save(audio.state_dict(), audio_path)
    visual = build_backbone(cfg)
    visual_path = str(tmp_path / "r18.pth")
    torch.save(visual.state_dict(), visual_path)

    opts = ("MODEL.SELM.AUDIO.WEIGHTS", audio_path, "MODEL.SELM.VISUAL_WEIGHTS", visual_path)
    model = tiny_model(*opts)
    # Building reads no weight file (a trained checkpoint must be enough for inference) ...
    assert not torch.equal(model.backbone.res3[0].conv1.weight, visual.res3[0].conv1.weight)
    # ... the trainer loads them when training starts from scratch.
    load_pretrained_encoders(model, tiny_cfg(*opts))
    assert torch.equal(model.audio_encoder.features[0].weight, audio.features[0].weight)
    assert torch.equal(model.audio_encoder.embeddings[4].bias, audio.embeddings[4].bias)
    assert torch.equal(model.backbone.res3[0].conv1.weight, visual.res3[0].conv1.weight)

    missing = ("MODEL.SELM.AUDIO.WEIGHTS", str(tmp_path / "missing.pth"))
    model = tiny_model(*missing)  # builds: the file is only needed to start training
    with pytest.raises(FileNotFoundError, match="MODEL.SELM.AUDIO.WEIGHTS.*convert_pretrained"):
        load_pretrained_encoders(model, tiny_cfg(*missing))


def test_nothing_reading_audio_freezes_what_only_feeds_it():
    # No audio cross-attention and no A2V selection: audio tokens reach nothing, so neither the
    # projections nor the last DAM V2A are built, and the VGGish embedding is frozen.
    model = tiny_model("MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN", False, "MODEL.SELM.BCSM.MODE", "v2a")
    assert len(model.sem_seg_head.audio_proj) == 0 and model.dam["res5"].v2a is None
    assert not any(p.requires_grad for p in model.audio_encoder.embeddings.parameters())
    train_losses(model, [make_clip(t=3, h=32, w=40)])
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_trains_and_infers_under_autocast():
    """AMP readiness (SOLVER.AMP.ENABLED on GPUs), checked with CPU bfloat16 autocast."""
    model = tiny_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, total = train_losses(model, [make_clip(t=3, h=32, w=40)])
    assert torch.isfinite(total)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model.eval()([make_clip(t=3, h=32, w=40)])[0]["sem_seg"]
    assert torch.isfinite(probs.float()).all()


@pytest.mark.parametrize("dam_mode", ["dual", "add", "concat"])
def test_encoding_frames_in_chunks_changes_nothing(dam_mode):
    """Inference runs the encoders on a few frames at a time: same outputs as all at once."""
    model = tiny_model("MODEL.SELM.DAM.MODE", dam_mode, "MODEL.SELM.RETURN_SELECTION_MAPS", True)
    model.eval()
    clips = [make_clip(t=5, h=32, w=40, seed=s) for s in (0, 1)]  # 10 frames in the batch
    with torch.no_grad():
        model.encoder_chunk_frames = 0
        whole = model(clips)
        model.encoder_chunk_frames = 3  # chunks cross clip boundaries
        chunked = model(clips)
    for a, b in zip(whole, chunked):
        assert torch.allclose(a["sem_seg"], b["sem_seg"], atol=1e-5)
        for level in a["selection_maps"]:
            assert torch.allclose(a["selection_maps"][level], b["selection_maps"][level],
                                  atol=1e-5)


@pytest.mark.parametrize("selection", ["channel", "spatial"])
def test_grouped_bcsm_at_inference_matches_each_level_in_turn(selection, monkeypatch):
    """Without gradients BCSMLevels runs every level's BCSM stacks as one group; with them,
    each level's BCSM in turn (training's order). Same masks and maps either way, on a
    random (not identity-initialised) model."""
    from selm_d2.modeling import bcsm as bcsm_module

    model = tiny_model("MODEL.SELM.RETURN_SELECTION_MAPS", True, "MODEL.SELM.BCSM.POOL_SIZE", 1,
                       "MODEL.SELM.BCSM.A2V_SELECTION", selection).eval()
    torch.manual_seed(3)
    for param in model.sem_seg_head.bcsm.parameters():
        torch.nn.init.normal_(param, std=0.2)
    clips = [make_clip(t=5, h=32, w=40, seed=s) for s in (0, 1)]
    groups = []
    grouped_run = bcsm_module.run_mamba_stacks
    monkeypatch.setattr(bcsm_module, "run_mamba_stacks",
                        lambda stacks, *args: groups.append(len(stacks)) or
                        grouped_run(stacks, *args))
    with torch.no_grad():
        grouped = model(clips)
    with torch.enable_grad():
        in_turn = model(clips)
    assert groups == [6]  # two branches at three levels, once, and only without gradients
    for a, b in zip(grouped, in_turn):
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=1e-5, atol=1e-6)
        assert sorted(a["selection_maps"]) == ["res3", "res4", "res5"]
        for level in a["selection_maps"]:
            torch.testing.assert_close(a["selection_maps"][level], b["selection_maps"][level],
                                       rtol=1e-5, atol=1e-6)


def test_inference_outputs_on_request():
    """Full-size probabilities by default; a smaller size, or per-pixel labels, on request."""
    model = tiny_model("MODEL.SELM.NUM_CLASSES", 3, "MODEL.SELM.CLEVER.NUM_QUERIES", 4).eval()
    clip = make_clip(t=3, h=32, w=40, num_classes=3, orig=(61, 77))
    with torch.no_grad():
        full = model([clip])[0]["sem_seg"]
        small = model([dict(clip, output_size=(20, 30))])[0]["sem_seg"]
        labels = model([dict(clip, output_format="labels")])[0]
    assert full.shape == (3, 4, 61, 77) and small.shape == (3, 4, 20, 30)
    assert torch.allclose(full.sum(1), torch.ones(3, 61, 77), atol=1e-5)
    assert torch.equal(labels["sem_seg_labels"], full.argmax(1))
    assert torch.allclose(labels["sem_seg_scores"], full.max(1).values, atol=1e-6)
    with pytest.raises(ValueError, match="output_format 'mask' is unknown"):
        model([dict(clip, output_format="mask")])


@pytest.mark.parametrize("opts,match", [
    (("MODEL.SELM.BCSM.MODE", "v2a", "MODEL.SELM.RETURN_SELECTION_MAPS", True),
     "RETURN_SELECTION_MAPS"),
    (("MODEL.SELM.LOSS.DICE_WEIGHT", 0.0, "MODEL.SELM.LOSS.BCE_WEIGHT", 0.0), "final masks"),
    (("MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4"]), "OUT_FEATURES"),
    (("MODEL.SELM.DAM.STAGES", ["res6"]), "DAM.STAGES"),
    (("MODEL.SELM.LOSS.AUX_WEIGHTS", [0.1, 0.1]), "AUX_WEIGHTS"),
    (("MODEL.SELM.CLEVER.NUM_QUERIES", 4), "MASK_HEAD 'dot'.*NUM_QUERIES must equal.* 1 "),
    (("MODEL.SELM.NUM_CLASSES", 3), "MASK_HEAD 'dot'.*NUM_QUERIES.*NUM_CLASSES \\+ 1"),
    (("MODEL.SELM.CLEVER.MASK_HEAD", "conv"), "MODEL.SELM.CLEVER.MASK_HEAD='conv' is unknown"),
    (("MODEL.SELM.CLEVER.MASK_FUSION", True, "MODEL.SELM.CLEVER.MASK_IN_FEATURE", "stem"),
     "MASK_IN_FEATURE"),
    (("MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead"), "MODEL.SEM_SEG_HEAD.NAME='SemSegFPNHead'"),
    (("MODEL.SELM.NUM_CLASSES", 3, "MODEL.SELM.CLEVER.MASK_HEAD", "semantic",
      "MODEL.SELM.CLEVER.NUM_QUERIES", 3), "LOSS.SEMANTIC 'bce'.*MASK_HEAD 'semantic'"),
    (("MODEL.SELM.LOSS.SEMANTIC", "focal"), "MODEL.SELM.LOSS.SEMANTIC='focal' is unknown"),
])
def test_bad_configs_name_the_key(opts, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(*opts)


def test_bad_batches_are_explained():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="equal frame count"):
        model([make_clip(t=3, h=32, w=32), make_clip(t=4, h=32, w=32)])
    clip = make_clip(t=3, h=32, w=32)
    clip["audio"] = clip["audio"][:2]
    with pytest.raises(ValueError, match="audio examples"):
        model([clip])
    model.train()
    clip = make_clip(t=3, h=32, w=32)
    del clip["frame_mask_flags"]
    with pytest.raises(ValueError, match="frame_mask_flags"):
        model([clip])
    clip = make_clip(t=3, h=32, w=32)
    clip["sem_seg"] = clip["sem_seg"][:, :16]
    with pytest.raises(ValueError, match="sem_seg has shape"):
        model([clip])


def test_is_the_registered_meta_architecture():
    assert type(tiny_model()) is SelM
