"""Drawing SelM's predictions with detectron2's Visualizer: mask overlays and CLEVER hit maps."""
import math

import cv2
import numpy as np
import tqdm

from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer

from .atomic import atomic_path

__all__ = ["draw_prediction", "draw_heatmap", "finest_level", "draw_clip", "enlarge",
           "write_image_atomic"]

# The colour of "sounding object" for binary models (detectron2 palette's first warm colour).
_BINARY_COLOR = (1.0, 0.35, 0.1)


def draw_prediction(frame_rgb, label_map, metadata):
    """Overlay one frame's labels; returns an RGB uint8 image.

    Binary models draw one colour; semantic (AVSS) models draw class colours and names.
    Background (label 0) is never drawn.
    """
    vis = Visualizer(frame_rgb, metadata, instance_mode=ColorMode.IMAGE)
    classes = metadata.get("stuff_classes", None)
    if classes is None or len(classes) <= 2:
        if label_map.any():
            # No label text: one class, and text would cover small frames.
            vis.draw_binary_mask(label_map.astype(np.uint8), color=_BINARY_COLOR, alpha=0.5)
        return vis.output.get_image()
    # detectron2 skips labels >= len(stuff_classes): hide the background that way.
    shown = np.where(label_map == 0, 255, label_map)
    vis.draw_sem_seg(shown, alpha=0.5)
    return vis.output.get_image()


def draw_heatmap(frame_rgb, weight_map):
    """Blend a [h, w] map (a CLEVER hit map: the pixels assigned to the audio token) over the
    frame as a JET heat map, stretched to the map's own range."""
    height, width = frame_rgb.shape[:2]
    resized = cv2.resize(weight_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    span = resized.max() - resized.min()
    norm = (resized - resized.min()) / span if span > 0 else np.zeros_like(resized)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (0.5 * frame_rgb + 0.5 * heat).astype(np.uint8)


def finest_level(hit_maps):
    """The decoder layer whose hit maps have the most cells (the most detailed map)."""
    return max(hit_maps, key=lambda level: hit_maps[level][0].numel())


def draw_clip(frame_paths, output, metadata):
    """Draw a predicted clip frame by frame.

    Args:
        frame_paths: the clip's frames; the first ``len(frame_paths)`` predicted frames are drawn.
        output: `AVSPredictor` output of the clip.
        metadata: the model's class names and colours (`metadata_for`).
    Returns:
        list, per frame, of dicts: "frame" (RGB uint8 [H, W, 3]), "overlay" (the prediction
        drawn on it), "labels" (int64 [H, W]: 1 = sounding, or the AVSS class) and "heatmaps"
        ({layer: CLEVER hit map drawn on the frame}; empty without hit maps).
    """
    labels = output["sem_seg_labels"].cpu().numpy()
    maps = output.get("hit_maps", {})
    drawn = []
    for k, path in enumerate(tqdm.tqdm(frame_paths, desc="drawing", unit="frame")):
        frame = read_image(path, format="RGB")
        drawn.append({
            "frame": frame,
            "overlay": draw_prediction(frame, labels[k], metadata),
            "labels": labels[k],
            "heatmaps": {level: draw_heatmap(frame, m[k].float().cpu().numpy()) for level, m in maps.items()},
        })
    return drawn


def enlarge(image, min_side):
    """Scale [H, W, ...] up by a whole factor, each pixel repeated (nearest neighbour), until
    the short side is >= min_side. Any dtype: label maps too, so outlines can be drawn on the
    enlarged frame instead of enlarging a drawing of a small one."""
    factor = math.ceil(min_side / min(image.shape[:2]))
    if factor <= 1:
        return image
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def write_image_atomic(path, image):
    """Write an RGB [H, W, 3] or single-channel [H, W] image so that a reader never sees a
    partial file."""
    bgr = image[:, :, ::-1] if image.ndim == 3 else image
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, np.ascontiguousarray(bgr)):
            raise OSError("could not write image {}".format(path))
