"""SelM training losses (paper §4.5).

Binary tasks (S4, MS3; one foreground logit), the paper's Eq. 6:
    L = w_dice * DICE + w_bce * BCE + sum_i a_i * DICE_i
AVSS (K+1 channels), ``MODEL.SELM.LOSS.SEMANTIC``:
    "bce" (paper): L = w_bce * BCE + sum_i a_i * DICE_i, on the K+1 one-hot channels (a
          sigmoid per channel, DICE per channel averaged over channels);
    "ce"  (ours):  L = w_ce * CE + sum_i a_i * CE_i, per-pixel softmax cross-entropy.
where i runs over the CLEVER layers' intermediate masks (coarse to fine), each upsampled to the
ground-truth size. For AVSS the paper drops DICE and keeps "the second and third components"
of Eq. 6: the BCE and the auxiliary term, which Eq. 7 defines as DICE on the intermediate
masks; "bce" is that, read literally. "ce" (ours) treats the classes as exclusive, which is
what argmax inference assumes.

Choices where the paper is silent: DICE is the soft DICE of each frame with +1 smoothing in
numerator and denominator (an empty ground truth gives a finite loss that pushes the
prediction to 0), averaged over frames (and over channels for AVSS); BCE is averaged over the
annotated pixels.

Only annotated pixels of annotated frames count: ``frame_flags`` marks frames with ground
truth (S4 training clips annotate frame 1 only, padding frames have none) and 255 marks ignored
pixels. Frames are selected *before* upsampling, which keeps the full-resolution maps small.
A batch without any annotated pixel returns zeros that are still connected to the graph
(every prediction times 0), so distributed training sees gradients for every parameter.
A weight of 0 removes the term and its key (paper Table 8).
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

__all__ = ["SelMCriterion", "dice_loss", "SEMANTIC_LOSSES"]

SEMANTIC_LOSSES = ("bce", "ce")


def dice_loss(logits, targets, valid):
    """Soft DICE per frame, averaged over frames.

    Args:
        logits: [n, H, W] foreground logits.
        targets: [n, H, W] float 0/1.
        valid: [n, H, W] bool, pixels that count.
    Returns:
        scalar; an empty ground truth gives ``1 - 1/(sum(p)+1)`` (pushes p to 0), not NaN.
    """
    probs = logits.sigmoid() * valid
    targets = targets * valid
    numerator = 2 * (probs * targets).flatten(1).sum(1)
    denominator = probs.flatten(1).sum(1) + targets.flatten(1).sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).mean()


def _bce_loss(logits, targets, valid):
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (losses * valid).sum() / valid.sum().clamp(min=1)


def _ce_loss(logits, targets, ignore_value):
    losses = F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="sum")
    return losses / (targets != ignore_value).sum().clamp(min=1)


class SelMCriterion(nn.Module):
    """DICE + BCE (binary) or BCE / CE (semantic) on the final masks, plus auxiliary losses."""

    @configurable
    def __init__(self, *, num_classes, dice_weight, bce_weight, ce_weight, aux_weights,
                 semantic_loss="bce", ignore_value=255):
        """
        NOTE: this interface is experimental.

        Args:
            num_classes: K; 1 = binary (S4/MS3), K > 1 = semantic (AVSS, K+1 logits).
            dice_weight: binary tasks' DICE on the final mask.
            bce_weight: BCE on the final masks (binary tasks; semantic ones with "bce").
            ce_weight: CE on the final masks (semantic tasks with "ce").
            aux_weights: a_i, one per CLEVER layer, coarse to fine.
            semantic_loss: one of ``SEMANTIC_LOSSES``, for K > 1 (see the module docstring).
            ignore_value: ground-truth value of ignored pixels.
        """
        super().__init__()
        if semantic_loss not in SEMANTIC_LOSSES:
            raise ValueError("MODEL.SELM.LOSS.SEMANTIC={!r} is unknown: use one of {}".format(
                semantic_loss, ", ".join(SEMANTIC_LOSSES)))
        self.binary = num_classes == 1
        if self.binary:
            self.final = [("loss_dice", "dice", dice_weight), ("loss_bce", "bce", bce_weight)]
            self.aux_kind = "dice"
        elif semantic_loss == "bce":
            self.final = [("loss_bce", "bce", bce_weight)]
            self.aux_kind = "dice"
        else:
            self.final = [("loss_ce", "ce", ce_weight)]
            self.aux_kind = "ce"
        if not any(weight for _, _, weight in self.final):
            raise ValueError(
                "MODEL.SELM.LOSS: every loss on the final masks has weight 0 ({}), so the mask "
                "head would never learn; keep at least one of them".format(", ".join(
                    "{}_WEIGHT".format(kind.upper()) for _, kind, _ in self.final)))
        self.aux_weights = list(aux_weights)
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg):
        loss = cfg.MODEL.SELM.LOSS
        return {
            "num_classes": cfg.MODEL.SELM.NUM_CLASSES,
            "dice_weight": loss.DICE_WEIGHT,
            "bce_weight": loss.BCE_WEIGHT,
            "ce_weight": loss.CE_WEIGHT,
            "aux_weights": loss.AUX_WEIGHTS,
            "semantic_loss": loss.SEMANTIC,
        }

    def _loss(self, kind, logits, targets):
        """Loss `kind` ("dice", "bce", "ce") on logits [n, C, h, w] resized to targets [n, H, W].

        "dice" and "bce" read each channel as an independent logit: C = 1 against the
        foreground (targets > 0), C = K+1 against the one-hot classes (per-channel DICE is
        averaged over frames and channels).
        """
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear",
                               align_corners=False)
        if kind == "ce":
            return _ce_loss(logits, targets, self.ignore_value)
        valid = targets != self.ignore_value
        channels = logits.shape[1]
        if channels == 1:
            binary = (targets > 0)[:, None]
        else:  # one-hot as bool [n, K+1, H, W] (1 byte per entry, not int64's 8)
            classes = torch.arange(channels, device=targets.device)[None, :, None, None]
            binary = targets[:, None] == classes
        binary = (binary & valid[:, None]).float()
        valid = valid[:, None].expand_as(binary)
        if kind == "bce":
            return _bce_loss(logits, binary, valid)
        return dice_loss(logits.flatten(0, 1), binary.flatten(0, 1), valid.flatten(0, 1))

    def forward(self, outputs, targets, frame_flags):
        """
        Args:
            outputs: {"pred_masks": [N, C, h, w], "aux_masks": list of [N, C, h_i, w_i]}.
            targets: [N, H, W] int64 ground truth (binary 0/1 or class index; 255 ignored).
            frame_flags: [N] bool, True = the frame has ground truth.
        Returns:
            dict of weighted scalar losses: loss_dice and loss_bce (binary), loss_bce or
            loss_ce (semantic), and loss_aux_0 .. loss_aux_{L-1}; zero-weight terms are absent.
        """
        aux_masks = outputs["aux_masks"]
        if len(aux_masks) != len(self.aux_weights):
            raise ValueError("MODEL.SELM.LOSS.AUX_WEIGHTS has {} weights but the decoder has {} "
                             "layers (one per MODEL.SELM.CLEVER.IN_FEATURES level)".format(
                                 len(self.aux_weights), len(aux_masks)))
        pred = outputs["pred_masks"]
        terms = [(key, kind, weight, pred) for key, kind, weight in self.final]
        terms += [("loss_aux_{}".format(i), self.aux_kind, weight, logits)
                  for i, (weight, logits) in enumerate(zip(self.aux_weights, aux_masks))]

        keep = frame_flags & (targets != self.ignore_value).flatten(1).any(dim=1)
        losses = {}
        for key, kind, weight, logits in terms:
            if weight == 0:
                continue
            if keep.any():
                losses[key] = weight * self._loss(kind, logits[keep], targets[keep])
            else:
                # Nothing annotated: a zero that still reaches every prediction.
                losses[key] = logits.sum() * 0.0
        return losses
