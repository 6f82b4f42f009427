"""DAM (Dual Alignment Module) against the authors' ``DAM_Fusion_Block`` (their DAM.py)."""
import pytest
import torch
from torch.nn import functional as F

from selm_d2.modeling.dam import DAM
from selm_d2.official import _rename as _convert_name

import official

# The authors' audio width is hard-coded (256); the visual width and sizes can be tiny.
AUDIO_DIM = 256
DIM = 8


def _rename(name):
    """The authors' DAM_Fusion_Block parameter name -> ours, by the checkpoint converter's
    table (a wrong entry fails the comparisons below)."""
    renamed = _convert_name("encoder_backbone.DAM_Fusion1." + name)
    assert renamed.startswith("dam.res2."), renamed
    return renamed[len("dam.res2."):]


def _pair(dim=DIM, seed=0):
    """The authors' block with random weights (biases too) and our DAM with a copy."""
    official.require_official()
    block_cls = official.load_task("avs_ms3").DAM.DAM_Fusion_Block
    torch.manual_seed(seed)
    theirs = block_cls(dim=dim).eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if not name.endswith(("vis_weight", "audio_weight")):
                param.normal_(0, 0.3 if param.dim() > 1 else 0.1)
    ours = DAM(dim, AUDIO_DIM).eval()
    ours.load_state_dict({_rename(k): v for k, v in theirs.state_dict().items()}, strict=True)
    return theirs, ours


def _inputs(n=3, dim=DIM, hw=(3, 4), length=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, *hw, generator=g)
    audio = torch.randn(n, AUDIO_DIM, length, generator=g)
    return x, audio, torch.ones(n, length, 1)


@pytest.mark.parametrize("length", [1, 3])
def test_equals_the_authors_block(length):
    """Same visual and audio outputs, and gradients (inputs and parameters), on square maps
    (the authors' query reshape needs h == w), with some audio tokens masked and one frame
    fully masked.

    With one token the attended audio is constant over the pixels and its InstanceNorm is
    rounding noise divided by sqrt(eps) (see the quirk test below): the gradients carry that
    noise, and agree only because DAM runs the authors' ops on the authors' layouts (as its
    docstring says; the whole-model training parity relies on it)."""
    theirs, ours = _pair()
    x, audio, mask = _inputs(hw=(4, 4), length=length)
    if length > 1:
        mask[0, 1] = 0
        mask[2, 2] = 0
    mask[1] = 0  # a padding frame: every token masked
    outs, grads = [], []
    for module in (ours, theirs):
        xx, aa = x.clone().requires_grad_(), audio.clone().requires_grad_()
        out_x, out_a = module(xx, aa, mask)
        (out_x.sin().sum() + out_a.cos().sum()).backward()
        outs.append((out_x.detach(), out_a.detach()))
        grads.append((xx.grad, aa.grad))
    for what, ours_t, theirs_t in zip(["x", "audio", "grad x", "grad audio"],
                                      outs[0] + grads[0], outs[1] + grads[1]):
        torch.testing.assert_close(ours_t, theirs_t, rtol=1e-4, atol=1e-5, msg=what)
    assert outs[0][0].shape == x.shape and outs[0][1].shape == audio.shape
    ours_grads = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        torch.testing.assert_close(ours_grads[_rename(name)].grad, param.grad, rtol=1e-4,
                                   atol=1e-5, msg=name)


def test_non_square_maps():
    """The authors' block needs square maps (it reshapes to sqrt(hw) rows); every op acts per
    pixel or over all pixels, so our 2 x 8 map gives what theirs gives on the same 16 pixels
    laid out 4 x 4."""
    theirs, ours = _pair()
    x, audio, mask = _inputs(hw=(4, 4))
    with torch.no_grad():
        out_x, out_a = ours(x.reshape(3, DIM, 2, 8), audio, mask)
        ref_x, ref_a = theirs(x, audio, mask)
    torch.testing.assert_close(out_x.reshape_as(ref_x), ref_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_a, ref_a, rtol=1e-4, atol=1e-5)


def test_softmax_with_one_audio_token_ignores_the_audio_in_the_visual_update():
    """The documented quirk of the authors' DAM: softmax over a single audio token is 1 at
    every pixel, the attended audio is the same at every pixel, and the InstanceNorm over the
    pixels zeroes it. So vis_project(x) * 0 = 0 and the visual update is the constant
    r = GELU(out_conv bias), gated: x + tanh(W2 ReLU(W1 r)) * r. The audio update still
    depends on the audio."""
    theirs, ours = _pair()
    x, audio, mask = _inputs()
    other = torch.randn_like(audio) * 3
    with torch.no_grad():
        x1, a1 = ours(x, audio, mask)
        x2, a2 = ours(x, other, mask)
        ref_x1, _ = theirs(x, audio, mask)
        ref_x2, _ = theirs(x, other, mask)
        r = F.gelu(theirs.fusion.out_conv[0].bias)
        w1, w2 = theirs.gate[0].weight, theirs.gate[2].weight
        expected = x + (torch.tanh(w2 @ torch.relu(w1 @ r)) * r)[:, None, None]
    assert (x1 - x2).abs().max() < 1e-5
    assert (ref_x1 - ref_x2).abs().max() < 1e-5  # the authors' block does the same
    torch.testing.assert_close(x1, expected, rtol=0, atol=1e-4)
    assert (expected - x).abs().max() > 1e-3  # a real (audio-free) update
    assert (a1 - a2).abs().max() > 1e-2


def test_sigmoid_attention_makes_the_visual_update_depend_on_the_audio():
    """"sigmoid": scores pass a sigmoid one pixel-token pair at a time. Checked against the
    A2V branch written out with torch ops on the authors' modules' weights (the rest of the
    block as theirs)."""
    theirs, softmax_dam = _pair()
    dam = DAM(DIM, AUDIO_DIM, audio_attention="sigmoid").eval()
    dam.load_state_dict(softmax_dam.state_dict())
    x, audio, mask = _inputs()
    other = torch.randn_like(audio) * 3
    with torch.no_grad():
        x1, _ = dam(x, audio, mask)
        x2, _ = dam(x, other, mask)
        assert (x1 - x2).abs().max() > 1e-3

        # A2V by hand: [N, hw, 1] sigmoid scores, attended audio, InstanceNorm, gate.
        def conv(seq, t):
            module = seq[0] if isinstance(seq, torch.nn.Sequential) else seq
            return F.conv1d(t, module.weight, module.bias)

        att = theirs.fusion.audio_visual_att
        flat = x.flatten(2)
        query = F.instance_norm(conv(att.align_vis.query_conv2,
                                     F.instance_norm(conv(att.align_vis.query_conv, flat))))
        key = conv(att.align_vis.key_conv, audio)
        scores = torch.einsum("nch,ncl->nhl", query, key) / DIM ** 0.5
        attn = torch.sigmoid(scores)  # times softmax over one weight (vis_weight): 1
        attended = torch.einsum("ncl,nhl->nch", conv(att.audio_value_conv, audio), attn)
        vis = F.gelu(conv(theirs.fusion.vis_project, flat)) * F.instance_norm(
            conv(att.vis_out, attended))
        residual = F.gelu(conv(theirs.fusion.out_conv, vis)).transpose(1, 2)
        expected = flat + (theirs.gate(residual) * residual).transpose(1, 2)
    torch.testing.assert_close(x1, expected.view_as(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
def test_padding_frames(attention):
    """A masked frame's audio token reaches neither its visual update nor (through the
    attention) its own audio update; frames never see each other."""
    _, softmax_dam = _pair()
    dam = DAM(DIM, AUDIO_DIM, audio_attention=attention).eval()
    dam.load_state_dict(softmax_dam.state_dict())
    x, audio, mask = _inputs(n=3)
    mask[1] = 0
    changed = audio.clone()
    changed[1] += 5.0
    with torch.no_grad():
        x1, a1 = dam(x, audio, mask)
        x2, a2 = dam(x, changed, mask)
        alone_x, alone_a = dam(x[2:], audio[2:], mask[2:])
    assert (x1 - x2).abs().max() < 1e-5
    # Its audio output is its input plus an update computed without its audio.
    torch.testing.assert_close(a2[1] - a1[1], changed[1] - audio[1])
    torch.testing.assert_close(x1[[0, 2]], x2[[0, 2]])
    torch.testing.assert_close(a1[[0, 2]], a2[[0, 2]])
    torch.testing.assert_close(alone_x, x1[2:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone_a, a1[2:], rtol=1e-4, atol=1e-5)


def test_unknown_attention_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SELM.DAM.AUDIO_ATTENTION='tanh'"):
        DAM(DIM, AUDIO_DIM, audio_attention="tanh")
