"""Staged visual encoders: building from configs, staged == whole forward, shapes, gradients,
freezing, and loading ImageNet weights from files written in each official layout."""
import logging
import math
import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from selm_d2.config import add_selm_config
from selm_d2.modeling.backbone import StagedPVTv2, StagedResNet, load_visual_weights
from selm_d2.utils import ConfigError

STAGES = ["res2", "res3", "res4", "res5"]


def resnet_cfg(depth=18, stem=16, res2=16, norm="BN", stride_in_1x1=True, freeze_at=0, out=STAGES):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "StagedResNet"
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = stem
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out)
    return cfg


def pvt_cfg(variant="pvt_v2_b0", freeze_at=0, out=STAGES):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "StagedPVTv2"
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.PVT.VARIANT = variant
    cfg.MODEL.PVT.OUT_FEATURES = list(out)
    return cfg


def run_staged(backbone, x):
    feats = {}
    x = backbone.forward_stem(x)
    for name in backbone.stage_names:
        x = backbone.forward_stage(name, x)
        feats[name] = x
    return feats


def stage_module(backbone, name):
    if isinstance(backbone, StagedResNet):
        return getattr(backbone, name)
    return backbone.stages[backbone.stage_names.index(name)]


def test_backbones_are_registered():
    assert BACKBONE_REGISTRY.get("StagedResNet") is StagedResNet
    assert BACKBONE_REGISTRY.get("StagedPVTv2") is StagedPVTv2


def test_forward_stem_returns_the_input_of_res2():
    """ResNet: conv1 (+ norm) -> ReLU -> 3x3/2 max-pool, written out with torch ops; PVT-v2:
    the identity (its first patch embedding belongs to res2). A tensor, not a tuple."""
    torch.manual_seed(0)
    resnet = build_backbone(resnet_cfg(18, 16, 16)).eval()
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        stem = resnet.forward_stem(x)
        conv = resnet.stem.conv1
        bn = conv.norm
        y = torch.nn.functional.conv2d(x, conv.weight, None, stride=2, padding=3)
        y = torch.nn.functional.batch_norm(y, bn.running_mean, bn.running_var, bn.weight,
                                           bn.bias, training=False, eps=bn.eps)
        expected = torch.nn.functional.max_pool2d(torch.relu(y), 3, stride=2, padding=1)
    assert isinstance(stem, torch.Tensor) and stem.shape == (2, 16, 17, 25)
    torch.testing.assert_close(stem, expected)

    pvt = build_backbone(pvt_cfg("pvt_v2_b0")).eval()
    assert pvt.forward_stem(x) is x


@pytest.mark.parametrize(
    "cfg_fn, channels",
    [
        (lambda: resnet_cfg(18, 16, 16), [16, 32, 64, 128]),
        (lambda: resnet_cfg(50, 64, 256), [256, 512, 1024, 2048]),
        (lambda: pvt_cfg("pvt_v2_b0"), [32, 64, 160, 256]),
    ],
    ids=["R18-narrow", "R50", "pvt_v2_b0"],
)
def test_staged_forward_equals_forward_with_odd_sizes(cfg_fn, channels):
    torch.manual_seed(0)
    backbone = build_backbone(cfg_fn()).eval()
    assert list(backbone.stage_names) == STAGES
    shapes = backbone.output_shape()
    assert [shapes[n].channels for n in STAGES] == channels
    assert [shapes[n].stride for n in STAGES] == [4, 8, 16, 32]
    assert backbone.stage_channels == dict(zip(STAGES, channels))

    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        whole = backbone(x)
        staged = run_staged(backbone, x)
    assert sorted(whole) == STAGES
    for name in STAGES:
        stride = shapes[name].stride
        expected = (1, shapes[name].channels, math.ceil(65 / stride), math.ceil(97 / stride))
        assert whole[name].shape == expected
        assert torch.equal(whole[name], staged[name])


@pytest.mark.parametrize("cfg_fn", [lambda: resnet_cfg(18, 16, 16), lambda: pvt_cfg("pvt_v2_b0")],
                         ids=["R18-narrow", "pvt_v2_b0"])
def test_gradients_reach_every_stage_and_the_input(cfg_fn):
    torch.manual_seed(0)
    backbone = build_backbone(cfg_fn()).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    feats = run_staged(backbone, x)
    sum(f.square().mean() for f in feats.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name in STAGES:
        grads = [p.grad for p in stage_module(backbone, name).parameters()]
        assert grads and all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_resnet_norms_out_features_and_freezing():
    # detectron2's defaults: FrozenBN, stem + res2 frozen.
    frozen = build_backbone(resnet_cfg(18, 16, 16, norm="FrozenBN", freeze_at=2))
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not any(p.requires_grad for p in frozen.res2.parameters())
    assert all(p.requires_grad for p in frozen.res3.parameters())
    assert frozen(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 128, 2, 2)

    gn = build_backbone(resnet_cfg(18, 32, 32, norm="GN")).train()
    assert gn(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 256, 2, 2)
    with pytest.raises(ValueError, match="MODEL.RESNETS.STEM_OUT_CHANNELS"):
        build_backbone(resnet_cfg(18, 16, 16, norm="GN"))

    # As in detectron2, stages after the last output are not built.
    short = build_backbone(resnet_cfg(18, 16, 16, out=["res2", "res4"]))
    assert list(short.stage_names) == ["res2", "res3", "res4"] and not hasattr(short, "res5")
    assert sorted(short(torch.randn(1, 3, 64, 64))) == ["res2", "res4"]
    assert sorted(short.output_shape()) == ["res2", "res4"]
    with pytest.raises(KeyError, match="res5"):
        short.forward_stage("res5", torch.zeros(1, 64, 4, 4))


def test_pvt_freezing_out_features_and_bad_variant():
    frozen = build_backbone(pvt_cfg("pvt_v2_b0", freeze_at=2, out=["res2", "res3"]))
    assert list(frozen.stage_names) == ["res2", "res3"]
    assert not any(p.requires_grad for p in frozen.patch_embed.parameters())
    assert not any(p.requires_grad for p in frozen.stages[0].parameters())
    assert all(p.requires_grad for p in frozen.stages[1].parameters())
    assert sorted(frozen(torch.randn(1, 3, 64, 64))) == ["res2", "res3"]
    with pytest.raises(ValueError, match="MODEL.PVT.VARIANT"):
        build_backbone(pvt_cfg("pvt_v2_b9"))
    with pytest.raises(ValueError, match="MODEL.PVT.OUT_FEATURES"):
        build_backbone(pvt_cfg(out=["res6"]))


def test_full_size_channels_and_parameter_counts():
    r50 = build_backbone(resnet_cfg(50, 64, 256))
    tv50 = torchvision.models.resnet50(weights=None)
    no_fc = sum(p.numel() for n, p in tv50.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in r50.parameters()) == no_fc

    b5 = build_backbone(pvt_cfg("pvt_v2_b5"))
    shapes = b5.output_shape()
    assert [shapes[n].channels for n in STAGES] == [64, 128, 320, 512]
    assert [shapes[n].stride for n in STAGES] == [4, 8, 16, 32]
    # PVT-v2-b5 has 82.0M parameters with its 1000-class head (512*1000 + 1000).
    assert sum(p.numel() for p in b5.parameters()) == 81_443_008


# ----------------------------------------------------------------------------- weights


def _randomize_batchnorm(model):
    # Default BN tensors (1, 0, 0, 1) would hide names mapped to the wrong norm layer.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)


# torchvision name -> detectron2 name, written out for a few tensors of each kind.
_TORCHVISION_PAIRS = [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.weight", "stem.conv1.norm.weight"),
    ("bn1.running_var", "stem.conv1.norm.running_var"),
    ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
    ("layer1.0.bn1.bias", "res2.0.conv1.norm.bias"),
    ("layer1.1.conv2.weight", "res2.1.conv2.weight"),
    ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
    ("layer2.0.downsample.1.running_mean", "res3.0.shortcut.norm.running_mean"),
    ("layer3.1.bn2.weight", "res4.1.conv2.norm.weight"),
    ("layer4.1.conv2.weight", "res5.1.conv2.weight"),
]


# FrozenBN: SelM-plus configs; BN: the paper configs (AVSBench trains ResNet's BatchNorm).
@pytest.mark.parametrize("depth, res2, norm", [(18, 64, "FrozenBN"), (50, 256, "FrozenBN"),
                                               (50, 256, "BN")])
def test_torchvision_resnet_file_loads(tmp_path, depth, res2, norm):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, "resnet{}".format(depth))(weights=None)
    _randomize_batchnorm(tv)
    path = str(tmp_path / "resnet{}-torchvision.pth".format(depth))
    torch.save(tv.state_dict(), path)

    # torchvision bottlenecks stride in the 3x3 conv: STRIDE_IN_1X1 False reproduces them.
    backbone = build_backbone(resnet_cfg(depth, 64, res2, norm=norm, stride_in_1x1=False))
    load_visual_weights(backbone, path)
    ours, theirs = backbone.state_dict(), tv.state_dict()
    for tv_name, d2_name in _TORCHVISION_PAIRS:
        assert torch.equal(ours[d2_name], theirs[tv_name]), (tv_name, d2_name)

    tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(ref))))
        out = backbone.eval()(x)["res5"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_torchvision_file_warns_about_stride_in_1x1(tmp_path, caplog):
    path = str(tmp_path / "resnet50-19c8e357.pth")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    backbone = build_backbone(resnet_cfg(50, 64, 256, stride_in_1x1=True))
    with caplog.at_level(logging.WARNING, logger="selm_d2"):
        load_visual_weights(backbone, path)
    assert "STRIDE_IN_1X1" in caplog.text


def test_detectron2_pkl_loads(tmp_path):
    torch.manual_seed(0)
    source = build_backbone(resnet_cfg(18, 16, 16))
    _randomize_batchnorm(source)
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    path = str(tmp_path / "R-18-narrow.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": True}, f)

    torch.manual_seed(1)
    target = build_backbone(resnet_cfg(18, 16, 16))
    load_visual_weights(target, path)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_caffe2_pkl_loads(tmp_path):
    torch.manual_seed(0)
    source = build_backbone(resnet_cfg(18, 16, 16, norm="FrozenBN")).state_dict()
    # Caffe2 (MSRA R-50.pkl style) blob name -> detectron2 name.
    c2_pairs = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res_conv1_bn_b": "stem.conv1.norm.bias",
        "res2_0_branch2a_w": "res2.0.conv1.weight",
        "res2_1_branch2b_w": "res2.1.conv2.weight",
        "res3_0_branch1_w": "res3.0.shortcut.weight",
        "res3_0_branch1_bn_s": "res3.0.shortcut.norm.weight",
        "res5_1_branch2a_bn_b": "res5.1.conv1.norm.bias",
    }
    blobs = {c2: source[d2].numpy() + 1.0 for c2, d2 in c2_pairs.items()}
    blobs["fc1000_w"] = np.zeros((1000, 128), dtype=np.float32)
    blobs["conv1_w_momentum"] = np.zeros((16, 3, 7, 7), dtype=np.float32)
    path = str(tmp_path / "R-18-c2.pkl")
    with open(path, "wb") as f:
        pickle.dump(blobs, f)

    target = build_backbone(resnet_cfg(18, 16, 16, norm="FrozenBN"))
    load_visual_weights(target, path)
    loaded = target.state_dict()
    for c2, d2 in c2_pairs.items():
        assert torch.equal(loaded[d2], torch.as_tensor(blobs[c2])), (c2, d2)


def _timm_to_original_pvt(state_dict):
    """timm names -> whai362/PVT classification/pvt_v2.py names, from a literal table."""
    table = [
        ("patch_embed.", "patch_embed1."),
        ("stages.1.downsample.", "patch_embed2."),
        ("stages.2.downsample.", "patch_embed3."),
        ("stages.3.downsample.", "patch_embed4."),
        ("stages.0.blocks.", "block1."),
        ("stages.1.blocks.", "block2."),
        ("stages.2.blocks.", "block3."),
        ("stages.3.blocks.", "block4."),
        ("stages.0.norm.", "norm1."),
        ("stages.1.norm.", "norm2."),
        ("stages.2.norm.", "norm3."),
        ("stages.3.norm.", "norm4."),
    ]
    out = {}
    for name, value in state_dict.items():
        for timm_prefix, original_prefix in table:
            if name.startswith(timm_prefix):
                name = original_prefix + name[len(timm_prefix):]
                break
        out[name.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")] = value
    return out


@pytest.mark.parametrize("layout", ["timm", "original"])
def test_pvt_v2_files_load(tmp_path, layout):
    torch.manual_seed(0)
    net = timm.create_model("pvt_v2_b0", pretrained=False).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    weights = net.state_dict()
    if layout == "original":
        weights = _timm_to_original_pvt(weights)
        for key in ["patch_embed1.proj.weight", "patch_embed2.norm.bias", "block1.0.attn.q.weight",
                    "block1.0.attn.sr.weight", "block2.1.mlp.dwconv.dwconv.weight", "norm4.weight",
                    "head.weight"]:
            assert key in weights, key
    path = str(tmp_path / "pvt_v2_b0.pth")
    torch.save(weights, path)

    backbone = build_backbone(pvt_cfg("pvt_v2_b0"))
    load_visual_weights(backbone, path)
    reference = net.state_dict()
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, reference[name]), name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x)["res5"], net.forward_features(x))


def test_weight_file_errors(tmp_path):
    backbone = build_backbone(resnet_cfg(18, 16, 16))
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.SELM.VISUAL_WEIGHTS") as e:
        load_visual_weights(backbone, missing)
    assert missing in str(e.value)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_visual_weights(backbone, str(corrupt))

    other_net = str(tmp_path / "vggish.pth")
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, other_net)
    with pytest.raises(ValueError, match="No tensor in .*vggish.pth"):
        load_visual_weights(backbone, other_net)

    wide = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wide)
    with pytest.raises(ValueError, match="stem.conv1.weight.*RES2_OUT_CHANNELS"):
        load_visual_weights(backbone, wide)

    pvt = build_backbone(pvt_cfg("pvt_v2_b0"))
    b1 = str(tmp_path / "pvt_v2_b1.pth")
    torch.save(timm.create_model("pvt_v2_b1").state_dict(), b1)
    with pytest.raises(ValueError, match="MODEL.PVT.VARIANT"):
        load_visual_weights(pvt, b1)

    load_visual_weights(backbone, "")  # "" = from scratch: nothing to load
    with pytest.raises(ConfigError, match="MODEL.SELM.VISUAL_WEIGHTS"):
        load_visual_weights(torch.nn.Linear(2, 2), wide)


@pytest.mark.parametrize("build", [lambda: resnet_cfg(18, 16, 16), lambda: pvt_cfg("pvt_v2_b0")])
def test_staged_encoders_share_the_staged_interface(build):
    from selm_d2.modeling.backbone import StagedBackbone

    backbone = build_backbone(build())
    assert isinstance(backbone, StagedBackbone)
    with pytest.raises(TypeError, match="abstract"):  # the base alone runs no stage
        StagedBackbone()
    with pytest.raises(KeyError, match="{} has stages".format(type(backbone).__name__)):
        backbone.forward_stage("res9", torch.zeros(1, 3, 32, 32))


def test_staged_resnet_forward_is_detectron2s():
    """The staged forward of StagedResNet equals detectron2's own ResNet.forward."""
    from detectron2.modeling.backbone.resnet import ResNet

    backbone = build_backbone(resnet_cfg(18, 16, 16)).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        ours, theirs = backbone(x), ResNet.forward(backbone, x)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name])
