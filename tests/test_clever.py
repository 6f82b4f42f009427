import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from selm_d2.config import add_selm_config
from selm_d2.modeling.clever import (
    MASK_HEADS,
    SELM_DECODER_REGISTRY,
    CLEVERDecoder,
    MaskHead,
    build_selm_decoder,
    sine_encoding_1d,
    sine_encoding_2d,
)

D = 16
LEVELS = {"res3": 8, "res4": 16, "res5": 32}


def _decoder(**kw):
    args = dict(in_features=["res5", "res4", "res3"], hidden_dim=D, num_queries=4, nheads=2,
                dim_feedforward=32, dropout=0.0, out_channels=1, mask_head="mix",
                mask_in_feature="res2")
    args.update(kw)
    return CLEVERDecoder(**args)


def _inputs(b=2, t=5, hw=(61, 77)):
    """feats: {level: [B*T, D, h, w]} for res3..res5 and the stride-4 mask level res2."""
    torch.manual_seed(0)
    n = b * t
    size = lambda s: (-(-hw[0] // s), -(-hw[1] // s))  # noqa: E731
    feats = {k: torch.randn(n, D, *size(s), requires_grad=True)
             for k, s in dict(LEVELS, res2=4).items()}
    audio = {k: torch.randn(b, t, D, requires_grad=True) for k in LEVELS}
    return feats, audio, torch.ones(b, t, dtype=torch.bool)


@pytest.mark.parametrize("t", [5, 10])
def test_shapes_coarse_to_fine(t):
    feats, audio, valid = _inputs(t=t)
    out = _decoder(out_channels=3)(feats, audio, valid)
    assert out["pred_masks"].shape == (2 * t, 3) + tuple(feats["res2"].shape[-2:])
    assert [tuple(a.shape[-2:]) for a in out["aux_masks"]] == [
        tuple(feats[k].shape[-2:]) for k in ("res5", "res4", "res3")]


def test_without_mask_fusion_the_last_layer_gives_the_masks():
    dec = _decoder(mask_in_feature=None)
    assert dec.mask_mix is None and dec.visual_levels == ["res3", "res4", "res5"]
    feats, audio, valid = _inputs()
    del feats["res2"]  # not read
    out = dec(feats, audio, valid)
    assert out["pred_masks"] is out["aux_masks"][-1]
    assert out["pred_masks"].shape[-2:] == feats["res3"].shape[-2:]


def test_from_config_orders_levels_by_stride_and_sets_outputs():
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.SELM.NUM_CLASSES = 70
    cfg.MODEL.SELM.CLEVER.NUM_QUERIES = 71
    cfg.MODEL.SELM.CLEVER.IN_FEATURES = ["res4", "res3", "res5"]
    shapes = {k: ShapeSpec(channels=8, stride=s) for k, s in dict(LEVELS, res2=4).items()}
    dec = build_selm_decoder(cfg, shapes)
    assert type(dec) is CLEVERDecoder and "CLEVERDecoder" in SELM_DECODER_REGISTRY
    assert dec.layer_levels == ["res5", "res4", "res3"]
    # The paper's defaults: "dot" head (one query per class), no stride-4 fusion.
    assert dec.mask_head.kind == "dot" and dec.mask_head.out_channels == 71
    assert dec.mask_in_feature is None and "res2" not in dec.visual_levels
    cfg.MODEL.SELM.CLEVER.MASK_FUSION = True
    assert build_selm_decoder(cfg, shapes).visual_levels == ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SELM.CLEVER.IN_FEATURES = ["res3", "res6"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        CLEVERDecoder(cfg, shapes)
    cfg.MODEL.SELM.CLEVER.NAME = "FPNDecoder"
    with pytest.raises(ValueError, match="MODEL.SELM.CLEVER.NAME='FPNDecoder'.*CLEVERDecoder"):
        build_selm_decoder(cfg, shapes)


@pytest.mark.parametrize("out_channels", [1, 5])
@pytest.mark.parametrize("kind", MASK_HEADS)
def test_mask_heads(kind, out_channels):
    torch.manual_seed(0)
    queries = out_channels if kind == "dot" else 3
    head = MaskHead(kind, D, queries, out_channels)
    q = torch.randn(2, queries, D, requires_grad=True)
    mixed = torch.randn(2, D, 6, 7, requires_grad=True)
    maps, logits = head(q, mixed)
    assert maps.shape == (2, queries, 6, 7) and logits.shape == (2, out_channels, 6, 7)
    logits.square().sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert q.grad.abs().sum() > 0 and mixed.grad.abs().sum() > 0
    if kind == "dot":
        assert logits is maps  # the query-feature dot products are the logits
    if kind != "semantic":
        return
    # Mask2Former's semantic inference: P_c = sum_q softmax(cls_q)[c] sigmoid(m_q), normalised.
    with torch.no_grad():
        cls = head.class_embed(head.decoder_norm(q)).softmax(-1)
        probs = torch.einsum("nqc,nqhw->nchw", cls, maps.sigmoid())
        probs = probs / probs.sum(1, keepdim=True)
        if out_channels == 1:  # one foreground logit: log P_1 - log P_0
            assert torch.allclose(logits.sigmoid()[:, 0], probs[:, 1], atol=1e-5)
        else:  # log P_c: valid probabilities that softmax gives back
            assert torch.allclose(logits.exp().sum(1), torch.ones(2, 6, 7), atol=1e-5)
            assert torch.allclose(logits.softmax(1), probs, atol=1e-5)


def test_dot_head_needs_one_query_per_output():
    with pytest.raises(ValueError, match="MASK_HEAD 'dot'.*NUM_QUERIES must equal.*71.*got "
                                         "NUM_QUERIES 16"):
        MaskHead("dot", D, 16, 71)
    with pytest.raises(ValueError, match="MODEL.SELM.CLEVER.MASK_HEAD='conv' is unknown"):
        MaskHead("conv", D, 4, 1)


@pytest.mark.parametrize("switch", [dict(audio_cross_attn=False), dict(video_cross_attn=False),
                                    dict(cross_level=False),
                                    dict(audio_cross_attn=False, video_cross_attn=False)])
def test_ablations_run_and_backprop(switch):
    dec = _decoder(**switch)
    feats, audio, valid = _inputs()
    if switch.get("cross_level") is False:
        assert dec.used_levels == ["res3"] and len(dec.level_mix) == 0
        feats = {"res3": feats["res3"], "res2": feats["res2"]}
        audio = {"res3": audio["res3"]}
    out = dec(feats, audio, valid)
    loss = out["pred_masks"].square().mean() + sum(a.square().mean() for a in out["aux_masks"])
    loss.backward()
    assert torch.isfinite(loss)
    assert feats["res2"].grad.abs().sum() > 0 and feats["res3"].grad.abs().sum() > 0
    audio_grad = audio["res3"].grad
    if switch.get("audio_cross_attn") is False:
        assert audio_grad is None
    else:
        assert audio_grad.abs().sum() > 0
    if switch.get("cross_level") is False:
        assert all(a.shape[-2:] == feats["res3"].shape[-2:] for a in out["aux_masks"])


def test_padding_frames_do_not_leak_through_audio_attention():
    dec = _decoder().eval()
    feats, audio, valid = _inputs()
    valid[1, 3:] = False
    out = dec(feats, audio, valid)["pred_masks"]
    audio2 = {k: v.detach().clone() for k, v in audio.items()}
    for v in audio2.values():
        v[1, 3:] += 10.0
    out2 = dec(feats, audio2, valid)["pred_masks"]
    # Clip 1's frames (indices 5..9) ignore its padding frames' audio; clip 0 is untouched.
    assert torch.allclose(out, out2, atol=1e-5)
    # Real frames' audio is used.
    audio2["res5"][1, 0] += 10.0
    assert not torch.allclose(dec(feats, audio2, valid)["pred_masks"][5:], out[5:])


def test_clip_of_only_padding_is_finite():
    dec = _decoder()
    feats, audio, valid = _inputs()
    valid[0] = False
    out = dec(feats, audio, valid)
    assert torch.isfinite(out["pred_masks"]).all()


def test_position_encodings():
    enc = sine_encoding_1d(torch.arange(10), D)
    assert enc.shape == (10, D)
    sims = enc @ enc.T
    assert (sims.argmax(dim=1) == torch.arange(10)).all()  # each frame finds itself
    grid = sine_encoding_2d(3, 5, D, torch.device("cpu"))
    assert grid.shape == (15, D) and len({tuple(r.tolist()) for r in grid}) == 15


def test_bad_widths_name_keys():
    with pytest.raises(ValueError, match="NHEADS"):
        _decoder(nheads=3, hidden_dim=16)
    with pytest.raises(ValueError, match="HIDDEN_DIM"):
        _decoder(nheads=1, hidden_dim=18)


def test_mix_block_is_upsample_then_concat_then_project():
    """The mix projects the previous level before upsampling; by linearity that must equal
    the paper's order, written out here: upsample, concatenate with the next level, 1x1 conv."""
    from torch.nn import functional as F

    from selm_d2.modeling.clever import _MixBlock

    torch.manual_seed(0)
    block = _MixBlock(D, 3).eval()
    mixed, maps, nxt = torch.randn(2, D, 5, 7), torch.randn(2, 3, 5, 7), torch.randn(2, D, 10, 13)
    up = F.interpolate(torch.cat([mixed, maps], dim=1), size=(10, 13), mode="bilinear",
                       align_corners=False)
    expected = block.proj(torch.cat([up, nxt], dim=1))
    torch.testing.assert_close(block(mixed, maps, nxt), expected, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():  # the CPU inference kernels (cpu_inference.py)
        torch.testing.assert_close(block(mixed, maps, nxt), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_queries,padding", [(1, False), (3, True)])
def test_few_query_attention_matches_multihead_attention(num_queries, padding):
    """The re-associated inference attention against torch's nn.MultiheadAttention."""
    from selm_d2.modeling.clever import _few_query_attention

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    torch.nn.init.normal_(attn.in_proj_bias)  # biases take part (the key bias cancels)
    query = torch.randn(2, num_queries, 32)
    # 9 keys; and a single key (self-attention of one query), whose weight is 1
    for length in (9, 1):
        memory = torch.randn(2, length, 32)
        mask = None
        if padding and length > 1:
            mask = torch.zeros(2, length, dtype=torch.bool)
            mask[0, 6:] = True
        # positions shared by the batch, and per clip
        for memory_pos in (torch.randn(1, length, 32), torch.randn(2, length, 32)):
            expected = attn(query, memory + memory_pos, memory, key_padding_mask=mask,
                            need_weights=False)[0]
            got = _few_query_attention(attn, query, memory, memory_pos, mask)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_decoder_inference_matches_training_mode_attention():
    """Eval mode takes the few-query path; with dropout 0 train mode computes the same masks."""
    torch.manual_seed(0)
    decoder = _decoder(num_queries=1, mask_head="dot", mask_in_feature=None)
    feats, audio, valid = _inputs()
    decoder.train()
    train_out = decoder(feats, audio, valid)["pred_masks"]
    decoder.eval()
    torch.testing.assert_close(decoder(feats, audio, valid)["pred_masks"], train_out,
                               rtol=1e-4, atol=1e-4)
