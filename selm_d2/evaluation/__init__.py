"""AVSBench evaluation: metric functions and the detectron2 dataset evaluator."""
from .avs_evaluator import AVSEvaluator, model_output_request
from .metrics import (
    avss_frame_class_scores,
    avss_scores,
    binary_frame_f_curves,
    binary_frame_iou,
    binary_scores_batch_protocol,
    binary_scores_dataset_level,
    foreground_rate,
)

__all__ = [
    "AVSEvaluator",
    "avss_frame_class_scores",
    "avss_scores",
    "binary_frame_f_curves",
    "binary_frame_iou",
    "binary_scores_batch_protocol",
    "binary_scores_dataset_level",
    "foreground_rate",
    "model_output_request",
]
