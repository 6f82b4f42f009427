"""Dataset evaluator for audio-visual segmentation (S4/MS3 binary and AVSS semantic)."""
import itertools
import json
import logging
import os
import re
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

from selm_d2.data.datasets.avss import SUBSET_FRAMES
from selm_d2.data.masks import read_clip_masks
from selm_d2.utils import write_text_atomic

from .metrics import (
    avss_frame_class_scores,
    avss_scores,
    binary_frame_f_curves,
    binary_frame_iou,
    binary_scores_batch_protocol,
    binary_scores_dataset_level,
    foreground_rate,
)
from ..utils import ConfigError, DataError

__all__ = ["AVSEvaluator", "model_output_request"]

EVALUATOR_TYPES = ("avs_binary", "avss")
AVSS_PROTOCOLS = ("annotated", "official")
# The official AVSS loader pads every clip to the frame count of the v2 subset.
OFFICIAL_AVSS_FRAMES = max(SUBSET_FRAMES.values())


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
        frames). M_F is NaN (``null`` in the JSON) when no frame has a sounding object: the
        F-measure is undefined there, whereas 0 would drag down an average over splits.
        avss: "mIoU", "F", "mIoU_noBg", "F_noBg" under the configured protocol (the noBg
        values drop the LAST class, as the official code does; see :func:`avss_scores`), and
        "mIoU_<protocol>", "F_<protocol>" under both protocols; both: "fg_rate" (percent of pixels
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
        avss_protocol: str = "annotated",
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
            avss_protocol: AVSS only, which frames count (TEST.AVS.AVSS_PROTOCOL):
                "annotated": the frames with ground truth;
                "official": AVSBench's avss/test.py, which scores every clip padded to 10
                frames. Its model multiplies the logits of padding frames by 0, so all 71
                are equal and argmax picks class 0: a padding frame counts as predicted and
                labelled background (IoU = F = 1 for class 0). Real frames without a label
                file get an all-background label and are scored with the prediction.
            prefix: namespace of the result keys and of the JSON file, e.g. "silenced".
        """
        self._logger = logging.getLogger(__name__)
        meta = MetadataCatalog.get(dataset_name)
        self._evaluator_type = meta.get("evaluator_type", None)
        if self._evaluator_type not in EVALUATOR_TYPES:
            raise DataError(
                "Dataset '{}' has evaluator_type {!r}; AVSEvaluator needs one of {}. Set it with "
                "MetadataCatalog.get(name).set(evaluator_type=...)".format(
                    dataset_name, self._evaluator_type, EVALUATOR_TYPES))
        if f_batch_size < 1:
            raise ConfigError("TEST.AVS.F_BATCH_SIZE must be >= 1, got {}".format(f_batch_size))
        if eval_size < 0:
            raise ConfigError("TEST.AVS.EVAL_SIZE must be 0 (original size) or a positive size, "
                              "got {}".format(eval_size))
        if avss_protocol not in AVSS_PROTOCOLS:
            raise ConfigError("TEST.AVS.AVSS_PROTOCOL is {!r}; expected one of {}.".format(
                avss_protocol, AVSS_PROTOCOLS))
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._f_batch_size = int(f_batch_size)
        self._eval_size = int(eval_size)
        self._avss_protocol = avss_protocol
        self._prefix = prefix.strip("/")
        self._ignore_label = int(meta.get("ignore_label", 255))
        self._class_names = meta.get("stuff_classes", None)
        if self._evaluator_type == "avss" and not self._class_names:
            raise DataError("AVSS dataset '{}' has no stuff_classes in its Metadata (background "
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
            "avss_protocol": cfg.TEST.AVS.AVSS_PROTOCOL,
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
            raise ConfigError(
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
        stats = {}
        if self._evaluator_type == "avss":
            stats["class_sums"] = self._avss_class_sums(pred, gt, annotated,
                                                        len(self._class_names))
            pred_fg = pred[annotated] != 0
        pred, gt = pred[annotated], gt[annotated]
        sounding = ((gt != 0) & (gt != self._ignore_label)).flatten(1).any(1)
        stats["silent"] = bool(annotated.any()) and not bool(sounding.any())
        if self._evaluator_type == "avs_binary":
            prob = pred[:, 0]
            stats["iou"] = binary_frame_iou(prob, gt, self._ignore_label).cpu().numpy()
            # Frames with empty ground truth have no F-measure (official: skipped).
            stats["f_curves"] = binary_frame_f_curves(
                prob[sounding], gt[sounding], self._ignore_label).cpu().numpy()
            pred_fg = prob > 0.5
        stats["fg_rate"] = foreground_rate(pred_fg).cpu().numpy()
        return stats

    def _avss_class_sums(self, pred, gt, annotated, num_classes):
        """{protocol: float64 [3, K+1]}: sums over frames of IoU_c, F_c and "c present".

        pred, gt: [T, H, W] of the clip's real frames; annotated: bool [T].
        """
        # Official: real frames without a label file get an all-background label (the loader
        # pads its label list with zeros) and are scored with the model's prediction.
        labels = torch.where(annotated[:, None, None], gt, torch.zeros_like(gt))
        iou, fscore, present = avss_frame_class_scores(pred, labels, num_classes,
                                                       self._ignore_label)
        per_frame = torch.stack([iou, fscore, present.double()])  # [3, T, K+1]
        official = per_frame.sum(1)
        # Padding frames up to the official 10: IoU_0 = F_0 = 1, background present.
        official[:, 0] += max(OFFICIAL_AVSS_FRAMES - pred.shape[0], 0)
        return {"annotated": per_frame[:, annotated].sum(1).cpu().numpy(),
                "official": official.cpu().numpy()}

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
            sums = {p: np.sum([c["class_sums"][p] for c in clips], axis=0)
                    for p in AVSS_PROTOCOLS}
            scores = {p: avss_scores(*sums[p]) for p in AVSS_PROTOCOLS}
            chosen = scores[self._avss_protocol]
            metrics = OrderedDict((k, chosen[k]) for k in ("mIoU", "F", "mIoU_noBg", "F_noBg"))
            for protocol in AVSS_PROTOCOLS:
                metrics["mIoU_" + protocol] = scores[protocol]["mIoU"]
                metrics["F_" + protocol] = scores[protocol]["F"]
            count = sums[self._avss_protocol][2]
            per_class = OrderedDict(
                (name, {"IoU": 100 * float(i), "F": 100 * float(f), "num_frames": int(n)})
                for name, i, f, n in zip(
                    self._class_names, chosen["per_class_iou"], chosen["per_class_f"], count))
        metrics["fg_rate"] = _mean_of([c["fg_rate"] for c in clips])
        silent = [c["fg_rate"] for c in clips if c["silent"]]
        if silent:
            metrics["fg_rate_silent"] = _mean_of(silent)

        results = OrderedDict((self._key(k), 100.0 * v) for k, v in metrics.items())
        undefined = [k for k, v in results.items() if np.isnan(v)]
        if undefined:
            self._logger.warning(
                "AVS evaluation on '%s': no annotated frame shows a sounding object, so %s "
                "is undefined (NaN; null in the JSON), not 0.", self._dataset_name,
                ", ".join(undefined))
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
                          "avss_protocol": self._avss_protocol, "prefix": self._prefix}),
            # NaN (undefined, e.g. M_F without any sounding frame) is written as null.
            ("metrics", OrderedDict((k, None if np.isnan(v) else v) for k, v in results.items())),
        ])
        if per_class is not None:
            report["per_class"] = per_class
        write_text_atomic(path, json.dumps(report, indent=2))
        self._logger.info("AVS results written to %s", path)


def _mean_of(arrays) -> float:
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return float(values.mean()) if values.size else 0.0
