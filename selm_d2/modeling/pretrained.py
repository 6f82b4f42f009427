"""Initialising SelM's encoders from the ImageNet / AudioSet releases.

Two routes lead to the same initial weights (SelM builds no weight file into the model):

- ``MODEL.SELM.VISUAL_WEIGHTS`` and ``MODEL.SELM.AUDIO.WEIGHTS`` name the original files
  (torchvision ResNet, original or timm PVT-v2, the torchvggish port); the trainer loads them
  when training starts from scratch (no ``MODEL.WEIGHTS``, nothing to resume).
- ``tools/convert_pretrained.py`` turns the same files into one checkpoint with SelM's
  parameter names, which ``MODEL.WEIGHTS`` loads like any detectron2 initial weights.

Evaluation and the demo read neither: a trained checkpoint holds every parameter.
"""
import logging

from .audio import load_vggish_weights
from .backbone import load_visual_weights

__all__ = ["load_pretrained_encoders", "encoder_state_dict", "ENCODER_PREFIXES"]

logger = logging.getLogger(__name__)

# The SelM submodules that the pretrained files initialise.
ENCODER_PREFIXES = ("backbone.", "audio_encoder.")


def load_pretrained_encoders(model, cfg):
    """Load ``MODEL.SELM.VISUAL_WEIGHTS`` into ``model.backbone`` and ``MODEL.SELM.AUDIO.WEIGHTS``
    into ``model.audio_encoder``; an empty key leaves that encoder as initialised."""
    selm = cfg.MODEL.SELM
    scratch = [key for key, path in (("MODEL.SELM.VISUAL_WEIGHTS", selm.VISUAL_WEIGHTS),
                                     ("MODEL.SELM.AUDIO.WEIGHTS", selm.AUDIO.WEIGHTS)) if not path]
    if scratch:
        logger.info("Encoders from scratch (empty %s)", ", ".join(scratch))
    if selm.VISUAL_WEIGHTS:
        load_visual_weights(model.backbone, selm.VISUAL_WEIGHTS)
    if selm.AUDIO.WEIGHTS:
        load_vggish_weights(model.audio_encoder, selm.AUDIO.WEIGHTS)


def encoder_state_dict(model):
    """The encoder tensors of a SelM ``model`` under their SelM names: {name: tensor}."""
    return {name: value for name, value in model.state_dict().items()
            if name.startswith(ENCODER_PREFIXES)}
