"""Staged visual encoders; importing this package registers them in BACKBONE_REGISTRY."""
from .pvt_v2 import StagedPVTv2, convert_pvt_v2_names
from .staged import StagedBackbone
from .resnet import StagedResNet, convert_resnet_names
from .weights import load_visual_weights, read_weights_file
