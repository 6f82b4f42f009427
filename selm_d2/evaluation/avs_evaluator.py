"""Dataset evaluator for audio-visual segmentation (S4/MS3 binary and AVSS semantic)."""
import itertools
import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from selm_d2.data.masks import read_clip_masks

from .metrics import (
    avss_frame_class_scores,
    avss_scores,
    binary_frame_f_curves,
    binary_frame_iou,
    binary_scores_batch_protocol,
    binary_scores_dataset_level,
    foreground_rate,
)

__all__ = ["AVSEvaluator", "model_output_request"]

EVALUATOR_TYPES = ("avs_binary", "avss")


def model_output_request(evaluator_type, eval_size):
    """What AVSEvaluator scores, as keys for each input clip dict of the model (see
    ``SelM.forward``): predictions at ``eval_size`` when it is set, and per-pixel labels
    instead of K+1 probability maps for AVSS (binary M_F needs the probabilities)."""
    request = {}
    if eval_size:
        request["output_size"] = (eval_size, eval_size)
    if evaluator_type == "avss":
        request["output_format"] = "labels"
    return request


class AVSEvaluator(DatasetEvaluator):
    """AVSBench metrics for one registered dataset, reported in percent.

    The dataset's metadata must set ``evaluator_type`` to "avs_binary" (S4/MS3: M_J and M_F)
    or "avss" (AVSBench-Semantic: mIoU and F over K+1 classes); ``ignore_label`` (255) marks
    frames without ground truth. Ground truth is read from the mask files of each input at
    the original frame size; predictions are ``outputs[i]["sem_seg"]``, [T, K+1, H, W]
    probabilities, or for AVSS ``outputs[i]["sem_seg_labels"]`` [T, H, W] class indices, at the
    original size or already at ``eval_size`` (what ``model_output_request`` asks for).

    Only compact statistics are kept per clip (per-frame IoU, F curves or per-class sums), in
    the order clips are processed. detectron2's InferenceSampler gives each rank a contiguous
    range of the dataset, so concatenating the ranks in rank order restores the dataset order
    that the official M_F batch protocol needs.

    Result keys (prefixed by ``prefix + "/"`` when a prefix is given):
        binary: "M_J" (per-frame mean), "M_J_official_bs{B}" and "M_F_official_bs{B}" (official
        protocol over batches of B clips), "M_F_dataset" (max of the mean F curve over all
        frames); avss: "mIoU", "F", "mIoU_noBg", "F_noBg" (the noBg values drop the LAST class,
        as the official code does; see :func:`avss_scores`); both: "fg_rate" (percent of pixels
        predicted foreground on annotated frames) and, when the split has clips whose ground
        truth is empty on every annotated frame, "fg_rate_silent" (the same on those clips
        only: the auditory-illusion rate, ideally 0).
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        output_dir: str = None,
        *,
        distributed: bool = True,
        f_batch_size: int = 4,
        eval_size: int = 0,
        count_padded_frames: bool = False,
        prefix: str = "",
    ):
        """
        Args:
            dataset_name: a name registered in DatasetCatalog/MetadataCatalog.
            output_dir: where ``avs_results[_<prefix>].json`` is written; None writes nothing.
            distributed: gather statistics from all ranks and score on rank 0.
            f_batch_size: clips per batch of the official M_F / M_J protocol (AVSBench 4).
            eval_size: 0 scores at the original size; N resizes ground truth (nearest) and
                probabilities (bilinear) to N x N first (official AVSS: 224).
            count_padded_frames: AVSS only. Score padding frames and frames without ground
                truth as perfect background (IoU = F = 1 for class 0), as the official AVSS
                loader does with its T=10 padding. Off by default: such frames carry no
                ground truth and inflate the background class.
            prefix: namespace of the result keys and of the JSON file, e.g. "silenced".
        """
        self._logger = logging.getLogger(__name__)
        meta = MetadataCatalog.get(dataset_name)
        self._evaluator_type = meta.get("evaluator_type", None)
        if self._evaluator_type not in EVALUATOR_TYPES:
            raise ValueError(
                "Dataset '{}' has evaluator_type {!r}; AVSEvaluator needs one of {}. Set it with "
                "MetadataCatalog.get(name).set(evaluator_type=...)".format(
                    dataset_name, self._evaluator_type, EVALUATOR_TYPES))
        if f_batch_size < 1:
            raise ValueError("TEST.AVS.F_BATCH_SIZE must be >= 1, got {}".format(f_batch_size))
        if eval_size < 0:
            raise ValueError("TEST.AVS.EVAL_SIZE must be 0 (original size) or a positive size, "
                             "got {}".format(eval_size))
        if count_padded_frames and self._evaluator_type != "avss":
            self._logger.warning(
                "TEST.AVS.COUNT_PADDED_FRAMES only affects AVSS datasets; '%s' is binary (the "
                "official S4/MS3 protocol has no padding), so it is ignored.", dataset_name)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._f_batch_size = int(f_batch_size)
        self._eval_size = int(eval_size)
        self._count_padded = bool(count_padded_frames) and self._evaluator_type == "avss"
        self._prefix = prefix.strip("/")
        self._ignore_label = int(meta.get("ignore_label", 255))
        self._class_names = meta.get("stuff_classes", None)
        if self._evaluator_type == "avss" and not self._class_names:
            raise ValueError("AVSS dataset '{}' has no stuff_classes in its Metadata (background "
                             "first); register_avs_dataset sets them".format(dataset_name))
        self._clips: List[Dict] = []

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None, *, distributed=True, prefix=""):
        return {
            "dataset_name": dataset_name,
            "output_dir": cfg.OUTPUT_DIR if output_dir is None else output_dir,
            "distributed": distributed,
            "f_batch_size": cfg.TEST.AVS.F_BATCH_SIZE,
            "eval_size": cfg.TEST.AVS.EVAL_SIZE,
            "count_padded_frames": cfg.TEST.AVS.COUNT_PADDED_FRAMES,
            "prefix": prefix,
        }

    def reset(self):
        self._clips = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self._clips.append(self._clip_statistics(inp, out))

    # ------------------------------------------------------------------ per clip
    def _load_pair(self, inp, out):
        """Prediction and ground truth [T, H, W] long, on one device, at the scored size.

        The prediction is the sounding probability [T, 1, H, W] (binary), or the class index
        [T, H, W] long (AVSS; from labels, or the argmax of probabilities).
        """
        clip = inp.get("clip_id", "?")
        labelled = "sem_seg_labels" in out and self._evaluator_type == "avss"
        if not labelled and "sem_seg" not in out:
            raise KeyError("model output for clip '{}' has no 'sem_seg' entry{}".format(
                clip, " (nor 'sem_seg_labels')" if self._evaluator_type == "avss" else ""))
        pred = out["sem_seg_labels"][:, None] if labelled else out["sem_seg"]
        gt = torch.as_tensor(read_clip_masks(inp, ignore_label=self._ignore_label))
        size = (self._eval_size, self._eval_size) if self._eval_size else tuple(gt.shape[1:])
        if pred.dim() != 4 or pred.shape[0] != gt.shape[0] or (
                tuple(pred.shape[2:]) not in (size, tuple(gt.shape[1:]))):
            raise ValueError(
                "clip '{}': prediction has shape {} but its masks ({}) give {}; the model must "
                "return [T, K+1, height, width] for the T real frames at the original size{}"
                .format(clip, tuple(pred.shape), inp.get("sem_seg_file_names"), tuple(gt.shape),
                        " or at TEST.AVS.EVAL_SIZE" if self._eval_size else ""))
        channels = len(self._class_names) if labelled else pred.shape[1]
        if self._evaluator_type == "avs_binary":
            if channels != 2:
                raise ValueError("clip '{}': a binary dataset needs 2 channels (background, "
                                 "sounding), got {}".format(clip, channels))
            pred = pred[:, 1:].float()  # only the sounding probability is scored
        elif channels != len(self._class_names):
            raise ValueError(
                "clip '{}': prediction has {} channels but dataset '{}' lists {} classes "
                "(stuff_classes): check MODEL.SELM.NUM_CLASSES".format(
                    clip, channels, self._dataset_name, len(self._class_names)))
        gt = gt.to(device=pred.device, dtype=torch.long)
        if tuple(pred.shape[2:]) != size:
            mode = "nearest-exact" if labelled else "bilinear"
            pred = F.interpolate(pred.float(), size=size, mode=mode,
                                 **({} if labelled else {"align_corners": False}))
        if tuple(gt.shape[1:]) != size:
            # "nearest-exact" samples pixel centres like PIL's NEAREST used by AVSBench.
            gt = F.interpolate(gt[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
        if self._evaluator_type == "avss":
            pred = pred[:, 0].long() if labelled else pred.argmax(1)
        return pred, gt

    def _clip_statistics(self, inp, out) -> Dict:
        pred, gt = self._load_pair(inp, out)
        annotated = (gt != self._ignore_label).flatten(1).any(1)
        pred, gt = pred[annotated], gt[annotated]
        sounding = ((gt != 0) & (gt != self._ignore_label)).flatten(1).any(1)
        stats = {"silent": bool(annotated.any()) and not bool(sounding.any())}
        if self._evaluator_type == "avs_binary":
            prob = pred[:, 0]
            stats["iou"] = binary_frame_iou(prob, gt, self._ignore_label).cpu().numpy()
            # Frames with empty ground truth have no F-measure (official: skipped).
            stats["f_curves"] = binary_frame_f_curves(
                prob[sounding], gt[sounding], self._ignore_label).cpu().numpy()
            pred_fg = prob > 0.5
        else:
            iou, fscore, present = avss_frame_class_scores(
                pred, gt, len(self._class_names), self._ignore_label)
            sums = torch.stack([iou.sum(0), fscore.sum(0), present.sum(0).double()])
            if self._count_padded:
                # Padding (frame_valid False, dropped from the output) and unannotated frames:
                # prediction and label both all background -> IoU_0 = F_0 = 1, counted once.
                frame_valid = torch.as_tensor(inp.get("frame_valid", []), dtype=torch.bool)
                sums[:, 0] += int((~frame_valid).sum()) + int((~annotated).sum())
            stats["class_sums"] = sums.cpu().numpy()
            pred_fg = pred != 0
        stats["fg_rate"] = foreground_rate(pred_fg).cpu().numpy()
        return stats

    # ------------------------------------------------------------------ dataset
    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            per_rank = comm.gather(self._clips, dst=0)
            if not comm.is_main_process():
                return {}
            clips = list(itertools.chain(*per_rank))
        else:
            clips = self._clips
        if not clips:
            self._logger.warning("AVSEvaluator on '%s' received no clips.", self._dataset_name)
            return {}

        per_class = None
        if self._evaluator_type == "avs_binary":
            ious = [c["iou"] for c in clips]
            curves = [c["f_curves"] for c in clips]
            m_j, m_f = binary_scores_dataset_level(ious, curves)
            m_j_off, m_f_off = binary_scores_batch_protocol(ious, curves, self._f_batch_size)
            metrics = OrderedDict([
                ("M_J", m_j),
                ("M_J_official_bs{}".format(self._f_batch_size), m_j_off),
                ("M_F_official_bs{}".format(self._f_batch_size), m_f_off),
                ("M_F_dataset", m_f),
            ])
        else:
            iou_sum, f_sum, count = np.sum([c["class_sums"] for c in clips], axis=0)
            scores = avss_scores(iou_sum, f_sum, count)
            metrics = OrderedDict((k, scores[k]) for k in ("mIoU", "F", "mIoU_noBg", "F_noBg"))
            per_class = OrderedDict(
                (name, {"IoU": 100 * float(i), "F": 100 * float(f), "num_frames": int(n)})
                for name, i, f, n in zip(
                    self._class_names, scores["per_class_iou"], scores["per_class_f"], count))
        metrics["fg_rate"] = _mean_of([c["fg_rate"] for c in clips])
        silent = [c["fg_rate"] for c in clips if c["silent"]]
        if silent:
            metrics["fg_rate_silent"] = _mean_of(silent)

        results = OrderedDict((self._key(k), 100.0 * v) for k, v in metrics.items())
        self._logger.info("AVS evaluation on '%s' (%d clips, %s, percent):\n%s",
                          self._dataset_name, len(clips), self._evaluator_type,
                          create_small_table(results))
        if self._output_dir:
            self._write_json(results, per_class, len(clips), len(silent))
        return OrderedDict(sem_seg=results)

    def _key(self, name: str) -> str:
        return "{}/{}".format(self._prefix, name) if self._prefix else name

    def _write_json(self, results, per_class, num_clips, num_silent):
        """Write avs_results[_<prefix>].json atomically: temp file in the same folder + rename."""
        suffix = "_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self._prefix) if self._prefix else ""
        path = os.path.join(self._output_dir, "avs_results{}.json".format(suffix))
        report = OrderedDict([
            ("dataset", self._dataset_name),
            ("evaluator_type", self._evaluator_type),
            ("num_clips", num_clips),
            ("num_silent_clips", num_silent),
            ("settings", {"f_batch_size": self._f_batch_size, "eval_size": self._eval_size,
                          "count_padded_frames": self._count_padded, "prefix": self._prefix}),
            ("metrics", results),
        ])
        if per_class is not None:
            report["per_class"] = per_class
        os.makedirs(self._output_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._output_dir, prefix=".avs_results.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(report, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._logger.info("AVS results written to %s", path)


def _mean_of(arrays) -> float:
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return float(values.mean()) if values.size else 0.0
