"""BCSM (Bidirectional Conditioned Selective Mechanism) against the authors' BCSM.py."""
import re

import pytest
import torch

from selm_d2.modeling.bcsm import BCSM

import official
from conftest import randomise

MAMBA = dict(d_state=4, impl="torch")



def _randomise(module, seed, scale=0.2):
    return randomise(module, seed, scale)


def _features(b, t, d, sizes=((4, 4), (3, 3), (2, 2), (1, 1)), seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(b * t, d, h, w, generator=g) for h, w in sizes]
    return feats, torch.randn(b, t, d, generator=g)


def _their_name(name):
    """The authors' parameter name -> ours (Encoder.layers.<j>.layernorm / mamba_block)."""
    name = re.sub(r"_encoder\.(\d+)\.layers\.(\d+)\.", r"_encoder.\1.\2.", name)
    return name.replace(".layernorm.", ".norm.").replace(".mamba_block.", ".mixer.")


def test_one_clip_equals_the_authors_bcsm():
    """At one clip per batch (T = 5, d = 256: both hard-coded in their code) the selected
    features, the selected audio and the gradients equal the authors' module, whose Mamba
    blocks are mamba-ssm's own (official.MambaRef)."""
    official.require_official()
    torch.manual_seed(0)
    theirs = _randomise(official.load_task("avs_ms3").BCSM.BCSM(dim=256), seed=2,
                        scale=0.02)
    ours = BCSM(256, impl="torch")
    ours.load_state_dict({_their_name(k): v for k, v in theirs.state_dict().items()},
                         strict=True)
    feats, audio = _features(1, 5, 256)
    results = []
    for module in (ours, theirs):
        leaves = [f.clone().requires_grad_() for f in feats]
        audio_leaf = audio.clone().requires_grad_()
        selected, audio_out = module(leaves, audio_leaf)[:2]
        if module is theirs:
            selected = selected[::-1]  # theirs come back coarse to fine
            audio_out = audio_out.view(1, 5, 256)  # [BT, d, 1]
        loss = sum((s * s.detach().sign()).sum() for s in selected) + audio_out.square().sum()
        loss.backward()
        results.append((selected, audio_out, [x.grad for x in leaves], audio_leaf.grad,
                        {n: p.grad for n, p in module.named_parameters()}))
    (sel, aud, fgrad, agrad, pgrad), (ref_sel, ref_aud, ref_fgrad, ref_agrad, ref_pgrad) = results
    for ours_t, theirs_t in zip(sel + [aud] + fgrad + [agrad], ref_sel + [ref_aud] + ref_fgrad +
                                [ref_agrad]):
        torch.testing.assert_close(ours_t, theirs_t, rtol=1e-4, atol=1e-5)
    for name, grad in ref_pgrad.items():
        torch.testing.assert_close(pgrad[_their_name(name)], grad, rtol=1e-4, atol=1e-5,
                                   msg=name)


def test_every_clip_is_computed_on_its_own():
    """With two clips in the batch each clip's outputs equal those of the clip alone (the
    authors' code mixes clips at levels 2-4 when a batch holds more than one: our deliberate
    difference)."""
    bcsm = _randomise(BCSM(16, num_blocks=2, **MAMBA), seed=3).eval()
    feats, audio = _features(2, 5, 16)
    with torch.no_grad():
        together = bcsm(feats, audio)
        for clip in range(2):
            frames = slice(5 * clip, 5 * clip + 5)
            alone = bcsm([f[frames] for f in feats], audio[clip:clip + 1])
            for got, want in zip(together[0], alone[0]):
                torch.testing.assert_close(got[frames], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(together[1][clip:clip + 1], alone[1],
                                       rtol=1e-5, atol=1e-6)
            for level in alone[2]:
                torch.testing.assert_close(together[2][level][clip:clip + 1], alone[2][level],
                                           rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [5, 10])
def test_shapes_gates_and_selection(t):
    """Shapes; the gates are SiLU outputs, [B, T, d] per level, and each level's features are
    re-weighted per channel: F_i (1 + gate_i) (hand computation)."""
    bcsm = _randomise(BCSM(16, num_levels=4, num_blocks=1, **MAMBA), seed=4)
    feats, audio = _features(2, t, 16)
    selected, audio_out, gates = bcsm(feats, audio)
    assert [s.shape for s in selected] == [f.shape for f in feats]
    assert audio_out.shape == audio.shape
    assert sorted(gates) == [0, 1, 2, 3]
    for i, f in enumerate(feats):
        gate = gates[i]
        assert gate.shape == (2, t, 16)
        assert (gate >= -0.2785).all()  # SiLU's minimum
        expected = f * (1 + gate.reshape(2 * t, 16, 1, 1))
        torch.testing.assert_close(selected[i], expected)
    # The selected audio is A (1 + g) with g the mean over levels of SiLU(Linear(v_i)): the
    # ratio is the same for every clip-frame-channel whatever A is, so doubling A doubles it.
    doubled = bcsm(feats, 2 * audio)[1]
    torch.testing.assert_close(doubled, 2 * audio_out, rtol=1e-5, atol=1e-5)
    (sum(s.sum() for s in selected) + audio_out.sum()).backward()
    assert all(p.grad is not None for p in bcsm.parameters())


def test_each_modality_selects_the_other():
    bcsm = _randomise(BCSM(16, num_blocks=1, **MAMBA), seed=5).eval()
    feats, audio = _features(1, 5, 16)
    with torch.no_grad():
        sel, aud, gates = bcsm(feats, audio)
        sel2, aud2, gates2 = bcsm(feats, audio + torch.randn(audio.shape))
        sel3, aud3, _ = bcsm([f + torch.randn(f.shape) for f in feats], audio)
    # The audio's gates (and so the features' weights) follow the audio ...
    assert not torch.allclose(gates[0], gates2[0])
    assert not torch.allclose(sel[0], sel2[0])
    # ... and the visual features' pooled tokens set the audio's weights.
    ratio, ratio3 = aud / audio, aud3 / audio
    assert not torch.allclose(ratio, ratio3)


def test_trailing_frames_do_not_change_earlier_frames():
    """The Mamba scans are causal along time: AVSS's padding frames (at the end) cannot reach
    the real frames."""
    bcsm = _randomise(BCSM(16, num_blocks=2, **MAMBA), seed=6).eval()
    feats, audio = _features(1, 10, 16)
    changed = [f.clone() for f in feats]
    for f in changed:
        f[6:] += 3.0
    changed_audio = audio.clone()
    changed_audio[:, 6:] -= 3.0
    with torch.no_grad():
        out = bcsm(feats, audio)
        out2 = bcsm(changed, changed_audio)
    for a, b in zip(out[0], out2[0]):
        torch.testing.assert_close(a[:6], b[:6], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1][:, :6], out2[1][:, :6], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1][:, 6:], out2[1][:, 6:])


def test_stacks_and_mamba_arguments():
    bcsm = BCSM(16, num_levels=3, num_blocks=2, d_state=4, d_conv=3, expand=1, impl="torch")
    assert len(bcsm.video_encoder) == len(bcsm.audio_encoder) == 3
    assert all(len(stack) == 2 for stack in list(bcsm.video_encoder) + list(bcsm.audio_encoder))
    mixer = bcsm.audio_encoder[2][1].mixer
    assert (mixer.d_state, mixer.d_conv, mixer.d_inner, mixer.impl) == (4, 3, 16, "torch")
