"""AVSBench metrics as pure tensor functions.

Each function reproduces what the official AVSBench code computes (``avs_scripts/*/utils/
utility.py`` for S4/MS3, ``avss/utils/compute_color_metrics.py`` for AVSS), written so that the
per-frame work is vectorised and only compact statistics (a few numbers per frame) need to be
kept for the dataset-level reduction. Values are fractions in [0, 1]; the evaluator scales them.

Ground truth tensors may hold ``ignore_label`` pixels; those pixels are left out of every count.
The official data has none inside annotated frames, so this does not change official numbers.
"""
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from ..utils import ConfigError, DataError

__all__ = [
    "NUM_F_THRESHOLDS",
    "F_BETA2",
    "f_thresholds",
    "binary_frame_iou",
    "binary_frame_f_curves",
    "binary_scores_batch_protocol",
    "binary_scores_dataset_level",
    "avss_frame_class_scores",
    "avss_scores",
    "foreground_rate",
]

NUM_F_THRESHOLDS = 255
F_BETA2 = 0.3  # β² of the AVSBench F-measure (precision weighted more than recall)
_IOU_EPS = 1e-7  # mask_iou's eps (S4/MS3)
_AVSS_EPS = 2.220446049250313e-16  # np.spacing(1), compute_color_metrics' union eps
_PR_EPS = 1e-20  # _eval_pr's eps


def f_thresholds(device=None) -> torch.Tensor:
    """The 255 F-measure thresholds, ``linspace(0, 1 - 1e-10, 255)`` in float32 (last = 1.0)."""
    return torch.linspace(0, 1 - 1e-10, NUM_F_THRESHOLDS, device=device)


def _f_measure(precision: torch.Tensor, recall: torch.Tensor) -> torch.Tensor:
    f = (1 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0)


def binary_frame_iou(
    prob: torch.Tensor, gt: torch.Tensor, ignore_label: int = 255
) -> torch.Tensor:
    """Per-frame IoU of S4/MS3 (``mask_iou``).

    Args:
        prob: [N, H, W] foreground probability; the prediction is ``prob > 0.5``.
        gt: [N, H, W] integer ground truth, 1 = foreground, 0 = background.
    Returns:
        float64 [N]: I / (U + 1e-7). A frame with empty ground truth scores the fraction of
        its pixels predicted background (I = correct background pixels, U = all pixels).
    """
    valid = gt != ignore_label
    pred = (prob > 0.5) & valid
    fg = (gt == 1) & valid
    dims = (1, 2)
    inter = (pred & fg).sum(dims)
    union = (pred | fg).sum(dims)
    empty = fg.sum(dims) == 0
    inter = torch.where(empty, (~pred & valid).sum(dims), inter)
    union = torch.where(empty, valid.sum(dims), union)
    return inter.double() / (union.double() + _IOU_EPS)


def binary_frame_f_curves(
    prob: torch.Tensor, gt: torch.Tensor, ignore_label: int = 255
) -> torch.Tensor:
    """Per-frame F-measure curves of S4/MS3 (``Eval_Fmeasure`` before its reduction).

    A pixel is positive at threshold t when ``prob >= t``. Counting pixels per threshold bin
    (searchsorted + bincount) gives exactly the official 255 comparisons in one pass.

    Args:
        prob: [N, H, W] foreground probability.
        gt: [N, H, W] integer ground truth, 1 = foreground.
    Returns:
        float32 [N, 255]: F(t) with P = tp/(pred + 1e-20), R = tp/(gt + 1e-20), NaN -> 0.
        Frames with empty ground truth are skipped by the official code: the caller drops them.
    """
    n = prob.shape[0]
    thresholds = f_thresholds(prob.device)
    prob = prob.flatten(1).float().contiguous()
    gt = gt.flatten(1)
    valid = gt != ignore_label
    fg = (gt == 1) & valid
    # bin b = number of thresholds <= prob, so prob >= thresholds[k] <=> b > k.
    bins = torch.searchsorted(thresholds, prob, right=True)
    bins = bins + torch.arange(n, device=prob.device)[:, None] * (NUM_F_THRESHOLDS + 1)
    size = n * (NUM_F_THRESHOLDS + 1)
    hist_pred = torch.bincount(bins[valid], minlength=size).view(n, NUM_F_THRESHOLDS + 1)
    hist_tp = torch.bincount(bins[fg], minlength=size).view(n, NUM_F_THRESHOLDS + 1)
    # at_least[:, k] = number of pixels in bins k+1 .. 255 = pixels with prob >= thresholds[k]
    n_pred = hist_pred.flip(1).cumsum(1).flip(1)[:, 1:].float()
    tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:].float()
    n_gt = fg.sum(1, keepdim=True).float()
    return _f_measure(tp / (n_pred + _PR_EPS), tp / (n_gt + _PR_EPS))


def _mean_curve_max(curves: Sequence[np.ndarray]) -> float:
    """Max over thresholds of the mean F curve; 0.0 when there is no curve (as official)."""
    rows = [np.asarray(c, dtype=np.float64).reshape(-1, NUM_F_THRESHOLDS) for c in curves]
    stacked = np.concatenate(rows) if rows else np.zeros((0, NUM_F_THRESHOLDS))
    return float(stacked.mean(0).max()) if len(stacked) else 0.0


def _has_curves(curves: Sequence[np.ndarray]) -> bool:
    """Whether any clip has an F curve, i.e. a frame with non-empty ground truth."""
    return any(np.asarray(c).size for c in curves)


def binary_scores_batch_protocol(
    clip_ious: Sequence[np.ndarray], clip_f_curves: Sequence[np.ndarray], batch_size: int
) -> Tuple[float, float]:
    """M_J and M_F under the official test-batch protocol.

    Clips are grouped, in the given (dataset) order, into batches of ``batch_size`` clips. A
    batch scores the mean IoU of its annotated frames, and the max over thresholds of the mean
    F curve of its frames with non-empty ground truth (0.0 when it has none; that 0 still
    counts). Each metric is the mean over batches, so M_F depends on the batch size. A batch
    without any annotated frame is left out of both means (the official test splits are fully
    annotated, so this never happens there). When no batch has a non-empty-GT frame, M_F is
    undefined: NaN (the official code would print 0).

    Args:
        clip_ious: per clip, float [n_annotated] IoUs of its annotated frames.
        clip_f_curves: per clip, float [n_nonempty, 255] F curves of its non-empty-GT frames.
    Returns:
        (M_J, M_F) as fractions; M_F NaN when no frame has non-empty ground truth.
    """
    if batch_size < 1:
        raise ConfigError(
            "F batch size must be >= 1 (TEST.AVS.F_BATCH_SIZE), got {}".format(batch_size))
    if len(clip_ious) != len(clip_f_curves):
        raise ValueError("clip_ious and clip_f_curves must have one entry per clip")
    batch_j, batch_f = [], []
    for start in range(0, len(clip_ious), batch_size):
        ious = np.concatenate([np.asarray(x, dtype=np.float64).ravel()
                               for x in clip_ious[start:start + batch_size]])
        if ious.size == 0:
            continue
        batch_j.append(ious.mean())
        batch_f.append(_mean_curve_max(clip_f_curves[start:start + batch_size]))
    if not batch_j:
        return 0.0, float("nan")
    if not _has_curves(clip_f_curves):
        return float(np.mean(batch_j)), float("nan")
    return float(np.mean(batch_j)), float(np.mean(batch_f))


def binary_scores_dataset_level(
    clip_ious: Sequence[np.ndarray], clip_f_curves: Sequence[np.ndarray]
) -> Tuple[float, float]:
    """M_J as the plain per-frame mean, M_F as the max of the mean curve over all valid frames.

    Same inputs as :func:`binary_scores_batch_protocol`; independent of batching and order.
    M_F is NaN (undefined) when no frame has non-empty ground truth.
    """
    ious = [np.asarray(x, dtype=np.float64).ravel() for x in clip_ious]
    ious = np.concatenate(ious) if ious else np.zeros(0)
    m_j = float(ious.mean()) if ious.size else 0.0
    return m_j, _mean_curve_max(clip_f_curves) if _has_curves(clip_f_curves) else float("nan")


def avss_frame_class_scores(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_label: int = 255
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame, per-class IoU and F of AVSS (``_batch_miou_fscore``), vectorised by bincount.

    Args:
        pred: [N, H, W] int predicted class (argmax over the K+1 channels), 0 = background.
        gt: [N, H, W] int ground-truth class in [0, num_classes) or ``ignore_label``.
        num_classes: K+1.
    Returns:
        iou, fscore, present: [N, num_classes] (float64, float64, bool).
        iou = I / (U + 2.22e-16) with U = P + G - I; F from precision I/P and recall I/G
        (no epsilon, NaN -> 0); present = U > 0, i.e. the frame counts for that class.
    """
    n, c = pred.shape[0], num_classes
    pred = pred.flatten(1).long()
    gt = gt.flatten(1).long()
    valid = gt != ignore_label
    labels = gt[valid]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise DataError(
            "ground-truth classes span [{}, {}] but must lie in [0, {}) or equal the ignore "
            "label {}: check the dataset's masks and its number of classes".format(
                int(labels.min()), int(labels.max()), c, ignore_label))
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
        raise ValueError("predicted classes must lie in [0, {})".format(c))
    offset = torch.arange(n, device=pred.device)[:, None] * c
    pred_idx, gt_idx = pred + offset, gt + offset
    size = n * c
    area_pred = torch.bincount(pred_idx[valid], minlength=size).view(n, c).double()
    area_gt = torch.bincount(gt_idx[valid], minlength=size).view(n, c).double()
    inter = torch.bincount(gt_idx[valid & (pred == gt)], minlength=size).view(n, c).double()
    union = area_pred + area_gt - inter
    iou = inter / (union + _AVSS_EPS)
    fscore = _f_measure(inter / area_pred, inter / area_gt)
    return iou, fscore, union > 0


def avss_scores(iou_sum: np.ndarray, f_sum: np.ndarray, count: np.ndarray) -> Dict[str, object]:
    """Split-level AVSS scores from per-class sums over frames.

    Args:
        iou_sum, f_sum: [K+1] sums over all scored frames of the per-frame IoU_c / F_c.
        count: [K+1] number of frames where class c occurs in the prediction or the GT.
    Returns:
        dict with "mIoU", "F" (means over ALL K+1 classes; a class never seen scores 0),
        "mIoU_noBg", "F_noBg" and "per_class_iou", "per_class_f" ([K+1] arrays).
        The "noBg" values drop the LAST class index, exactly as the official code does: it
        is a left-over of the old convention in which background was class 70. With
        background at index 0 (the current convention) they are not "without background".
    """
    iou_sum, f_sum, count = (np.asarray(x, dtype=np.float64) for x in (iou_sum, f_sum, count))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_iou = np.nan_to_num(iou_sum / count, nan=0.0)
        per_f = np.nan_to_num(f_sum / count, nan=0.0)
    return {
        "mIoU": float(per_iou.mean()),
        "F": float(per_f.mean()),
        "mIoU_noBg": float(per_iou[:-1].mean()),
        "F_noBg": float(per_f[:-1].mean()),
        "per_class_iou": per_iou,
        "per_class_f": per_f,
    }


def foreground_rate(pred_fg: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels predicted foreground per frame: [N, H, W] bool -> float64 [N]."""
    return pred_fg.flatten(1).double().mean(1)
