"""The CPU inference kernels (selm_d2/modeling/cpu_inference.py) against PyTorch's own ops."""
import pytest
import torch
from torch.nn import functional as F

from selm_d2.modeling import cpu_inference
from selm_d2.modeling.cpu_inference import Conv1x1, MaxPool2d, conv1x1, upsample_bilinear


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _forbid(monkeypatch, name):
    """Make ``F.<name>`` fail, to show that the inference path does not fall back to it."""
    def fail(*args, **kwargs):
        raise AssertionError("F.{} called on the CPU inference path".format(name))
    monkeypatch.setattr(cpu_inference.F, name, fail)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (2, 2, 0)])
def test_max_pool_equals_torch_at_inference_and_in_training(kernel, stride, padding):
    # The ResNet stem's and VGGish's pool: channels-last at inference must give torch's NCHW
    # result to the bit, ties included (ReLU zeros), and training must be torch's own.
    pool = MaxPool2d(kernel, stride, padding)
    reference = torch.nn.MaxPool2d(kernel, stride, padding)
    x = torch.relu(_randn(3, 8, 17, 12))
    with torch.inference_mode():
        out = pool(x)
        assert out.is_contiguous() and torch.equal(out, reference(x))
    leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(out.shape)
    pool(leaf).backward(grad)
    reference(ref_leaf).backward(grad)
    assert torch.equal(leaf.grad, ref_leaf.grad)


@pytest.mark.parametrize("bias,add", [(False, False), (True, False), (False, True), (True, True)])
def test_conv1x1_equals_conv2d(monkeypatch, bias, add):
    """At inference a batched product (no F.conv2d), equal up to rounding; with gradients
    exactly ``F.conv2d(x, w, b) + add``, gradients included. The weight is a column slice of a
    wider one, as in CLEVER's mix blocks."""
    x = _randn(3, 12, 5, 7)
    weight = _randn(8, 20, 1, 1, seed=1)[:, 4:16]
    b = _randn(8, seed=2) if bias else None
    extra = _randn(3, 8, 5, 7, seed=3) if add else None
    expected = F.conv2d(x, weight, b)
    if add:
        expected = extra + expected

    with monkeypatch.context() as patch, torch.inference_mode():
        _forbid(patch, "conv2d")
        got = conv1x1(x, weight, b, add=extra)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    leaf, ref_leaf = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    out = conv1x1(x, leaf, b, add=extra)
    ref = F.conv2d(x, ref_leaf, b)
    ref = ref if extra is None else extra + ref
    assert torch.equal(out, ref)
    grad = _randn(*ref.shape, seed=4)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(leaf.grad, ref_leaf.grad)


def test_conv1x1_keeps_the_convolution_for_much_wider_inputs(monkeypatch):
    """Where oneDNN's convolution is faster (C_in >= 2 C_out, e.g. R50's projections of 512 to
    2048 channels to 256), conv1x1 is F.conv2d itself, to the bit."""
    x, weight = _randn(2, 16, 3, 4), _randn(8, 16, 1, 1, seed=1)
    calls = []
    conv2d = F.conv2d
    monkeypatch.setattr(cpu_inference.F, "conv2d",
                        lambda *args: calls.append(1) or conv2d(*args))
    with torch.inference_mode():
        assert torch.equal(conv1x1(x, weight), conv2d(x, weight)) and calls == [1]


def test_conv1x1_module_is_a_conv2d():
    """Same parameters and state-dict keys as nn.Conv2d(kernel_size=1): checkpoints move both
    ways; same outputs."""
    conv = torch.nn.Conv2d(6, 4, kernel_size=1)
    ours = Conv1x1(6, 4)
    assert isinstance(ours, torch.nn.Conv2d) and ours.kernel_size == (1, 1)
    ours.load_state_dict(conv.state_dict())
    assert Conv1x1(6, 4, bias=False).state_dict().keys() == {"weight"}
    x = _randn(2, 6, 3, 3)
    assert torch.equal(ours(x), conv(x))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size_in,size_out", [((7, 7), (14, 14)), ((14, 14), (28, 28)),
                                              ((5, 7), (10, 13)), ((3, 4), (16, 9)),
                                              ((12, 10), (6, 5))])
def test_upsample_bilinear_equals_interpolate(monkeypatch, size_in, size_out):
    """At inference two products with the interpolation matrices (no F.interpolate on the
    input), equal up to rounding, for 2x and other factors, down-scaling too; with gradients
    exactly F.interpolate."""
    x = _randn(2, 6, *size_in)
    expected = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    cpu_inference._interpolation_matrix(size_in[0], size_out[0], x.dtype, x.device)
    cpu_inference._interpolation_matrix(size_in[1], size_out[1], x.dtype, x.device)
    with monkeypatch.context() as patch, torch.inference_mode():
        _forbid(patch, "interpolate")  # the matrices above are already made
        got = upsample_bilinear(x, size_out)
    assert got.is_contiguous() and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    leaf = x.clone().requires_grad_()
    out = upsample_bilinear(leaf, size_out)
    assert out.grad_fn is not None and torch.equal(out, expected)


def test_interpolation_matrices_are_plain_tensors():
    """Made inside inference_mode, the cached matrices must still serve a later no_grad call
    (an inference tensor could not be used there once saved for backward elsewhere)."""
    cpu_inference._interpolation_matrix.cache_clear()
    x = _randn(1, 2, 4, 4)
    with torch.inference_mode():
        upsample_bilinear(x, (8, 8))
    matrix = cpu_inference._interpolation_matrix(4, 8, x.dtype, x.device)
    assert not matrix.is_inference() and not matrix.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(upsample_bilinear(x, (8, 8)), F.interpolate(
            x, size=(8, 8), mode="bilinear", align_corners=False), rtol=1e-5, atol=1e-6)
