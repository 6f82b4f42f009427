import pytest
import torch

from detectron2.config import get_cfg

from selm_d2.config import add_selm_config
from selm_d2.modeling.bcsm import A2V_SELECTIONS, BCSM, BCSM_MODES

D = 16


def _bcsm(mode="bidirectional", **kw):
    torch.manual_seed(0)
    args = dict(dim=D, mode=mode, num_blocks=2, pool_size=2,
                mamba_kwargs={"d_state": 4, "impl": "torch"})
    args.update(kw)
    return BCSM(**args)


def _inputs(b=2, t=5, hw=(3, 4)):
    torch.manual_seed(1)
    return (torch.randn(b, t, D, *hw, requires_grad=True),
            torch.randn(b, t, D, requires_grad=True))


@pytest.mark.parametrize("selection", A2V_SELECTIONS)
@pytest.mark.parametrize("mode", BCSM_MODES)
@pytest.mark.parametrize("t", [5, 10])
def test_modes_shapes_and_gradients(mode, t, selection):
    bcsm = _bcsm(mode, a2v_selection=selection)
    feats, audio = _inputs(t=t)
    f_sel, a_sel, selection_map = bcsm(feats, audio)
    assert f_sel.shape == feats.shape and a_sel.shape == audio.shape
    if mode in ("a2v", "bidirectional"):
        assert bcsm.has_selection_map
        assert selection_map.shape == (2, t, 3, 4)
        if selection == "spatial":
            assert ((selection_map > 0) & (selection_map < 1)).all()
            assert torch.allclose(f_sel, feats * selection_map.unsqueeze(2))
        else:
            # Per-channel weights in (0, 1), the same at every position of a frame.
            ratio = f_sel / feats
            assert ((ratio > 0) & (ratio < 1)).all()
            assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)
            assert torch.allclose(selection_map, f_sel.abs().mean(dim=2))
    else:
        assert selection_map is None and f_sel is feats
    if mode in ("off", "a2v"):
        assert a_sel is audio
    else:
        assert not torch.allclose(a_sel, audio)
    if mode == "off":
        assert len(list(bcsm.parameters())) == 0
        return
    (f_sel.square().sum() + a_sel.square().sum()).backward()
    assert all(p.grad is not None for p in bcsm.parameters())
    assert feats.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0


def test_channel_selection_mirrors_v2a():
    # The paper's A2V-SeM is V2A-SeM's mirror: the same stack and weight layer on audio tokens.
    bcsm = _bcsm("bidirectional", a2v_selection="channel")
    assert type(bcsm.a2v) is type(bcsm.v2a)
    assert sorted(n for n, _ in bcsm.a2v.named_children()) == ["mamba", "to_weight"]
    spatial = _bcsm("bidirectional", a2v_selection="spatial")
    assert sorted(n for n, _ in spatial.a2v.named_children()) == ["key", "mamba", "query"]


@pytest.mark.parametrize("selection", A2V_SELECTIONS)
def test_selection_is_conditioned_on_the_other_modality(selection):
    bcsm = _bcsm(a2v_selection=selection).eval()
    feats, audio = _inputs()
    _, _, weight = bcsm(feats, audio)
    _, a_sel, weight2 = bcsm(feats, audio + 1.0)
    assert not torch.allclose(weight, weight2)  # audio selects visual positions
    _, a_sel2, _ = bcsm(feats + 1.0, audio)
    assert not torch.allclose(a_sel, a_sel2)  # visual selects audio channels


@pytest.mark.parametrize("selection", A2V_SELECTIONS)
def test_trailing_frames_do_not_change_earlier_frames(selection):
    # The scan is causal along time: trailing padding frames cannot leak into real frames.
    bcsm = _bcsm(a2v_selection=selection).eval()
    feats, audio = _inputs()
    out = bcsm(feats, audio)
    feats2, audio2 = feats.detach().clone(), audio.detach().clone()
    feats2[:, 3:] += 5.0
    audio2[:, 3:] -= 5.0
    out2 = bcsm(feats2, audio2)
    for a, b in zip(out, out2):
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-5)


def test_from_config_and_bad_mode():
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.SELM.HIDDEN_DIM = 16
    cfg.MODEL.SELM.BCSM.MODE = "a2v"
    cfg.MODEL.SELM.BCSM.NUM_BLOCKS = 1
    cfg.MODEL.SELM.MAMBA.D_STATE = 4
    bcsm = BCSM(cfg)
    assert bcsm.v2a is None and len(bcsm.a2v.mamba) == 1
    assert bcsm.a2v.mamba[0].mixer.d_state == 4
    assert bcsm.a2v_selection == "channel"  # the paper's
    cfg.MODEL.SELM.BCSM.A2V_SELECTION = "pixel"
    with pytest.raises(ValueError, match="MODEL.SELM.BCSM.A2V_SELECTION.*channel, spatial"):
        BCSM(cfg)
    cfg.MODEL.SELM.BCSM.A2V_SELECTION = "spatial"
    cfg.MODEL.SELM.BCSM.MODE = "both"
    with pytest.raises(ValueError, match="MODEL.SELM.BCSM.MODE"):
        BCSM(cfg)


@pytest.mark.parametrize("selection", A2V_SELECTIONS)
@pytest.mark.parametrize("mode", BCSM_MODES)
def test_select_from_grouped_stacks_matches_forward(mode, selection):
    """What SelMHead does at inference: the stacks of several levels' BCSMs run as one group
    (``run_mamba_stacks``), then each level selects from its outputs. Same result as
    ``forward``; without the map "channel" returns None."""
    from selm_d2.modeling.mamba import run_mamba_stacks

    levels = [_bcsm(mode, a2v_selection=selection, pool_size=1) for _ in range(3)]
    for i, bcsm in enumerate(levels):  # distinct weights per level
        torch.manual_seed(10 + i)
        for param in bcsm.parameters():
            torch.nn.init.normal_(param, std=0.3)
    inputs = [_inputs(hw=(2, 3)) for _ in levels]
    with torch.no_grad():
        expected = [bcsm(*x) for bcsm, x in zip(levels, inputs)]
        pairs = [bcsm.sequences(*x) for bcsm, x in zip(levels, inputs)]
        assert len(pairs[0]) == {"off": 0, "a2v": 1, "v2a": 1, "bidirectional": 2}[mode]
        flat = [pair for level in pairs for pair in level]
        outputs = iter(run_mamba_stacks([s for s, _ in flat], [x for _, x in flat]))
        for bcsm, x, level, ref in zip(levels, inputs, pairs, expected):
            scanned = [next(outputs) for _ in level]
            got = bcsm.select(*x, scanned.__getitem__)
            for a, b in zip(got, ref):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            unmapped = bcsm.select(*x, scanned.__getitem__, selection_map=False)
            if mode in ("a2v", "bidirectional") and selection == "channel":
                assert unmapped[2] is None
            torch.testing.assert_close(unmapped[0], ref[0], rtol=1e-5, atol=1e-5)


def test_levels_keep_stacked_parameters_for_inference_only_until_train_or_eval():
    """BCSMLevels keeps run_mamba_stacks' stacked parameters between inference calls (one
    entry per depth for the group of all levels) and drops them on train()/eval(), so that
    weights trained in between are read afresh."""
    from selm_d2.modeling.bcsm import BCSMLevels

    levels = BCSMLevels({name: _bcsm(pool_size=1) for name in ("res3", "res4")}).eval()
    inputs = {name: tuple(t.detach() for t in _inputs()) for name in levels}
    with torch.no_grad():
        before = levels(inputs)
    assert len(levels._stacked) == 2  # num_blocks=2 depths, one group of 4 stacks
    levels.train()
    assert not levels._stacked
    levels(inputs)["res3"][0].sum().backward()  # gradients: in turn, nothing cached
    assert not levels._stacked
    with torch.no_grad():
        for param in levels.parameters():
            param.add_(0.05)
    levels.eval()
    with torch.no_grad():
        after = levels(inputs)
        expected = {name: bcsm(*inputs[name]) for name, bcsm in levels.items()}
    for name in levels:
        torch.testing.assert_close(after[name][0], expected[name][0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(after[name][0], before[name][0])
