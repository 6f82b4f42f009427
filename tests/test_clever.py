import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from selm_d2.config import add_selm_config
from selm_d2.modeling.clever import CLEVERDecoder, sine_encoding_1d, sine_encoding_2d

D = 16
LEVELS = {"res3": 8, "res4": 16, "res5": 32}


def _decoder(**kw):
    args = dict(in_features=["res5", "res4", "res3"], hidden_dim=D, num_queries=4, nheads=2,
                dim_feedforward=32, dropout=0.0, out_channels=1)
    args.update(kw)
    return CLEVERDecoder(**args)


def _inputs(b=2, t=5, hw=(61, 77)):
    torch.manual_seed(0)
    n = b * t
    size = lambda s: (-(-hw[0] // s), -(-hw[1] // s))  # noqa: E731
    feats = {k: torch.randn(n, D, *size(s), requires_grad=True) for k, s in LEVELS.items()}
    mask = torch.randn(n, D, *size(4), requires_grad=True)
    audio = {k: torch.randn(b, t, D, requires_grad=True) for k in LEVELS}
    return feats, mask, audio, torch.ones(b, t, dtype=torch.bool)


@pytest.mark.parametrize("t", [5, 10])
def test_shapes_coarse_to_fine(t):
    feats, mask, audio, valid = _inputs(t=t)
    out = _decoder(out_channels=3)(feats, mask, audio, valid)
    assert out["pred_masks"].shape == (2 * t, 3) + tuple(mask.shape[-2:])
    assert [tuple(a.shape[-2:]) for a in out["aux_masks"]] == [
        tuple(feats[k].shape[-2:]) for k in ("res5", "res4", "res3")]


def test_from_config_orders_levels_by_stride_and_sets_outputs():
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.SELM.NUM_CLASSES = 70
    cfg.MODEL.SELM.CLEVER.IN_FEATURES = ["res4", "res3", "res5"]
    shapes = {k: ShapeSpec(channels=8, stride=s) for k, s in LEVELS.items()}
    dec = CLEVERDecoder(cfg, shapes)
    assert dec.layer_levels == ["res5", "res4", "res3"]
    assert dec.to_logits.out_channels == 71
    cfg.MODEL.SELM.CLEVER.IN_FEATURES = ["res3", "res6"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        CLEVERDecoder(cfg, shapes)


@pytest.mark.parametrize("switch", [dict(audio_cross_attn=False), dict(video_cross_attn=False),
                                    dict(cross_level=False),
                                    dict(audio_cross_attn=False, video_cross_attn=False)])
def test_ablations_run_and_backprop(switch):
    dec = _decoder(**switch)
    feats, mask, audio, valid = _inputs()
    if switch.get("cross_level") is False:
        assert dec.used_levels == ["res3"] and len(dec.level_mix) == 0
        feats = {"res3": feats["res3"]}
        audio = {"res3": audio["res3"]}
    out = dec(feats, mask, audio, valid)
    loss = out["pred_masks"].square().mean() + sum(a.square().mean() for a in out["aux_masks"])
    loss.backward()
    assert torch.isfinite(loss)
    assert mask.grad.abs().sum() > 0 and feats["res3"].grad.abs().sum() > 0
    audio_grad = audio["res3"].grad
    if switch.get("audio_cross_attn") is False:
        assert audio_grad is None
    else:
        assert audio_grad.abs().sum() > 0
    if switch.get("cross_level") is False:
        assert all(a.shape[-2:] == feats["res3"].shape[-2:] for a in out["aux_masks"])


def test_padding_frames_do_not_leak_through_audio_attention():
    dec = _decoder().eval()
    feats, mask, audio, valid = _inputs()
    valid[1, 3:] = False
    out = dec(feats, mask, audio, valid)["pred_masks"]
    audio2 = {k: v.detach().clone() for k, v in audio.items()}
    for v in audio2.values():
        v[1, 3:] += 10.0
    out2 = dec(feats, mask, audio2, valid)["pred_masks"]
    # Clip 1's frames (indices 5..9) ignore its padding frames' audio; clip 0 is untouched.
    assert torch.allclose(out, out2, atol=1e-5)
    # Real frames' audio is used.
    audio2["res5"][1, 0] += 10.0
    assert not torch.allclose(dec(feats, mask, audio2, valid)["pred_masks"][5:], out[5:])


def test_clip_of_only_padding_is_finite():
    dec = _decoder()
    feats, mask, audio, valid = _inputs()
    valid[0] = False
    out = dec(feats, mask, audio, valid)
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
