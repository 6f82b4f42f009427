"""VGGish: torchvggish state-dict layout, staged shapes, TF flattening order, weight files,
and freezing that keeps gradients flowing to inputs and intermediate features."""
import pytest
import torch
from detectron2.config import get_cfg

from selm_d2.config import add_selm_config
from selm_d2.modeling.audio import VGGish, load_vggish_weights

NARROW = dict(channels=(4, 8, 8, 16), fc_dims=(32, 32, 16))

# harritaylor/torchvggish vggish-10086976.pth: every tensor with its shape.
TORCHVGGISH_LAYOUT = {
    "features.0.weight": [64, 1, 3, 3],
    "features.0.bias": [64],
    "features.3.weight": [128, 64, 3, 3],
    "features.3.bias": [128],
    "features.6.weight": [256, 128, 3, 3],
    "features.6.bias": [256],
    "features.8.weight": [256, 256, 3, 3],
    "features.8.bias": [256],
    "features.11.weight": [512, 256, 3, 3],
    "features.11.bias": [512],
    "features.13.weight": [512, 512, 3, 3],
    "features.13.bias": [512],
    "embeddings.0.weight": [4096, 12288],
    "embeddings.0.bias": [4096],
    "embeddings.2.weight": [4096, 4096],
    "embeddings.2.bias": [4096],
    "embeddings.4.weight": [128, 4096],
    "embeddings.4.bias": [128],
}


def audio_cfg(freeze=True, channels=NARROW["channels"], fc_dims=NARROW["fc_dims"]):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.SELM.AUDIO.FREEZE = freeze
    cfg.MODEL.SELM.AUDIO.CHANNELS = list(channels)
    cfg.MODEL.SELM.AUDIO.FC_DIMS = list(fc_dims)
    return cfg


def test_default_vggish_layout_and_shapes():
    torch.manual_seed(0)
    model = VGGish().eval()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == TORCHVGGISH_LAYOUT
    assert model.stage_channels == {"conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512}

    x = torch.randn(2, 1, 96, 64)
    expected = {"conv1": (2, 64, 48, 32), "conv2": (2, 128, 24, 16), "conv3": (2, 256, 12, 8),
                "conv4": (2, 512, 6, 4)}
    with torch.no_grad():
        h = x
        for name in model.stage_names:
            h = model.forward_stage(name, h)
            assert tuple(h.shape) == expected[name]
        embedding = model.forward_embedding(h)
        assert embedding.shape == (2, 128)
        assert torch.equal(embedding, model(x))


def test_embedding_flattens_channels_last_like_tensorflow():
    model = VGGish(**NARROW)
    conv4 = torch.zeros(1, 16, 6, 4)
    conv4[0, 5, 2, 3] = 1.0  # channel 5, row 2, column 3
    seen = []
    model.embeddings[0].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    model.forward_embedding(conv4)
    # TF's NHWC flattening puts (h, w, c) at (h * 4 + w) * C + c.
    assert seen[0].shape == (1, 16 * 24)
    assert seen[0][0].nonzero().flatten().tolist() == [(2 * 4 + 3) * 16 + 5]


def test_torchvggish_file_roundtrip(tmp_path):
    torch.manual_seed(0)
    source = VGGish(**NARROW)
    path = str(tmp_path / "vggish-10086976.pth")
    torch.save(source.state_dict(), path)  # torchvggish ships a bare state dict

    torch.manual_seed(1)
    model = VGGish(audio_cfg())
    load_vggish_weights(model, path)
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = torch.randn(3, 1, 96, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source.eval()(x))


def test_weight_file_errors(tmp_path):
    model = VGGish(**NARROW)
    missing = str(tmp_path / "vggish-missing.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.SELM.AUDIO.WEIGHTS") as e:
        load_vggish_weights(model, missing)
    assert missing in str(e.value)

    other_widths = str(tmp_path / "other.pth")
    torch.save(VGGish(channels=(8, 8, 8, 16), fc_dims=(32, 32, 16)).state_dict(), other_widths)
    with pytest.raises(ValueError, match="features.0.weight.*default widths"):
        load_vggish_weights(model, other_widths)

    partial = str(tmp_path / "partial.pth")
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, partial)
    with pytest.raises(ValueError, match="lack 6 .*embeddings.0.weight"):
        load_vggish_weights(model, partial)

    resnet = str(tmp_path / "resnet.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet)
    with pytest.raises(ValueError, match="No tensor in .*resnet.pth"):
        load_vggish_weights(model, resnet)


def test_frozen_vggish_passes_gradients_but_trains_nothing():
    torch.manual_seed(0)
    model = VGGish(audio_cfg(freeze=True))
    assert not any(p.requires_grad for p in model.parameters())
    parent = torch.nn.ModuleDict({"audio": model}).train()
    assert parent.training and not model.training

    # A trainable scale between conv1 and conv2 stands in for DAM.
    dam_scale = torch.nn.Parameter(torch.tensor(1.5))
    x = torch.randn(2, 1, 96, 64, requires_grad=True)
    h = model.forward_stage("conv1", x) * dam_scale
    for name in model.stage_names[1:]:
        h = model.forward_stage(name, h)
    model.forward_embedding(h).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert dam_scale.grad is not None and dam_scale.grad != 0
    assert all(p.grad is None for p in model.parameters())


def test_unfrozen_vggish_trains():
    model = VGGish(audio_cfg(freeze=False)).train()
    assert model.training and all(p.requires_grad for p in model.parameters())
    model(torch.randn(2, 1, 96, 64)).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_stage_and_input_size():
    model = VGGish(**NARROW)
    with pytest.raises(KeyError, match="conv5"):
        model.forward_stage("conv5", torch.zeros(1, 1, 96, 64))
    with pytest.raises(ValueError, match=r"\(6, 4\)"):
        model.forward_embedding(torch.zeros(1, 16, 5, 4))
    with pytest.raises(ValueError, match="MODEL.SELM.AUDIO.CHANNELS"):
        VGGish(channels=(4, 8, 16))
