"""VGGish: torchvggish state-dict layout, the authors' torchvggish, TF flattening order,
weight files, and freezing."""
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
    model = VGGish().eval()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == TORCHVGGISH_LAYOUT
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 64)).shape == (2, 128)
    # The whole network is the only entry point (DAM does not enter VGGish any more).
    for gone in ("forward_stage", "stage_names", "stage_channels", "forward_embedding"):
        assert not hasattr(model, gone), gone


def test_matches_the_authors_torchvggish():
    """The authors' torchvggish ``VGG(make_layers())`` with the same weights: same embeddings
    (their forward transposes to channels-last before flattening, as TensorFlow did)."""
    import official

    official.require_official()
    theirs = official.build_official_vggish("avs_ms3", seed=3)
    ours = VGGish().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_embedding_flattens_channels_last_like_tensorflow():
    """One non-zero conv4 activation reaches the first fc layer at TF's NHWC position."""
    model = VGGish(**NARROW).eval()
    seen = []
    model.embeddings[0].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    # Make conv4's output one-hot: the last conv outputs only its bias, then ReLU and max-pool.
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
                module.bias.zero_()
        model.features[-3].bias[5] = 1.0  # channel 5 of conv4's second conv, everywhere
        model(torch.zeros(1, 1, 96, 64))
    assert seen[0].shape == (1, 16 * 24)
    # Channel 5 at every (h, w) of the 6 x 4 grid: (h * 4 + w) * 16 + 5 in NHWC order.
    assert seen[0][0].nonzero().flatten().tolist() == [i * 16 + 5 for i in range(24)]


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
    assert model.frozen and not any(p.requires_grad for p in model.parameters())
    parent = torch.nn.ModuleDict({"audio": model}).train()
    assert parent.training and not model.training
    x = torch.randn(2, 1, 96, 64, requires_grad=True)
    model(x).square().sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is not None


def test_unfrozen_vggish_trains():
    model = VGGish(audio_cfg(freeze=False)).train()
    assert model.training and all(p.requires_grad for p in model.parameters())
    model(torch.randn(2, 1, 96, 64)).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_input_size_and_widths():
    model = VGGish(**NARROW)
    with pytest.raises(ValueError, match=r"\(96, 64\)"):
        model(torch.zeros(1, 1, 96, 60))
    with pytest.raises(ValueError, match="MODEL.SELM.AUDIO.CHANNELS"):
        VGGish(channels=(4, 8, 16))
