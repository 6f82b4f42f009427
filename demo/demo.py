#!/usr/bin/env python
"""SelM demo: segment the sounding objects of one clip and draw them.

    python demo/demo.py --config-file configs/ms3/selm_pvt_v2_b5.yaml \
        --input clip_frames/ --audio clip.wav --output out/ --opts MODEL.WEIGHTS model.pth

``--input`` is a folder of frames (one per second of audio, sorted by name) or a video file
(one frame is taken per second, as AVSBench's preprocessing does). The clip is trimmed or
padded to the config's length as the data pipeline does
(``selm_d2.engine.predictor.fit_clip_length``).
Writes ``frame_<k>.png`` overlays, ``mask_<k>.png`` label maps, ``overlay.mp4`` with the clip's
sound when ffmpeg is installed (the ``[app]`` extra, as for the web demo), and with
``--heatmaps`` CLEVER's hit maps (pixels assigned to the audio token) as ``heatmap_<layer>_<k>.png``.
"""
import argparse
import logging
import os
import tempfile

import numpy as np
from media import encode_video, ffmpeg_exe

from detectron2.utils.logger import setup_logger

from selm_d2.engine.predictor import (
    AVSPredictor,
    clip_dict,
    extract_video_frames,
    fit_clip_length,
    list_frames,
    metadata_for,
    setup_cfg,
)
from selm_d2.utils import exit_on_user_error
from selm_d2.utils.visualizer import draw_clip, write_image_atomic


def get_parser():
    parser = argparse.ArgumentParser(description="SelM audio-visual segmentation demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, help="a folder of frames or a video file")
    parser.add_argument("--audio", required=True, help="the clip's audio (wav/flac)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--heatmaps", action="store_true", help="also draw CLEVER's hit maps")
    parser.add_argument("--fps", type=float, default=1.0,
                        help="frame rate of overlay.mp4 (1: one frame per second of sound, "
                             "in step with it)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run even when MODEL.WEIGHTS is empty (an untrained model)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the traceback of config and data errors too")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def write_video(frames_rgb, path, audio, fps):
    """Encode the overlays with the clip's sound as MP4 when ffmpeg is installed; returns
    whether it did."""
    try:
        ffmpeg_exe()
    except RuntimeError as e:
        logging.getLogger("selm_d2").warning("no overlay.mp4: %s", e)
        return False
    encode_video(frames_rgb, path, audio=audio, fps=fps)
    return True


def run(args):
    cfg = setup_cfg(args.config_file, args.opts, hit_maps=args.heatmaps)
    predictor = AVSPredictor(cfg, allow_random_weights=args.allow_random_weights)
    metadata = metadata_for(cfg)
    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isdir(args.input):
            frame_paths = list_frames(args.input)
        else:
            frame_paths = extract_video_frames(args.input, cfg.INPUT.AVS.NUM_FRAMES, tmp)
        model_frames, seconds = fit_clip_length(frame_paths, cfg)
        output = predictor(clip_dict(model_frames, args.audio, clip_id=os.path.basename(args.input.rstrip("/"))))
        drawn = draw_clip(frame_paths[:seconds], output, metadata)
    for k, frame in enumerate(drawn):
        write_image_atomic(os.path.join(args.output, "frame_{}.png".format(k)), frame["overlay"])
        mask = frame["labels"].astype(np.uint8)
        if mask.max() <= 1:
            mask = mask * 255
        write_image_atomic(os.path.join(args.output, "mask_{}.png".format(k)), mask)
        for level, heat in frame["heatmaps"].items():
            write_image_atomic(os.path.join(args.output, "heatmap_{}_{}.png".format(level, k)), heat)
    overlays = [frame["overlay"] for frame in drawn]
    wrote_video = write_video(overlays, os.path.join(args.output, "overlay.mp4"), args.audio,
                              args.fps)
    return {"frames": len(overlays), "video": wrote_video}


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="selm_d2")
    with exit_on_user_error(args.verbose):
        result = run(args)
    print("wrote {} overlay(s){} to {}".format(
        result["frames"], " and overlay.mp4" if result["video"] else "", args.output))


if __name__ == "__main__":
    main()
