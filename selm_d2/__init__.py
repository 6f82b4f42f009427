"""SelM-D2: SelM audio-visual segmentation as a detectron2 project.

Importing the package registers its meta-architecture, backbones and datasets.
"""
from .config import add_selm_config
