"""selm_d2.official_code (through tests/official.py), which builds the SelM authors' code on CPU."""
import sys

import pytest
import torch
import torch.nn.functional as F

import official
from selm_d2 import official_code


def test_tasks_load_as_distinct_modules():
    official.require_official()
    loaded = {task: official.load_task(task) for task in official.TASKS}
    assert official.load_task("avs_ms3") is loaded["avs_ms3"]  # cached
    assert loaded["avss"].decoder.DProjector is not loaded["avs_ms3"].decoder.DProjector
    assert loaded["avs_s4"].SelM.SelM_R50 is not loaded["avs_ms3"].SelM.SelM_R50
    for task, ns in loaded.items():
        assert ns.SelM.__name__ == "selm_official_{}.model.SelM".format(task)
        # The task's SelM.py imported its own folder's modules, not another task's.
        assert ns.SelM.Decoder is ns.decoder.Decoder
        assert ns.SelM.BCSM is ns.BCSM.BCSM
        assert ns.pvt.DAM_Fusion_Block is ns.DAM.DAM_Fusion_Block
        assert ns.BCSM.Mamba is official.MambaRef
        for attr in ("loss", "utility", "vggish", "resnet"):
            assert getattr(ns, attr).__name__.startswith("selm_official_{}.".format(task))
        assert hasattr(ns.utility, "mask_iou") and hasattr(ns.loss, "Seg_Loss")
    assert hasattr(loaded["avss"].color_metrics, "calc_color_miou_fscore")
    assert not hasattr(loaded["avs_ms3"], "color_metrics")
    for name in ("model", "loss", "utils", "torchvggish", "mamba_ssm", "causal_conv1d",
                 "selective_scan_cuda"):
        assert name not in sys.modules, name
    assert not any(isinstance(f, official._TaskFinder) for f in sys.meta_path)
    # The authors' pvt.py registers pvt_v2_b5 with timm; the harness must not let it replace
    # timm's own (selm_d2's PVT backbone is built with timm.create_model).
    from timm.models import _registry

    assert _registry._model_entrypoints["pvt_v2_b5"].__module__ == "timm.models.pvt_v2"


def test_require_official_fails_under_ci_and_skips_otherwise(monkeypatch, tmp_path):
    monkeypatch.setattr(official_code, "OFFICIAL_ROOT", tmp_path / "missing")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="missing"):
        official.require_official()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="missing"):
        official.require_official()
    monkeypatch.setattr(official_code, "MAMBA_SDIST_DIR", tmp_path / "nosdist")
    with pytest.raises(pytest.skip.Exception, match="fetch_mamba_reference"):
        official.require_mamba_sdist()
    # Outside the tests (tools/benchmark.py) the same miss is an error that names the fix.
    with pytest.raises(official_code.OfficialCodeMissing, match="SELM_OFFICIAL_ROOT"):
        official_code.require_official()


def _mamba_by_recurrence(m, u):
    """Mamba's forward written out step by step, independently of mamba-ssm's code."""
    w = {k: v.detach().double() for k, v in m.state_dict().items()}
    u = u.double()
    batch, length, _ = u.shape
    d_inner, d_state, k = m.d_inner, m.d_state, m.d_conv
    xz = u @ w["in_proj.weight"].T
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    # Depthwise causal conv1d: y_t = b + sum_j w_j x_{t-(k-1)+j}, zeros before the start.
    conv = w["conv1d.weight"][:, 0, :]  # [d_inner, k]
    xc = torch.zeros_like(x)
    for t in range(length):
        acc = w["conv1d.bias"].expand(batch, d_inner).clone()
        for j in range(k):
            s = t - (k - 1) + j
            if s >= 0:
                acc = acc + conv[:, j] * x[:, s]
        xc[:, t] = acc
    x = F.silu(xc)
    dbl = x @ w["x_proj.weight"].T
    dt, b_in, c_out = dbl.split([m.dt_rank, d_state, d_state], dim=-1)
    delta = F.softplus(dt @ w["dt_proj.weight"].T + w["dt_proj.bias"])  # [B, L, d_inner]
    a = -torch.exp(w["A_log"])  # [d_inner, d_state]
    h = torch.zeros(batch, d_inner, d_state, dtype=torch.float64)
    ys = []
    for t in range(length):
        h = (torch.exp(delta[:, t, :, None] * a) * h
             + delta[:, t, :, None] * b_in[:, t, None, :] * x[:, t, :, None])
        ys.append((h * c_out[:, t, None, :]).sum(-1) + w["D"] * x[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ w["out_proj.weight"].T


def test_mamba_ref_is_the_pure_pytorch_path_and_matches_the_recurrence():
    official.require_official()
    mamba = official.load_mamba()
    assert mamba.__version__ == official.MAMBA_VERSION
    assert mamba.mamba_simple.selective_scan_fn is official.selective_scan_ref
    assert mamba.mamba_simple.causal_conv1d_fn is None
    torch.manual_seed(0)
    m = official.MambaRef(d_model=16, use_fast_path=True)  # forced off
    assert m.use_fast_path is False and m.d_inner == 32 and m.dt_rank == 1
    u = torch.randn(2, 7, 16)
    with torch.no_grad():
        out = m(u)
    assert out.shape == (2, 7, 16) and torch.isfinite(out).all()
    expected = _mamba_by_recurrence(m, u)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_official_vggish_builds():
    official.require_official()
    vgg = official.build_official_vggish("avs_ms3")
    assert not vgg.training
    with torch.no_grad():
        out = vgg(torch.randn(2, 1, 96, 64))
    assert out.shape == (2, 128)
    again = official.build_official_vggish("avs_ms3")  # same seed, same weights
    assert torch.equal(vgg.embeddings[0].weight, again.embeddings[0].weight)


@pytest.mark.slow
def test_official_ms3_r50_forward():
    official.require_official()
    model = official.build_official("avs_ms3", "R50", seed=0)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    # MS3's decoder has positional embeddings for 28/56/112-sized maps: 448 x 448 frames
    # (its forward then resizes the mask to 224 x 224).
    frames = torch.randn(5, 3, 448, 448, generator=g)
    audio = torch.randn(5, 128, generator=g)
    with torch.no_grad():
        fuse_mask, features, maps = model(frames, audio)
    assert fuse_mask.shape == (5, 1, 224, 224) and torch.isfinite(fuse_mask).all()
    assert [tuple(f.shape) for f in features] == [(5, 256, s, s) for s in (14, 28, 56, 112)]
    assert len(maps) == 3
    assert [tuple(m.shape) for m in maps] == [(5, 2, s, s) for s in (28, 56, 112)]
