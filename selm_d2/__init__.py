"""SelM-D2: SelM audio-visual segmentation as a detectron2 project.

Importing the package registers its meta-architecture, backbones and datasets.
"""
from . import data  # noqa: F401  (dataset registration)
from . import modeling  # noqa: F401  (backbone, head and decoder registration)
from . import selm_model  # noqa: F401  (META_ARCH_REGISTRY "SelM")
from .config import add_selm_config, load_config

__all__ = ["add_selm_config", "load_config"]
