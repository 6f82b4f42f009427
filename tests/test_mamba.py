"""Mamba layer: vectorised scan vs the sequential reference, mamba-ssm's own ``Mamba``
(``official.MambaRef``, its pure-PyTorch path) and the authors' BCSM block."""
import sys

import pytest
import torch
import torch.nn.functional as F

from selm_d2.modeling import mamba as mamba_module
from selm_d2.modeling.mamba import Mamba, MambaBlock, selective_scan, selective_scan_ref

import official


def _scan_inputs(batch, dim, dstate, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g),
        # Negative real A with a spread of decay rates, like -exp(A_log).
        "A": -torch.exp(torch.randn(dim, dstate, generator=g)),
        "B": torch.randn(batch, dstate, length, generator=g),
        "C": torch.randn(batch, dstate, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g),
    }


def _assert_close(actual, expected, what):
    # 1e-5 absolute, relative to the magnitude where values are large (sums over L).
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: what + ": " + m)


def _check_parity(inputs, optional, delta_softplus, **scan_kwargs):
    """Outputs and gradients of selective_scan vs selective_scan_ref for the same inputs."""
    names = ["u", "delta", "A", "B", "C"] + list(optional)
    results = []
    for scan in (selective_scan, selective_scan_ref):
        leaves = {k: inputs[k].clone().requires_grad_() for k in names}
        kwargs = dict(scan_kwargs) if scan is selective_scan else {}
        out = scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                   **{k: leaves[k] for k in optional}, delta_softplus=delta_softplus, **kwargs)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
        results.append((out.detach(), {k: leaves[k].grad for k in names}))
    (out, grads), (ref_out, ref_grads) = results
    assert torch.isfinite(ref_out).all()
    _assert_close(out, ref_out, "output")
    for name in names:
        _assert_close(grads[name], ref_grads[name], "grad of " + name)


@pytest.mark.parametrize("length", [1, 7, 64, 200])
@pytest.mark.parametrize("optional,delta_softplus", [
    (("D", "z", "delta_bias"), True),
    ((), False),
    (("D",), True),
    (("z", "delta_bias"), False),
])
def test_scan_matches_reference(length, optional, delta_softplus):
    inputs = _scan_inputs(batch=2, dim=6, dstate=4, length=length)
    if not delta_softplus:  # delta is a step size: keep it positive without the softplus
        inputs["delta"] = inputs["delta"].abs() * 0.5
        inputs["delta_bias"] = inputs["delta_bias"].abs() * 0.1
    _check_parity(inputs, optional, delta_softplus)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
def test_scan_matches_reference_for_any_chunking(chunk_size):
    # 37 steps: one chunk, many chunks, and lengths that need padding.
    _check_parity(_scan_inputs(batch=1, dim=3, dstate=5, length=37, seed=1),
                  ("D", "z", "delta_bias"), True, chunk_size=chunk_size)


def test_scan_matches_reference_on_long_sequence():
    _check_parity(_scan_inputs(batch=1, dim=4, dstate=3, length=1030, seed=2),
                  ("D", "z", "delta_bias"), True)


def test_scan_is_stable_when_decays_underflow():
    inputs = _scan_inputs(batch=1, dim=4, dstate=3, length=96, seed=3)
    # exp(delta * A) ranges from 1 - 1e-6 down to exp(-4000) (= 0 in float32).
    inputs["delta"] = torch.logspace(-4, 1.6, 96).expand(1, 4, 96).contiguous()
    inputs["A"] = -torch.logspace(-2, 2, 12).view(4, 3)
    _check_parity(inputs, ("D",), False, chunk_size=8)


def test_scan_returns_input_dtype():
    inputs = _scan_inputs(batch=1, dim=3, dstate=2, length=9)
    half = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    out = selective_scan(**half, delta_softplus=True)
    ref = selective_scan_ref(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)


def test_chunked_scan_backward_matches_finite_differences():
    # The hand-written backward in float64 (the public functions compute in float32).
    g = torch.Generator().manual_seed(4)
    bsz, length, dim, dstate, size = 2, 6, 2, 3, 3
    args = (torch.randn(bsz, length, dim, generator=g, dtype=torch.float64),
            torch.rand(bsz, length, dim, generator=g, dtype=torch.float64) + 0.1,
            -torch.rand(dim, dstate, generator=g, dtype=torch.float64) - 0.5,
            torch.randn(bsz, length, dstate, generator=g, dtype=torch.float64),
            torch.randn(bsz, length, dstate, generator=g, dtype=torch.float64))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(
        lambda *a: mamba_module._ChunkedSelectiveScan.apply(*a, size), args)


def test_scan_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(**_scan_inputs(1, 2, 2, 4), chunk_size=0)


# ------------------------------------------------------------------ the Mamba module

def _state_shapes(module):
    return {name: list(t.shape) for name, t in module.state_dict().items()}


def test_state_dict_matches_mamba_ssm():
    # mamba_ssm.modules.mamba_simple.Mamba(d_model=16) (d_state 16, d_conv 4, expand 2):
    # d_inner = 32, dt_rank = ceil(16 / 16) = 1.
    assert _state_shapes(Mamba(16)) == {
        "A_log": [32, 16],
        "D": [32],
        "in_proj.weight": [64, 16],
        "conv1d.weight": [32, 1, 4],
        "conv1d.bias": [32],
        "x_proj.weight": [1 + 32, 32],
        "dt_proj.weight": [32, 1],
        "dt_proj.bias": [32],
        "out_proj.weight": [16, 32],
    }
    # d_model 40, d_state 4, d_conv 3, expand 1.5, bias, no conv bias:
    # d_inner = 60, dt_rank = ceil(40 / 16) = 3.
    module = Mamba(40, d_state=4, d_conv=3, expand=1.5, bias=True, conv_bias=False)
    assert _state_shapes(module) == {
        "A_log": [60, 4],
        "D": [60],
        "in_proj.weight": [120, 40],
        "in_proj.bias": [120],
        "conv1d.weight": [60, 1, 3],
        "x_proj.weight": [3 + 8, 60],
        "dt_proj.weight": [60, 3],
        "dt_proj.bias": [60],
        "out_proj.weight": [40, 60],
        "out_proj.bias": [40],
    }
    assert module.conv1d.padding == (2,) and module.conv1d.groups == 60


def test_initialisation_matches_mamba_ssm():
    torch.manual_seed(0)
    module = Mamba(32, d_state=8, dt_min=0.002, dt_max=0.05)
    expected_a_log = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(64, 8)
    assert torch.equal(module.A_log.data, expected_a_log)
    assert torch.equal(module.D.data, torch.ones(64))
    dt = F.softplus(module.dt_proj.bias.data)
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert dt.max() / dt.min() > 5  # log-uniform spread, not a constant
    std = module.dt_rank ** -0.5
    assert module.dt_proj.weight.abs().max() <= std
    assert module.A_log._no_weight_decay and module.D._no_weight_decay
    constant = Mamba(32, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(constant.dt_proj.weight, torch.full_like(constant.dt_proj.weight,
                                                                   2.0 * std))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="MODEL.SELM.MAMBA.IMPL"):
        Mamba(16, impl="triton")
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(16, dt_init="normal")


def _reference_forward(module, hidden_states):
    """Mamba's forward written out from its definition, on ``selective_scan_ref``."""
    length = hidden_states.shape[1]
    x, z = F.linear(hidden_states, module.in_proj.weight).transpose(1, 2).chunk(2, dim=1)
    # Causal depthwise conv: pad only the past.
    x = F.silu(F.conv1d(F.pad(x, (module.d_conv - 1, 0)), module.conv1d.weight,
                        module.conv1d.bias, groups=module.d_inner))
    x_dbl = x.transpose(1, 2) @ module.x_proj.weight.t()
    dt = x_dbl[..., :module.dt_rank] @ module.dt_proj.weight.t()
    B = x_dbl[..., module.dt_rank:module.dt_rank + module.d_state]
    C = x_dbl[..., module.dt_rank + module.d_state:]
    y = selective_scan_ref(x, dt.transpose(1, 2), -torch.exp(module.A_log), B.transpose(1, 2),
                           C.transpose(1, 2), module.D, z=z, delta_bias=module.dt_proj.bias,
                           delta_softplus=True)
    assert y.shape[-1] == length
    return y.transpose(1, 2) @ module.out_proj.weight.t()


@pytest.mark.parametrize("length,conv_bias", [(1, True), (3, True), (45, True), (45, False)])
def test_module_forward_matches_reference_assembly(length, conv_bias):
    torch.manual_seed(1)
    module = Mamba(24, d_state=6, d_conv=4, conv_bias=conv_bias, impl="torch")
    hidden = torch.randn(2, length, 24)
    out = module(hidden)
    assert out.shape == (2, length, 24)
    _assert_close(out, _reference_forward(module, hidden), "module output")


def test_module_is_causal():
    torch.manual_seed(2)
    module = Mamba(16, d_state=4, impl="torch")
    hidden = torch.randn(1, 12, 16)
    changed = hidden.clone()
    changed[:, 7] += 1.0
    out, out_changed = module(hidden), module(changed)
    torch.testing.assert_close(out[:, :7], out_changed[:, :7], rtol=0, atol=1e-6)
    assert (out[:, 7] - out_changed[:, 7]).abs().max() > 1e-3


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(3)
    trained = Mamba(16, d_state=8, impl="torch")
    path = tmp_path / "mamba.pth"
    torch.save(trained.state_dict(), str(path))
    torch.manual_seed(4)
    fresh = Mamba(16, d_state=8, impl="torch")
    hidden = torch.randn(2, 10, 16)
    assert not torch.allclose(fresh(hidden), trained(hidden))
    fresh.load_state_dict(torch.load(str(path)))
    assert torch.equal(fresh(hidden), trained(hidden))


def test_cuda_impl_without_kernels_names_the_install_command():
    module = Mamba(16, impl="cuda")
    # On CPU this fails whether or not mamba-ssm is installed.
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[mamba\]"):
        module(torch.randn(1, 4, 16))


@pytest.fixture
def fresh_kernel_import():
    mamba_module._load_cuda_kernels.cache_clear()
    yield
    mamba_module._load_cuda_kernels.cache_clear()


def test_import_failures_other_than_import_error_mean_unavailable(tmp_path, monkeypatch,
                                                                  fresh_kernel_import):
    # A mamba-ssm whose import fails the way CUDA builds do on machines without CUDA.
    package = tmp_path / "mamba_ssm"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise OSError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n.split(".")[0] == "mamba_ssm"]:
        monkeypatch.delitem(sys.modules, name)
    kernels = mamba_module._load_cuda_kernels()
    assert isinstance(kernels.error, OSError)
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[mamba\].*OSError: libcudart"):
        Mamba(16, impl="cuda")(torch.randn(1, 3, 16))
    assert Mamba(16, impl="auto")(torch.randn(1, 3, 16)).shape == (1, 3, 16)


# ------------------------------------------------------------------ against mamba-ssm's code

def test_scan_matches_mamba_ssm_selective_scan_ref():
    """Our sequential reference and vectorised scan against mamba-ssm's selective_scan_ref."""
    theirs = official.selective_scan_ref
    inputs = _scan_inputs(batch=2, dim=5, dstate=3, length=23, seed=9)
    expected = theirs(**inputs, delta_softplus=True)
    _assert_close(selective_scan_ref(**inputs, delta_softplus=True), expected, "reference")
    _assert_close(selective_scan(**inputs, delta_softplus=True, chunk_size=4), expected, "scan")


@pytest.mark.parametrize("kwargs", [{}, dict(d_state=4, d_conv=3, expand=1.5, bias=True,
                                            conv_bias=False, dt_init="constant")],
                         ids=["defaults", "variant"])
def test_same_seed_gives_mamba_ssm_initialisation(kwargs):
    """Parameters created in mamba-ssm's order with its initialisation: same names, shapes and
    values from the same seed."""
    torch.manual_seed(0)
    theirs = official.MambaRef(d_model=24, **kwargs).state_dict()
    torch.manual_seed(0)
    ours = Mamba(24, impl="torch", **kwargs).state_dict()
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


@pytest.mark.parametrize("length", [1, 5, 37])
def test_forward_and_gradients_match_mamba_ssm(length):
    """Weights copied from mamba-ssm's Mamba (same parameter names): same output, same
    gradients of the input and of every parameter (37 steps: several scan chunks)."""
    torch.manual_seed(1)
    theirs = official.MambaRef(d_model=16, d_state=8)
    with torch.no_grad():  # move off the initialisation (D = 1, A_log = log n, ...)
        for param in theirs.parameters():
            param.add_(0.1 * torch.randn_like(param))
    ours = Mamba(16, d_state=8, impl="torch")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, length, 16)
    weight = torch.randn(2, length, 16)
    outputs, grads = [], []
    for module in (ours, theirs):
        leaf = x.clone().requires_grad_()
        out = module(leaf)
        (out * weight).sum().backward()
        outputs.append(out.detach())
        grads.append(dict(input=leaf.grad, **{n: p.grad for n, p in module.named_parameters()}))
    _assert_close(outputs[0], outputs[1], "output")
    assert grads[0].keys() == grads[1].keys()
    for name in grads[1]:
        _assert_close(grads[0][name], grads[1][name], "grad of " + name)


def test_mamba_block_is_the_authors_block():
    """The authors' ``Mamba_channel_temporal_block`` (their BCSM.py, mamba-ssm's Mamba): the
    residual adds the normalised input, y = LN(x); y + Mamba(y)."""
    official.require_official()
    block_cls = official.load_task("avs_ms3").BCSM.Mamba_channel_temporal_block
    torch.manual_seed(5)
    theirs = block_cls(dim=16)
    with torch.no_grad():
        theirs.layernorm.weight.uniform_(0.5, 1.5)
        theirs.layernorm.bias.normal_(0, 0.2)
    ours = MambaBlock(16, impl="torch")
    renamed = {k.replace("layernorm.", "norm.").replace("mamba_block.", "mixer."): v
               for k, v in theirs.state_dict().items()}
    ours.load_state_dict(renamed, strict=True)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    out = ours(hidden)
    _assert_close(out, theirs(hidden), "block output")
    # Written out with torch's own ops: the normalised input, not the raw one, is added.
    normed = F.layer_norm(hidden, (16,), ours.norm.weight, ours.norm.bias, ours.norm.eps)
    _assert_close(out, normed + ours.mixer(normed), "norm-then-residual")
    assert not torch.allclose(out, hidden + ours.mixer(normed), atol=1e-3)
    out.square().mean().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    for name, param in ours.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_mamba_block_passes_its_arguments_to_mamba():
    block = MambaBlock(16, d_state=4, d_conv=3, expand=1, impl="torch")
    assert (block.mixer.d_state, block.mixer.d_conv, block.mixer.d_inner) == (4, 3, 16)
    assert block.mixer.impl == "torch"
