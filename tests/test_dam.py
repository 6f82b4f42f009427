import pytest
import torch

from selm_d2.modeling.dam import DAM_MODES, DualAlignmentModule, build_dam


def _inputs(b=2, t=5, c_v=12, c_a=8, hw=(7, 9), hw_a=(6, 4)):
    torch.manual_seed(0)
    return torch.randn(b * t, c_v, *hw), torch.randn(b * t, c_a, *hw_a)


@pytest.mark.parametrize("mode", [m for m in DAM_MODES if m != "none"])
@pytest.mark.parametrize("t", [5, 10])
def test_shapes_identity_at_init_and_gradients(mode, t):
    x_v, x_a = _inputs(t=t)
    dam = build_dam(mode, 12, 8, dropout=0.1).eval()
    out_v, out_a = dam(x_v, x_a, t)
    assert out_v.shape == x_v.shape and out_a.shape == x_a.shape
    # Zero-initialised conditioning branches: pretrained encoder features pass unchanged.
    assert torch.allclose(out_v, x_v) and torch.allclose(out_a, x_a)

    dam.train()
    x_v.requires_grad_(True)
    x_a.requires_grad_(True)
    out_v, out_a = dam(x_v, x_a, t)
    (out_v.square().sum() + out_a.square().sum()).backward()
    assert all(p.grad is not None for p in dam.parameters())
    assert sum(p.grad.abs().sum() for p in dam.parameters()) > 0
    assert x_v.grad.abs().sum() > 0 and x_a.grad.abs().sum() > 0


def test_a2v_reweights_visual_with_audio_after_training_step():
    x_v, x_a = _inputs()
    dam = DualAlignmentModule(12, 8, dropout=0.0, a2v=True, v2a=True)
    with torch.no_grad():
        for p in dam.parameters():
            p.normal_(0, 0.5)
    out_v, out_a = dam(x_v, x_a, 5)
    assert not torch.allclose(out_v, x_v) and not torch.allclose(out_a, x_a)
    # Frame k's visual output depends only on frame k's audio (kernel-1 token convolution).
    x_a2 = x_a.clone()
    x_a2[3] += 1.0
    out_v2, _ = dam(x_v, x_a2, 5)
    changed = (out_v2 - out_v).flatten(1).abs().sum(1) > 0
    assert changed.tolist() == [i == 3 for i in range(10)]


def test_single_direction_modes_leave_other_modality():
    x_v, x_a = _inputs()
    a2v = build_dam("a2v", 12, 8, 0.0)
    v2a = build_dam("v2a", 12, 8, 0.0)
    for p in list(a2v.parameters()) + list(v2a.parameters()):
        torch.nn.init.normal_(p, 0, 0.5)
    assert torch.equal(a2v(x_v, x_a, 5)[1], x_a)
    assert torch.equal(v2a(x_v, x_a, 5)[0], x_v)
    assert not torch.allclose(a2v(x_v, x_a, 5)[0], x_v)
    assert not torch.allclose(v2a(x_v, x_a, 5)[1], x_a)


def test_none_and_unknown_mode():
    assert build_dam("none", 12, 8, 0.1) is None
    with pytest.raises(ValueError, match="MODEL.SELM.DAM.MODE"):
        build_dam("sum", 12, 8, 0.1)


@pytest.mark.parametrize("feature_conv", ["pointwise", "depthwise"])
def test_reweighting_matches_hand_computation(feature_conv):
    """W = GELU(Conv1D(F)) * GELU(Conv1D(tokens)), F + F * W, computed with torch's conv1d."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    dam = build_dam("a2v", 12, 8, 0.0, feature_conv=feature_conv).eval()
    block = dam.a2v
    torch.nn.init.normal_(block.cond_branch.conv.weight)  # leave the identity start
    x_v, x_a = torch.randn(6, 12, 5, 4), torch.randn(6, 8, 3, 2)
    feat = block.feat_branch.conv
    groups = 12 if feature_conv == "depthwise" else 1
    weight = F.gelu(F.conv1d(x_v.flatten(2), feat.weight, feat.bias, groups=groups))
    tokens = x_a.mean(dim=(2, 3)).view(2, 3, 8).transpose(1, 2)
    cond = F.gelu(F.conv1d(tokens, block.cond_branch.conv.weight, block.cond_branch.conv.bias))
    cond = cond.transpose(1, 2).reshape(6, 12, 1)
    expected = x_v + x_v * (weight * cond).view_as(x_v)
    out_v, out_a = dam(x_v, x_a, 3)
    torch.testing.assert_close(out_v, expected)
    assert out_a is x_a


def test_unknown_feature_conv_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SELM.DAM.FEATURE_CONV"):
        build_dam("dual", 12, 8, 0.0, feature_conv="separable")
