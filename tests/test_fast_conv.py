"""CPU-inference convolutions through NNPACK (selm_d2/modeling/fast_conv.py): the same function
as nn.Conv2d, used by CLEVER where it applies and nowhere else."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from selm_d2.modeling import fast_conv
from selm_d2.modeling.clever import DynamicProjector, Fusion
from selm_d2.modeling.fast_conv import conv_inference, nnpack_applies


@pytest.fixture
def nnpack_calls(monkeypatch):
    """Counts the calls of PyTorch's NNPACK convolution (and passes them on)."""
    calls = []
    real = torch._nnpack_spatial_convolution

    def counted(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counted)
    return calls


def test_this_torch_has_nnpack():
    # The pinned CPU wheels are built with it; without it the projector would silently run
    # oneDNN's direct convolution and this suite would test only that.
    assert torch.backends.nnpack.is_available()


@pytest.mark.parametrize("bias,padding,band_pixels,bands", [
    (True, 1, fast_conv.BAND_PIXELS, 1),  # 21 x 26 outputs: one band per frame
    (False, 1, 6 * 26, 4),  # bands of 6 rows: 4 per frame, the last one 3 rows
    (True, 0, 6 * 24, 4),  # unpadded (19 x 24 outputs): no zero rows at the edges either
])
def test_equals_the_convolution_in_float64(bias, padding, band_pixels, bands, nnpack_calls,
                                           monkeypatch):
    monkeypatch.setattr(fast_conv, "BAND_PIXELS", band_pixels)
    monkeypatch.setattr(fast_conv, "MIN_PIXELS", 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 40, 3, padding=padding, bias=bias).eval()
    x = torch.randn(3, 48, 21, 26)
    with torch.no_grad():
        out = conv_inference(conv, x)
        expected = F.conv2d(x.double(), conv.weight.double(),
                            None if conv.bias is None else conv.bias.double(), padding=padding)
    assert len(nnpack_calls) == 3 * bands
    assert out.shape == expected.shape and out.dtype == torch.float32
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert 0 < error <= 5e-5  # rounding of a fast algorithm


@pytest.mark.parametrize("case", ["autograd", "stride", "kernel", "groups", "float64",
                                  "switched_off", "small"])
def test_falls_back_to_the_module_elsewhere(case, nnpack_calls, monkeypatch):
    if case != "small":
        monkeypatch.setattr(fast_conv, "MIN_PIXELS", 0)
    torch.manual_seed(0)
    kwargs = {"stride": 2 if case == "stride" else 1, "groups": 2 if case == "groups" else 1}
    conv = nn.Conv2d(8, 8, 1 if case == "kernel" else 3, padding=1, **kwargs)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64 if case == "float64" else torch.float32)
    conv = conv.to(x.dtype)
    switch = torch.backends.nnpack.flags(enabled=case != "switched_off")
    with torch.set_grad_enabled(case == "autograd"), switch:
        assert not nnpack_applies(conv, x)
        out = conv_inference(conv, x)
        assert torch.equal(out, conv(x))
    assert out.requires_grad == (case == "autograd")
    assert nnpack_calls == []


def test_clever_convolves_through_nnpack_at_inference_only(nnpack_calls, monkeypatch):
    """The projector's 3x3 convs (one per upsampling) and the Fusion's two, per frame."""
    monkeypatch.setattr(fast_conv, "MIN_PIXELS", 0)
    projector = DynamicProjector(32, 1, upsamples=2, bias=True).eval()
    fusion = Fusion(32).eval()
    features, token = torch.randn(5, 32, 4, 4), torch.randn(5, 32)
    with torch.inference_mode():
        projector(features, token)
        fusion(features[:, :, :2, :2], features)
    assert len(nnpack_calls) == 5 * 2 + 5 * 2
    nnpack_calls.clear()
    projector.train()
    projector(features, token).sum().backward()
    assert nnpack_calls == []
