#!/usr/bin/env python
"""SelM demo: segment the sounding objects of one clip and draw them.

    python demo/demo.py --config-file configs/ms3/selm_pvt_v2_b5.yaml \
        --input clip_frames/ --audio clip.wav --output out/ --opts MODEL.WEIGHTS model.pth

``--input`` is a folder of frames (one per second of audio, sorted by name) or a video file
(one frame is taken per second, as AVSBench's preprocessing does). Writes ``frame_<k>.png``
overlays, ``mask_<k>.png`` label maps, ``overlay.mp4`` when OpenCV can encode it, and with
``--heatmaps`` the BCSM selection maps (paper Fig. 5) as ``heatmap_<level>_<k>.png``.
"""
import argparse
import glob
import os
import re
import sys
import tempfile

import cv2
import numpy as np
import tqdm

from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

sys.path.insert(1, os.path.join(sys.path[0], ".."))
from selm_d2 import add_selm_config  # noqa: E402

from predictor import (  # noqa: E402
    AVSPredictor,
    clip_dict,
    draw_heatmap,
    draw_prediction,
    metadata_for,
    write_image_atomic,
)

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def get_parser():
    parser = argparse.ArgumentParser(description="SelM audio-visual segmentation demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, help="a folder of frames or a video file")
    parser.add_argument("--audio", required=True, help="the clip's audio (wav/flac)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--heatmaps", action="store_true", help="also draw BCSM selection maps")
    parser.add_argument("--fps", type=float, default=1.0, help="frame rate of overlay.mp4")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run even when MODEL.WEIGHTS is empty (an untrained model)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.heatmaps:
        cfg.MODEL.SELM.RETURN_SELECTION_MAPS = True
    import torch

    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _natural_key(path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def list_frames(folder):
    frames = sorted((p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(_IMAGE_EXTS)),
                    key=_natural_key)
    if not frames:
        raise FileNotFoundError("no frames ({}) in {}".format(", ".join(_IMAGE_EXTS), folder))
    return frames


def extract_video_frames(video, num_frames, out_dir):
    """One frame per second, at 15/16 of each second as AVSBench's preprocessing samples."""
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise FileNotFoundError("cannot open video {} (is it a video file OpenCV can decode?)".format(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    paths = []
    for second in range(num_frames):
        index = min(int(second * fps + 15 / 16 * fps), max(total - 1, 0))
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        if not ok:
            break
        path = os.path.join(out_dir, "{}.png".format(second))
        cv2.imwrite(path, frame)
        paths.append(path)
    cap.release()
    if not paths:
        raise ValueError("could not read any frame from {}".format(video))
    return paths


def write_video(frames_rgb, path, fps):
    """Encode overlays as MP4 when OpenCV has an encoder; returns whether it did."""
    height, width = frames_rgb[0].shape[:2]
    tmp = path + ".tmp.mp4"
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        return False
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    if not os.path.getsize(tmp):
        os.remove(tmp)
        return False
    os.replace(tmp, path)
    return True


def run(args):
    cfg = setup_cfg(args)
    predictor = AVSPredictor(cfg, allow_random_weights=args.allow_random_weights)
    metadata = metadata_for(cfg)
    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isdir(args.input):
            frame_paths = list_frames(args.input)
        else:
            frame_paths = extract_video_frames(args.input, cfg.INPUT.AVS.NUM_FRAMES, tmp)
        output = predictor(clip_dict(frame_paths, args.audio, clip_id=os.path.basename(args.input.rstrip("/"))))
        labels = output["sem_seg_labels"].cpu().numpy()
        overlays = []
        for k, path in enumerate(tqdm.tqdm(frame_paths, desc="drawing", unit="frame")):
            frame = read_image(path, format="RGB")
            overlay = draw_prediction(frame, labels[k], metadata)
            overlays.append(overlay)
            write_image_atomic(os.path.join(args.output, "frame_{}.png".format(k)), overlay)
            mask = labels[k].astype(np.uint8)
            if mask.max() <= 1:
                mask = mask * 255
            write_image_atomic(os.path.join(args.output, "mask_{}.png".format(k)), mask)
            for level, maps in output.get("selection_maps", {}).items():
                heat = draw_heatmap(frame, maps[k].float().cpu().numpy())
                write_image_atomic(os.path.join(args.output, "heatmap_{}_{}.png".format(level, k)), heat)
    wrote_video = write_video(overlays, os.path.join(args.output, "overlay.mp4"), args.fps)
    return {"frames": len(overlays), "video": wrote_video}


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="selm_d2")
    result = run(args)
    print("wrote {} overlay(s){} to {}".format(
        result["frames"], " and overlay.mp4" if result["video"] else "", args.output))


if __name__ == "__main__":
    main()
