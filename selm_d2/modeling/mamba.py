"""Mamba: the selective state space layer used by BCSM's Mamba blocks.

``Mamba`` has exactly the parameters (names, shapes, initialisation) of
``mamba_ssm.modules.mamba_simple.Mamba`` and computes the same function, so state dicts move
between the two unchanged. When ``mamba_ssm`` imports and the input is on CUDA, its fused
kernels are used; everywhere else a vectorised pure-PyTorch selective scan runs.

Like mamba-ssm's kernels and its ``selective_scan_ref`` (and unlike Eq. 2 of the Mamba paper),
A is discretised as exp(delta * A) but B as delta * B (Euler, not full ZOH).
"""
import collections
import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from detectron2.utils.logger import log_first_n
from ..utils import ConfigError

__all__ = ["Mamba", "MambaBlock", "selective_scan", "selective_scan_ref"]

# Most scan steps per chunk in ``selective_scan``, which takes about 2 * chunk_size +
# L / chunk_size Python-level steps: the best value is near sqrt(L / 2).
DEFAULT_CHUNK_SIZE = 16

_IMPLS = ("auto", "torch", "cuda")
_INSTALL_HINT = ("Mamba impl='cuda' (MODEL.SELM.MAMBA.IMPL) needs mamba-ssm "
                 "(`pip install -e .[mamba]`, which builds CUDA kernels) and CUDA tensors: {}. "
                 "Set MODEL.SELM.MAMBA.IMPL to 'auto' or 'torch' to use the PyTorch scan.")


class Mamba(nn.Module):
    """Selective SSM layer, parameter-for-parameter ``mamba_ssm.modules.mamba_simple.Mamba``.

    Arguments as mamba-ssm's, plus ``impl``: "auto" uses mamba-ssm's CUDA kernels for CUDA
    inputs when it imports and the PyTorch scan otherwise; "torch" always uses the PyTorch
    scan; "cuda" requires the kernels (error otherwise).
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4,
                 conv_bias=True, bias=False, impl="auto"):
        super().__init__()
        if impl not in _IMPLS:
            raise ConfigError("Mamba impl (MODEL.SELM.MAMBA.IMPL) must be one of {}, got {!r}"
                              .format(_IMPLS, impl))
        if dt_init not in ("random", "constant"):
            raise ValueError("Mamba dt_init must be 'random' or 'constant', got {!r}"
                             .format(dt_init))
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.impl = impl

        # Created in mamba-ssm's order, so one seed gives both implementations the same init.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv,
                                groups=self.d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        # Keep the variance of delta independent of dt_rank at initialisation.
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # Step sizes softplus(bias) start log-uniform in [dt_min, dt_max]; the bias is their
        # inverse softplus, x + log(1 - exp(-x)).
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

        # S4D-real initialisation: A = -(1, 2, ..., N) for every channel, stored as log(-A).
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a_init))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        # Read by the optimizer builder, as in mamba-ssm: decaying these would pull A to -1
        # and the skip to 0.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states):
        """hidden_states [B, L, d_model] -> [B, L, d_model]; causal along L."""
        return _mixer_forward(self, hidden_states, self._cuda_kernels(hidden_states))

    def _cuda_kernels(self, hidden_states):
        """mamba-ssm's kernels when this call should use them, else None (PyTorch scan)."""
        if self.impl == "torch":
            return None
        if self.impl == "auto" and not hidden_states.is_cuda:
            log_first_n(logging.INFO, "MODEL.SELM.MAMBA.IMPL auto: the input is on {}, so BCSM's "
                        "Mamba blocks run the PyTorch selective scan".format(hidden_states.device),
                        n=1, key="caller")
            return None
        kernels = _load_cuda_kernels()
        if self.impl == "auto":
            if kernels.error is not None:
                log_first_n(logging.WARNING, "MODEL.SELM.MAMBA.IMPL auto: mamba-ssm is not usable "
                            "({}: {}), so BCSM's Mamba blocks run the slower PyTorch selective "
                            "scan on CUDA; `pip install -e .[mamba]` for the CUDA kernels".format(
                                type(kernels.error).__name__, kernels.error), n=1, key="caller")
                return None
            return kernels
        if kernels.error is not None:
            raise RuntimeError(_INSTALL_HINT.format(
                "importing mamba_ssm failed ({}: {})".format(type(kernels.error).__name__,
                                                             kernels.error)))
        if not hidden_states.is_cuda:
            raise RuntimeError(_INSTALL_HINT.format(
                "the input is on {}".format(hidden_states.device)))
        return kernels


def _mixer_forward(mamba, hidden_states, kernels=None):
    """Mamba's forward, [B, L, d_model] -> [B, L, d_model]."""
    x, z = mamba.in_proj(hidden_states).transpose(-1, -2).chunk(2, dim=-2)
    if kernels is not None and kernels.causal_conv1d_fn is not None:
        x = kernels.causal_conv1d_fn(x=x.contiguous(), weight=mamba.conv1d.weight.squeeze(1),
                                     bias=mamba.conv1d.bias, activation="silu")
    else:
        x = F.silu(_causal_depthwise_conv(x, mamba.conv1d.weight[:, 0], mamba.conv1d.bias))
    dt, B, C = torch.split(mamba.x_proj(x.transpose(-1, -2)),
                           [mamba.dt_rank, mamba.d_state, mamba.d_state], dim=-1)
    # dt_proj's bias is added inside the scan (delta_bias), as in mamba-ssm.
    dt = F.linear(dt, mamba.dt_proj.weight).transpose(-1, -2)  # [B, d_inner, L]
    A = -torch.exp(mamba.A_log.float())
    scan = selective_scan if kernels is None else kernels.selective_scan_fn
    y = scan(x, dt, A, B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous(),
             mamba.D.float(), z=z, delta_bias=mamba.dt_proj.bias.float(), delta_softplus=True)
    return mamba.out_proj(y.transpose(-1, -2))


def _causal_depthwise_conv(x, weight, bias):
    """Causal depthwise Conv1d, out_t = bias + sum_k weight[..., k] * x_{t - d_conv + 1 + k}.

    x [..., D, L]; weight [..., D, d_conv] (``nn.Conv1d`` with groups=D: its weight[:, 0]);
    bias [..., D] or None; weight and bias broadcast against x.
    As d_conv shifted multiply-adds: for BCSM's short sequences this beats ``F.conv1d`` with
    groups=D on CPU, and it only computes the L causal outputs.
    """
    d_conv = weight.shape[-1]
    padded = F.pad(x, (d_conv - 1, 0))
    length = x.shape[-1]
    out = x * weight[..., -1:] if bias is None else torch.addcmul(bias[..., None], x,
                                                                  weight[..., -1:])
    for k in range(d_conv - 1):
        out = out.addcmul(padded[..., k:k + length], weight[..., k:k + 1])
    return out


class MambaBlock(nn.Module):
    """BCSM's Mamba block, as the authors build it: ``y = LayerNorm(x); y + Mamba(y)``.

    The residual adds the normalised input (mamba-ssm's ``Block`` adds the raw one);
    [B, L, d_model] -> [B, L, d_model]. ``mamba_kwargs`` go to ``Mamba`` (d_state, d_conv,
    expand, impl, ...).
    """

    def __init__(self, d_model, **mamba_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = Mamba(d_model, **mamba_kwargs)

    def forward(self, x):
        x = self.norm(x)
        return x + self.mixer(x)


_CudaKernels = collections.namedtuple("_CudaKernels",
                                      ["selective_scan_fn", "causal_conv1d_fn", "error"])


@functools.lru_cache(maxsize=None)
def _load_cuda_kernels():
    """mamba-ssm's selective scan (and causal-conv1d's conv when installed), imported once.

    Any exception at import time (ImportError, or e.g. OSError / RuntimeError from a build
    without CUDA) means "not available" and is kept for the error message; errors raised while
    the kernels run are not caught anywhere.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # noqa: BLE001 - any import-time failure means "unavailable"
        return _CudaKernels(None, None, error)
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # noqa: BLE001 - optional: the PyTorch conv is used without it
        causal_conv1d_fn = None
    return _CudaKernels(selective_scan_fn, causal_conv1d_fn, None)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan, one time step at a time (the reference that ``selective_scan`` matches).

    Computes, for every channel d and state n, with h_{-1} = 0:
        delta = softplus(delta + delta_bias)          (each part only when given / enabled)
        h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
        y_t   = sum_n C_t * h_t + D * u_t,            out_t = y_t * silu(z_t)

    Args:
        u, delta: [B, D_in, L].
        A: [D_in, N] (negative real part of the diagonal state matrix).
        B, C: [B, N, L] (input-dependent).
        D: [D_in] or None. z: [B, D_in, L] or None. delta_bias: [D_in] or None.
    Returns:
        [B, D_in, L] in the dtype of ``u`` (computed in float32).
    """
    dtype_in = u.dtype
    u, delta = _discretisation_inputs(u, delta, delta_bias, delta_softplus)
    A, B, C = A.float(), B.float(), C.float()
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[-1])  # [B, D_in, N]
    ys = []
    # unbind (not indexing) so that the backward gathers the per-step gradients in one stack
    # instead of adding L full-size zero-padded tensors.
    for u_t, delta_t, B_t, C_t in zip(u.unbind(2), delta.unbind(2), B.unbind(2), C.unbind(2)):
        decay = torch.exp(delta_t[:, :, None] * A)
        state = decay * state + (delta_t * u_t)[:, :, None] * B_t[:, None, :]
        ys.append(torch.einsum("bdn,bn->bd", state, C_t))
    y = torch.stack(ys, dim=2)
    return _skip_and_gate(y, u, D, z).to(dtype_in)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   chunk_size=DEFAULT_CHUNK_SIZE):
    """Vectorised selective scan: same arguments, result and gradients as ``selective_scan_ref``.

    Shapes as ``selective_scan_ref``. ``chunk_size`` (at most that many steps per chunk) only
    changes how the work is split -- about 2 * chunk_size + L / chunk_size Python-level steps
    instead of L -- not the result.
    """
    if chunk_size < 1:
        raise ValueError("selective_scan chunk_size must be >= 1, got {}".format(chunk_size))
    dtype_in = u.dtype
    u, delta = _discretisation_inputs(u, delta, delta_bias, delta_softplus)
    length = u.shape[2]
    # Equal chunks of at most chunk_size steps, padded by less than one step per chunk.
    chunks = -(-length // chunk_size)
    size = -(-length // chunks)
    # Padding steps with delta = 0 have decay 1 and input 0: they leave the state unchanged.
    pad = (0, chunks * size - length)

    def time_major(x):
        return F.pad(x.float(), pad).transpose(1, 2).contiguous()

    A = A.float().contiguous()
    y = _ChunkedSelectiveScan.apply(time_major(u), time_major(delta), A,
                                    time_major(B), time_major(C), size)
    y = y[:, :length].transpose(1, 2)
    return _skip_and_gate(y, u, D, z).to(dtype_in)


def _discretisation_inputs(u, delta, delta_bias, delta_softplus):
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta


def _skip_and_gate(y, u, D, z):
    if D is not None:
        y = y + u * D.float()[..., None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


class _ChunkedSelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t, h_{-1} = 0.

    Inputs are time-major, L a multiple of ``size``: u, delta [Bt, L, D]; A [D, N];
    B, C [Bt, L, N]; returns y [Bt, L, D].

    The sequence is cut into K = L / size chunks and scanned in three phases with about
    2 * size + K Python-level steps instead of L: (1) the state each chunk reaches from a zero
    start, all chunks at once; (2) a loop over chunks turns these into the true state entering
    every chunk, using each chunk's total decay exp(A * sum of its delta); (3) the recurrence
    inside all chunks at once from those states. Only products of decays (<= 1) and sums
    appear -- no division by a decay product, which underflows on long or fast-decaying
    sequences -- so this is as stable as the sequential loop.

    At BCSM's lengths (tens of steps) the cost is the number of small ops per step, so the
    forward forms all inputs at once in the states buffer and contracts the states with C in
    one product after the loop: one op per step. The backward, where passes over
    [Bt, L, D, N] tensors cost more, forms each step's terms on the [Bt, K, D, N] slice at
    hand; only the decays and the states are stored (both reused by it). The backward is
    hand-written: the adjoint g_t = dL/dh_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} is the
    same recurrence backwards in time, scanned the same way.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, size):
        decay = (delta[..., None] * A).exp_()
        # Every step's input delta_t u_t B_t, [Bt, L, D, N], in the buffer that becomes the
        # states: the recurrence below is then one in-place op per step.
        states = torch.mul((delta * u)[..., None], B[:, :, None, :])
        decay5, states5 = _chunked(decay, size), _chunked(states, size)

        def inputs(t, out=None):  # step t of every chunk, [Bt, K, D, N] (read before the loop)
            return states5[:, :, t]

        entering = _entering_states(inputs, decay5, _chunked(delta, size), A, reverse=False)
        for t in range(size):
            if t > 0:
                states5[:, :, t].addcmul_(decay5[:, :, t], states5[:, :, t - 1])
            elif entering is not None:
                states5[:, :, 0].addcmul_(decay5[:, :, 0], entering)
        y = _dot_state(states, C)
        ctx.save_for_backward(u, delta, A, B, C, decay, states)
        ctx.size = size
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        u, delta, A, B, C, decay, states = ctx.saved_tensors
        size = ctx.size
        grad_y = grad_y.contiguous()
        decay5, states5 = _chunked(decay, size), _chunked(states, size)
        delta4, grad_y4, B4, C4 = (_chunked(t, size) for t in (delta, grad_y, B, C))
        drive4 = _chunked(delta * u, size)

        def inputs(t, out=None):  # C_t dy_t at step t of every chunk, [Bt, K, D, N]
            return torch.mul(grad_y4[:, :, t, :, None], C4[:, :, t, None, :], out=out)

        entering = _entering_states(inputs, decay5, delta4, A, reverse=True)
        # Per step: g . B_t (gradient of the input term delta_t u_t B_t w.r.t. delta_t u_t),
        # g . (delta_t u_t) (w.r.t. B_t), and the gradient of the decay exponent delta_t A,
        # g * exp(delta_t A) * h_{t-1}, reduced over N (delta) and accumulated (A).
        g_dot_b, exponent_dot_a = torch.empty_like(u), torch.empty_like(u)
        grad_B = torch.empty_like(B)
        g_dot_b4, exponent_dot_a4, grad_B4 = (_chunked(t, size)
                                              for t in (g_dot_b, exponent_dot_a, grad_B))
        g = g_next = exponent = None
        exponent_delta = torch.zeros_like(states5[:, :, 0])
        for t in range(size - 1, -1, -1):
            g, g_next = inputs(t, out=g_next), g  # two alternating [Bt, K, D, N] buffers
            if t < size - 1:
                g.addcmul_(decay5[:, :, t + 1], g_next)
            elif entering is not None:
                g += entering
            g_dot_b4[:, :, t] = _dot_state(g, B4[:, :, t])
            grad_B4[:, :, t] = _dot_channels(g, drive4[:, :, t])
            exponent = torch.mul(g, decay5[:, :, t], out=exponent)
            if t > 0:
                exponent.mul_(states5[:, :, t - 1])
            else:  # h_{-1} of chunk k is the last state of chunk k - 1 (zero for k = 0)
                exponent[:, 1:].mul_(states5[:, :-1, -1])
                exponent[:, 0].zero_()
            exponent_delta.addcmul_(exponent, delta4[:, :, t, :, None])
            exponent_dot_a4[:, :, t] = exponent.mul_(A).sum(-1)
        grad_u = g_dot_b * delta
        grad_delta = g_dot_b * u + exponent_dot_a
        grad_A = (exponent_delta.sum(dim=(0, 1)) if A.dim() == 2
                  else exponent_delta.sum(dim=1, keepdim=True))
        grad_C = _dot_channels(states, grad_y)
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None


def _dot_state(h, v):
    """sum_n h[..., d, n] * v[..., n]: [..., D, N], [..., N] -> [..., D].

    As a batch of row vector @ (N x D) products, the orientation in which bmm is fastest.
    """
    return _bmm(v[..., None, :], h.transpose(-1, -2)).squeeze(-2)


def _dot_channels(h, w):
    """sum_d h[..., d, n] * w[..., d]: [..., D, N], [..., D] -> [..., N]."""
    return _bmm(w[..., None, :], h).squeeze(-2)


def _bmm(a, b):
    """Batched matmul over any number of leading dims (views where the strides allow)."""
    out = torch.bmm(a.flatten(0, -3), b.flatten(0, -3))
    return out.view(*a.shape[:-2], *out.shape[-2:])


def _chunked(x, size):
    """[Bt, L, ...] -> [Bt, L / size, size, ...] (a view)."""
    return x.view(x.shape[0], x.shape[1] // size, size, *x.shape[2:])


def _entering_states(inputs, decay, delta, A, reverse):
    """Phases (1) and (2) of ``_ChunkedSelectiveScan``: the state entering each chunk.

    ``inputs(t, out)`` gives the recurrence input at step t of every chunk [Bt, K, D, N];
    decay [Bt, K, size, D, N]; delta [Bt, K, size, D]. Forward in time the state entering
    chunk k is h at the end of chunk k - 1; in reverse it is g at the start of chunk k + 1
    times that step's decay. Returns [Bt, K, D, N], or None when there is a single chunk.
    """
    chunks, size = decay.shape[1], decay.shape[2]
    if chunks == 1:
        return None
    # (1) Only a running [Bt, K, D, N] state is kept, not the local scan of every step.
    order = range(size - 1, -1, -1) if reverse else range(size)
    local = step_input = None
    for t in order:
        step_input = inputs(t, out=step_input)
        if local is None:
            local = step_input.clone()
        else:
            local = torch.addcmul(step_input, decay[:, :, t + 1 if reverse else t], local,
                                  out=local)
    # (2)
    chunk_decay = torch.exp(delta.sum(2)[..., None] * A)
    entering = torch.zeros_like(local)
    if reverse:
        for k in range(chunks - 2, -1, -1):
            entering[:, k] = (decay[:, k + 1, 0] * local[:, k + 1]
                              + chunk_decay[:, k + 1] * entering[:, k + 1])
    else:
        for k in range(1, chunks):
            entering[:, k] = local[:, k - 1] + chunk_decay[:, k - 1] * entering[:, k - 1]
    return entering
