"""detectron2's ResNet, run stage by stage so that DAM can sit between its stages."""
import logging
import re


from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
)

from .staged import StagedBackbone
from .weights import load_checked_state_dict, read_weights_file
from ...utils import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["StagedResNet", "convert_resnet_names"]

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def convert_resnet_names(state_dict):
    """
    Rename a torchvision ResNet state dict (``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer2.0.downsample.0`` ...) to detectron2's names (``stem.conv1``,
    ``stem.conv1.norm``, ``res2.0.conv1``, ``res3.0.shortcut`` ...). detectron2 names pass
    through unchanged, so either layout can be given.
    """
    converted = {}
    for name, value in state_dict.items():
        new = re.sub(r"^conv1\.", "stem.conv1.", name)
        new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
        new = re.sub(r"^layer(\d)\.", lambda m: "res{}.".format(int(m.group(1)) + 1), new)
        new = new.replace(".downsample.0.", ".shortcut.")
        new = new.replace(".downsample.1.", ".shortcut.norm.")
        new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
        converted[new] = value
    return converted


@BACKBONE_REGISTRY.register()
class StagedResNet(StagedBackbone, ResNet):
    """
    detectron2's :class:`ResNet` with its stem and stages callable one at a time.

    Built from the standard ``MODEL.RESNETS`` keys like ``build_resnet_backbone``, but any
    ``STEM_OUT_CHANNELS``/``RES2_OUT_CHANNELS`` is allowed for R18/R34 too (narrow models
    for CPU runs: 16 -> res2..res5 of 16/32/64/128 channels).
    """

    @configurable
    def __init__(self, stem, stages, *, out_features, freeze_at=0):
        """
        Args:
            stem (nn.Module): a :class:`BasicStem` (stride 4).
            stages (list[list[CNNBlockBase]]): blocks of res2, res3, ...
            out_features (list[str]): the stages :meth:`forward` returns; stages after the
                last of them are not built.
            freeze_at (int): 1 freezes the stem, 2 the stem and res2, and so on.
        """
        super().__init__(stem, stages, out_features=out_features, freeze_at=freeze_at)

    @classmethod
    def from_config(cls, cfg, input_shape):
        r = cfg.MODEL.RESNETS
        norm = r.NORM
        if r.DEPTH not in _BLOCKS_PER_STAGE:
            raise ConfigError(
                "MODEL.RESNETS.DEPTH must be one of {}, got {}.".format(
                    sorted(_BLOCKS_PER_STAGE), r.DEPTH
                )
            )
        if norm == "GN" and (r.STEM_OUT_CHANNELS % 32 or r.RES2_OUT_CHANNELS % 32):
            raise ConfigError(
                "MODEL.RESNETS.NORM 'GN' uses 32 groups: MODEL.RESNETS.STEM_OUT_CHANNELS ({}) and "
                "RES2_OUT_CHANNELS ({}) must be multiples of 32; use 'BN' for narrower "
                "models.".format(r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS)
            )
        basic = r.DEPTH in (18, 34)
        if basic and (r.RES5_DILATION != 1 or r.NUM_GROUPS != 1 or any(r.DEFORM_ON_PER_STAGE)):
            raise ConfigError(
                "ResNet-{} (basic blocks) needs MODEL.RESNETS.RES5_DILATION=1, NUM_GROUPS=1 and "
                "DEFORM_ON_PER_STAGE all False.".format(r.DEPTH)
            )
        if r.RES5_DILATION not in (1, 2):
            raise ConfigError(
                "MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {}.".format(r.RES5_DILATION)
            )

        stem = BasicStem(
            in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=norm
        )
        in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
        bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
        stages = []
        for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[r.DEPTH]):
            dilation = r.RES5_DILATION if idx == 3 else 1
            first_stride = 1 if idx == 0 or dilation == 2 else 2
            kwargs = {
                "num_blocks": num_blocks,
                "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
                "in_channels": in_channels,
                "out_channels": out_channels,
                "norm": norm,
            }
            if basic:
                kwargs["block_class"] = BasicBlock
            else:
                kwargs.update(
                    bottleneck_channels=bottleneck_channels,
                    stride_in_1x1=r.STRIDE_IN_1X1,
                    dilation=dilation,
                    num_groups=r.NUM_GROUPS,
                )
                if r.DEFORM_ON_PER_STAGE[idx]:
                    kwargs.update(
                        block_class=DeformBottleneckBlock,
                        deform_modulated=r.DEFORM_MODULATED,
                        deform_num_groups=r.DEFORM_NUM_GROUPS,
                    )
                else:
                    kwargs["block_class"] = BottleneckBlock
            stages.append(ResNet.make_stage(**kwargs))
            in_channels = out_channels
            out_channels *= 2
            bottleneck_channels *= 2
        return {
            "stem": stem,
            "stages": stages,
            "out_features": list(r.OUT_FEATURES),
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        }

    def forward_stem(self, x):
        """[N, 3, H, W] image -> [N, STEM_OUT_CHANNELS, H/4, W/4], the input of res2."""
        return self.stem(x)

    def _run_stage(self, index, x):
        return self.stages[index](x)

    def load_pretrained(self, path):
        """
        Load ImageNet weights from ``path`` (``MODEL.SELM.VISUAL_WEIGHTS``): a torchvision
        state dict (e.g. ``resnet50-19c8e357.pth``) or a detectron2 ``.pkl`` (model-zoo
        format or Caffe2 MSRA names such as ``R-50.pkl``). Classifier weights are ignored.
        """
        raw = read_weights_file(path, "MODEL.SELM.VISUAL_WEIGHTS")
        stride_in_1x1 = any(
            isinstance(m, BottleneckBlock) and m.conv1.stride != (1, 1) for m in self.modules()
        )
        if "layer1.0.conv1.weight" in raw and stride_in_1x1:
            # torchvision bottlenecks stride in the 3x3 conv; weights trained that way
            # load fine but compute different features with the stride in the 1x1 conv.
            logger.warning(
                "{} is a torchvision ResNet, whose bottlenecks put the stride in the 3x3 conv: "
                "set MODEL.RESNETS.STRIDE_IN_1X1 False to use it as trained.".format(path)
            )
        load_checked_state_dict(
            self,
            convert_resnet_names(raw),
            path=path,
            config_key="MODEL.SELM.VISUAL_WEIGHTS",
            shape_hint="Check MODEL.RESNETS.DEPTH, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, "
            "NUM_GROUPS and WIDTH_PER_GROUP against the network the file was trained with.",
        )
