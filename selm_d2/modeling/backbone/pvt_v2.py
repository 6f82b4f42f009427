"""timm's PVT-v2 (Pyramid Vision Transformer v2), run stage by stage so that DAM can sit
between its stages."""
import re

import timm
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY

from .staged import StagedBackbone
from .weights import load_checked_state_dict, read_weights_file
from ...utils import ConfigError

__all__ = ["StagedPVTv2", "convert_pvt_v2_names"]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _stage_prefix(match, part):
    # Original names count stages from 1, timm's from 0.
    return "stages.{}.{}.".format(int(match.group(1)) - 1, part)


def convert_pvt_v2_names(state_dict):
    """
    Rename a state dict of the original PVT-v2 code (github.com/whai362/PVT:
    ``patch_embed1..4``, ``block1..4.<j>``, ``norm1..4``, ``mlp.dwconv.dwconv``) to timm's
    names (``patch_embed``, ``stages.<i>.downsample``, ``stages.<i>.blocks.<j>``,
    ``stages.<i>.norm``, ``mlp.dwconv``). timm names pass through unchanged.
    """
    converted = {}
    for name, value in state_dict.items():
        new = re.sub(r"^patch_embed1\.", "patch_embed.", name)
        # Patch embeddings 2-4 downsample at the start of timm's stages 1-3.
        new = re.sub(r"^patch_embed([2-4])\.", lambda m: _stage_prefix(m, "downsample"), new)
        new = re.sub(r"^block(\d)\.", lambda m: _stage_prefix(m, "blocks"), new)
        new = re.sub(r"^norm(\d)\.", lambda m: _stage_prefix(m, "norm"), new)
        new = new.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        converted[new] = value
    return converted


@BACKBONE_REGISTRY.register()
class StagedPVTv2(StagedBackbone):
    """
    timm's PVT-v2 (``pvt_v2_b0`` .. ``pvt_v2_b5``) as a detectron2 backbone with stages
    res2..res5 (strides 4, 8, 16, 32; b1-b5: 64/128/320/512 channels, b0: 32/64/160/256).

    As in the original PVT-v2, each stage starts with its own overlapping patch
    embedding, so the stem is the identity and res2 embeds the image. Parameter names are
    timm's (``patch_embed.*``, ``stages.<i>.*``).
    """

    @configurable
    def __init__(
        self, *, variant, in_chans=3, drop_path_rate=0.0, out_features=_STAGE_NAMES, freeze_at=0
    ):
        """
        Args:
            variant (str): timm model name, ``pvt_v2_b0`` .. ``pvt_v2_b5``.
            in_chans (int): input image channels.
            drop_path_rate (float): timm's stochastic depth rate (``MODEL.PVT.DROP_PATH_RATE``).
            out_features (list[str]): the stages :meth:`forward` returns; stages after the
                last of them are not built.
            freeze_at (int): 1 freezes the first patch embedding, 2 also res2, and so on
                (``MODEL.BACKBONE.FREEZE_AT`` semantics).
        """
        super().__init__()
        unknown = [f for f in out_features if f not in _STAGE_NAMES]
        if unknown or not out_features:
            raise ConfigError(
                "MODEL.PVT.OUT_FEATURES must be a non-empty subset of {}, got {}.".format(
                    list(_STAGE_NAMES), list(out_features)
                )
            )
        available = timm.list_models("pvt_v2_*")
        if variant not in available:
            raise ConfigError(
                "MODEL.PVT.VARIANT must be one of {}, got {!r}.".format(available, variant)
            )
        net = timm.create_model(
            variant,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
        )
        num_stages = 1 + max(_STAGE_NAMES.index(f) for f in out_features)
        self.patch_embed = net.patch_embed
        self.stages = net.stages[:num_stages]
        self.stage_names = _STAGE_NAMES[:num_stages]
        self._out_features = list(out_features)
        self._out_feature_channels = {
            name: info["num_chs"] for name, info in zip(self.stage_names, net.feature_info)
        }
        self._out_feature_strides = {
            name: info["reduction"] for name, info in zip(self.stage_names, net.feature_info)
        }
        frozen = [self.patch_embed] if freeze_at >= 1 else []
        frozen += list(self.stages[: max(freeze_at - 1, 0)])
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "variant": cfg.MODEL.PVT.VARIANT,
            "in_chans": input_shape.channels,
            "drop_path_rate": cfg.MODEL.PVT.DROP_PATH_RATE,
            "out_features": list(cfg.MODEL.PVT.OUT_FEATURES),
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        }

    def forward_stem(self, x):
        """Identity: the first patch embedding belongs to res2 (as in the original PVT-v2)."""
        return x

    def _run_stage(self, index, x):
        if index == 0:
            x = self.patch_embed(x)
        return self.stages[index](x)

    def load_pretrained(self, path):
        """
        Load ImageNet weights from ``path`` (``MODEL.SELM.VISUAL_WEIGHTS``) in the original
        PVT-v2 layout (e.g. ``pvt_v2_b5.pth`` of whai362/PVT or AVSBench) or timm's layout.
        The classifier head is ignored.
        """
        load_checked_state_dict(
            self,
            convert_pvt_v2_names(read_weights_file(path, "MODEL.SELM.VISUAL_WEIGHTS")),
            path=path,
            config_key="MODEL.SELM.VISUAL_WEIGHTS",
            shape_hint="Set MODEL.PVT.VARIANT to the variant the file was trained as.",
        )
