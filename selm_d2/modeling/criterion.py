"""SelM training losses, as the authors' ``loss.py`` computes them.

Binary tasks (S4, MS3; one foreground logit per frame):
    L = DICE(p) + BCE(p) + sum_i a_i * DICE(sigmoid(hit map_i))
AVSS (K+1 class logits):
    L = CE(p) + sum_i a_i * DICE(sigmoid(hit map_i), foreground)
where DICE = 1 - 2 sum(p g) / (sum(p^2) + 0.001 + sum(g^2) + 0.001) per frame, p = sigmoid of
the input; hit map_i is CLEVER layer i's assignment of pixels to the audio-carrying token,
nearest-upsampled to the ground truth. Like the authors, DICE is applied to the sigmoid of
the hit maps, which are already 0/1 assignments.

Only annotated frames count (``frame_flags``: S4 training clips annotate frame 1 only, AVSS
padding frames none); each term is the mean over them (CE: first over the pixels of each
frame). Pixels marked ``ignore_value`` are left out. A batch without any annotated frame
returns zeros that still reach every prediction, so distributed training sees gradients for
every parameter.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from ..utils import ConfigError

__all__ = ["SelMCriterion", "dice_loss"]


def dice_loss(logits, targets, valid):
    """The authors' DICE per frame, averaged over frames.

    logits, targets (0/1 float), valid (bool): [n, H, W] -> scalar.
    """
    probs = logits.sigmoid() * valid
    targets = targets * valid
    overlap = (probs * targets).flatten(1).sum(1)
    pred = (probs * probs).flatten(1).sum(1) + 0.001
    true = (targets * targets).flatten(1).sum(1) + 0.001
    return (1 - 2 * overlap / (pred + true)).mean()


class SelMCriterion(nn.Module):
    """DICE + BCE (binary) or CE (semantic) on the masks, plus the hit-map DICE terms."""

    @configurable
    def __init__(self, *, num_classes, aux_weights, ignore_value=255):
        """
        NOTE: this interface is experimental.

        Args:
            num_classes: K; 1 = binary (S4/MS3), K > 1 = semantic (AVSS, K+1 logits).
            aux_weights: a_i, one per CLEVER layer, coarse to fine.
            ignore_value: ground-truth value of ignored pixels.
        """
        super().__init__()
        self.binary = num_classes == 1
        self.aux_weights = list(aux_weights)
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg):
        return {"num_classes": cfg.MODEL.SELM.NUM_CLASSES,
                "aux_weights": cfg.MODEL.SELM.LOSS.AUX_WEIGHTS}

    def forward(self, logits, hit_maps, targets, frame_flags):
        """
        Args:
            logits: [N, C, H, W] mask logits at the ground-truth size (C = 1 or K+1).
            hit_maps: list of [N, num_tokens, h_i, w_i], one per CLEVER layer.
            targets: [N, H, W] int64 ground truth (0/1 or class index; ignore_value ignored).
            frame_flags: [N] bool, True = the frame has ground truth.
        Returns:
            {"loss_dice", "loss_bce" (binary) or "loss_ce" (semantic), "loss_aux_<i>"}.
        """
        if len(hit_maps) != len(self.aux_weights):
            raise ConfigError("MODEL.SELM.LOSS.AUX_WEIGHTS has {} weights but CLEVER has {} "
                              "layers".format(len(self.aux_weights), len(hit_maps)))
        keys = ["loss_dice", "loss_bce"] if self.binary else ["loss_ce"]
        keys += ["loss_aux_{}".format(i) for i in range(len(hit_maps))]
        if not frame_flags.any():
            zero = logits.sum() * 0.0 + sum(m.sum() for m in hit_maps) * 0.0
            return {key: zero for key in keys}
        logits, targets = logits[frame_flags], targets[frame_flags]
        valid = targets != self.ignore_value
        # float32 or wider: float64 models get float64 losses
        foreground = ((targets > 0) & valid).to(torch.promote_types(logits.dtype, torch.float32))
        losses = {}
        if self.binary:
            losses["loss_dice"] = dice_loss(logits[:, 0], foreground, valid)
            bce = F.binary_cross_entropy_with_logits(logits[:, 0], foreground, reduction="none")
            losses["loss_bce"] = (bce * valid).sum() / valid.sum().clamp(min=1)
        else:
            ce = F.cross_entropy(logits, targets, ignore_index=self.ignore_value,
                                 reduction="none")
            per_frame = ce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
            losses["loss_ce"] = per_frame.mean()
        for i, (weight, maps) in enumerate(zip(self.aux_weights, hit_maps)):
            hit = F.interpolate(maps[frame_flags][:, -1:], size=targets.shape[-2:],
                                mode="nearest")[:, 0]
            losses["loss_aux_{}".format(i)] = weight * dice_loss(hit, foreground, valid)
        return losses
