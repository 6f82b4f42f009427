#!/usr/bin/env python
"""SelM web demo: drop in a clip, hear it, and watch the sounding objects light up second by
second; then mute its sound, or swap in another, to see whether the model still segments
them (the paper's auditory-illusion test).

    python demo/app.py --config-file configs/synth/ms3.yaml \
        --opts MODEL.WEIGHTS output/demo/selm/model_final.pth

Serves on http://127.0.0.1:7860 (``--host``, ``--port``). Needs the ``[app]`` extra
(``pip install -e .[app]``: gradio and imageio-ffmpeg). Inference is the command-line demo's
(selm_d2.engine.predictor): one frame per second, the clip trimmed or padded to the config's length.

Limits: each upload at most ``--max-upload-mb`` (50 MB); a clip needs at least 1 s of sound;
only its first ``INPUT.AVS.NUM_FRAMES`` seconds are segmented (5 for S4/MS3 configs, 10 for
AVSS).
"""
import argparse
import atexit
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List

import cv2
import numpy as np
from media import UploadError, encode_video, extract_audio

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

from selm_d2.data.audio import AudioError
from selm_d2.engine.predictor import (
    AVSPredictor,
    clip_dict,
    extract_video_frames,
    fit_clip_length,
    metadata_for,
    setup_cfg,
)
from selm_d2.utils import exit_on_user_error, file_name_key
from selm_d2.utils.visualizer import draw_clip, enlarge, finest_level

logger = logging.getLogger("selm_d2.app")

MIN_SOUND_S = 1.0  # one frame and one 0.96 s VGGish example
DEFAULT_MAX_UPLOAD_MB = 50
STRIP_TILE_PX = 128  # height of one picture of the per-second strip
VIDEO_MIN_SIDE_PX = 256  # smaller overlays (AVS-Synth: 64 px) are enlarged to be seen
# The illusion check: each pass runs the same frames with other sound.
PASSES = ("sound", "muted", "swapped")
PASS_TITLES = {"sound": "With its sound", "muted": "Muted (silence)", "swapped": "Swapped sound"}


@dataclass
class Clip:
    """An upload, ready to predict."""

    name: str  # the uploaded file's name
    frames: List[str]  # one frame per second, the clip's own seconds only
    model_frames: List[str]  # the frames given to the model (see predictor.fit_clip_length)
    sound: str  # the clip's sound as a wav file, at most the config's clip length


def _tile(image, height):
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    shrink = height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)


def _text(canvas, text, x, y):
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (40, 40, 40), 1, cv2.LINE_AA)


def draw_strip(drawn, level):
    """One picture of the clip: a column per second; rows frame, mask and the CLEVER hit map
    (pixels assigned to the audio token) of decoder layer `level`."""
    rows = [("frame", [f["frame"] for f in drawn]), ("mask", [f["overlay"] for f in drawn]),
            ("hit map", [f["heatmaps"][level] for f in drawn])]
    # Seconds are written below the pictures: the page draws its buttons over the top edge.
    gap, label_w, footer_h = 4, 84, 20
    tiles = [[_tile(image, STRIP_TILE_PX) for image in images] for _, images in rows]
    tile_w = tiles[0][0].shape[1]
    canvas = np.full((len(rows) * (STRIP_TILE_PX + gap) + footer_h, label_w + len(drawn) * (tile_w + gap), 3),
                     255, np.uint8)
    for r, ((name, _), row) in enumerate(zip(rows, tiles)):
        top = r * (STRIP_TILE_PX + gap)
        _text(canvas, name, 4, top + STRIP_TILE_PX // 2 + 5)
        for k, tile in enumerate(row):
            left = label_w + k * (tile_w + gap)
            canvas[top:top + STRIP_TILE_PX, left:left + tile.shape[1]] = tile
    for k in range(len(drawn)):
        _text(canvas, "{} s".format(k), label_w + k * (tile_w + gap) + tile_w // 2 - 10, canvas.shape[0] - 6)
    return canvas


def summarize(drawn, metadata):
    """Markdown: the area predicted sounding, and for semantic models the classes present."""
    labels = np.stack([f["labels"] for f in drawn])
    per_second = ", ".join("{:.1f}".format(100 * (second > 0).mean()) for second in labels)
    text = "Sounding-object area: **{:.2f} %** of the pixels (per second: {} %)".format(
        100 * (labels > 0).mean(), per_second)
    classes = metadata.get("stuff_classes", None)
    if classes is not None and len(classes) > 2:
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        present = ["{} ({:.1f} %)".format(classes[i], 100 * c / labels.size)
                   for c, i in sorted(zip(counts, ids), reverse=True)]
        text += "\n\nClasses present: " + (", ".join(present) or "none")
    return text


class SelMApp:
    """The page's work, without the page: read an upload, predict it with and without its
    sound, draw the results (`run`)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.seconds = cfg.INPUT.AVS.NUM_FRAMES
        self.predictor = AVSPredictor(cfg)
        self.metadata = metadata_for(cfg)
        self.work_root = tempfile.mkdtemp(prefix="selm_app_")
        atexit.register(shutil.rmtree, self.work_root, ignore_errors=True)
        self._last_work = None

    def _new_work_dir(self):
        # Gradio copies returned files into its own cache, so a request's files are not needed
        # once the next request starts (requests run one at a time).
        if self._last_work:
            shutil.rmtree(self._last_work, ignore_errors=True)
        self._last_work = tempfile.mkdtemp(dir=self.work_root)
        return self._last_work

    def _check_frames(self, paths):
        size = None
        for path in paths:
            try:
                shape = read_image(path).shape[:2]
            except (OSError, ValueError) as e:
                raise UploadError("Cannot read frame {} ({}). Upload PNG or JPEG images."
                                  .format(os.path.basename(path), e)) from e
            if size not in (None, shape):
                raise UploadError("Frame {} is {}x{} but the first frame is {}x{} (width x height): all "
                                  "frames of a clip must have one size.".format(
                                      os.path.basename(path), shape[1], shape[0], size[1], size[0]))
            size = shape
        return paths

    def read_clip(self, video, frames, audio, work):
        """The uploaded clip (a video, or frames plus a sound file) as a `Clip`.

        Raises:
            UploadError: a missing, unreadable, silent or too short upload.
        """
        if video and (frames or audio):
            raise UploadError("Give either a video or frames plus a sound file, not both: clear one of them.")
        if video:
            try:
                paths = extract_video_frames(video, self.seconds, work)
            except (FileNotFoundError, ValueError) as e:
                raise UploadError("Cannot read the frames of {} ({}). Upload an mp4, webm or avi video."
                                  .format(os.path.basename(video), e)) from e
            source = video
        elif frames and audio:
            paths = self._check_frames(sorted(frames, key=file_name_key)[:self.seconds])
            source = audio
        else:
            raise UploadError("Upload a video with sound, or frames (one per second) plus a wav/flac file.")
        model_frames, own = fit_clip_length(paths, self.cfg)
        sound = self.read_sound(source, os.path.join(work, "sound.wav"))
        return Clip(os.path.basename(source), paths[:own], model_frames, sound)

    def read_sound(self, source, wav):
        """The sound of a video or audio file as `wav`, at most the clip length; returns `wav`."""
        duration = extract_audio(source, wav, self.seconds)
        if duration < MIN_SOUND_S:
            raise UploadError("{} has {:.2f} s of sound; the demo needs at least {:.0f} s (one frame and "
                              "one 0.96 s audio example per second).".format(
                                  os.path.basename(source), duration, MIN_SOUND_S))
        return wav

    def predict(self, clip, sound, video_path):
        """One pass over the clip's frames with `sound` (a wav file; None: silence).

        Returns:
            dict: "video" (the overlays with `sound`), "strip" (RGB picture) and "summary"
            (Markdown).
        """
        inputs = clip_dict(clip.model_frames, sound or clip.sound, clip_id=clip.name)
        if sound is None:
            inputs["audio_override"] = "silence"
        output = self.predictor(inputs)
        drawn = draw_clip(clip.frames, output, self.metadata)
        overlays = [enlarge(f["overlay"], VIDEO_MIN_SIDE_PX) for f in drawn]
        return {"video": encode_video(overlays, video_path, audio=sound),
                "strip": draw_strip(drawn, finest_level(output["hit_maps"])),
                "summary": summarize(drawn, self.metadata)}

    def run(self, video, frames, audio, mute, swap, progress=lambda *args, **kwargs: None):
        """Segment an upload with its sound and, for the illusion check, also muted (`mute`)
        and/or with the sound of the file `swap`.

        Returns:
            (status Markdown, {pass name: `predict` result} for the passes run); a bad upload
            gives the message and no results.
        """
        work = self._new_work_dir()
        try:
            progress(0.0, desc="Reading the upload")
            clip = self.read_clip(video, frames, audio, work)
            passes = [("sound", clip.sound)]
            if mute:
                passes.append(("muted", None))
            if swap:
                passes.append(("swapped", self.read_sound(swap, os.path.join(work, "swapped.wav"))))
            results = {}
            for k, (name, sound) in enumerate(passes):
                progress(k / len(passes), desc="Segmenting: " + PASS_TITLES[name].lower())
                results[name] = self.predict(clip, sound, os.path.join(work, name + ".mp4"))
        except (UploadError, AudioError) as e:
            logger.info("bad upload: %s", e)
            return "**Could not segment this upload.** " + str(e), {}
        status = "Segmented {} s of {} (this model's clip length: {} s).".format(
            len(clip.frames), clip.name, self.seconds)
        return status, results


def example_clips(cfg, count):
    """The first `count` clips of the config's test set, if it is on disk: {clip id: [frames, sound]}."""
    if not count or not len(cfg.DATASETS.TEST):
        return {}
    try:
        clips = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    except FileNotFoundError as e:
        logger.info("no example clips: %s", e)
        return {}
    return {clip["clip_id"]: [clip["file_names"], clip["audio_file_name"]] for clip in clips[:count]}


def build_page(app, examples=None):
    """The page over a `SelMApp`; `examples` ({label: [frames, sound file]}) fill the inputs."""
    import gradio as gr

    avs = app.cfg.INPUT.AVS
    with gr.Blocks(title="SelM audio-visual segmentation", analytics_enabled=False,
                   delete_cache=(600, 3600)) as page:
        gr.Markdown(
            "## SelM: segment what sounds\n"
            "Upload a clip. SelM takes one frame per second and segments the objects making the "
            "sound. Tick **Mute** or give a **swapped** sound to re-run the same frames without "
            "their own sound: a model that segments by sound, not by look, changes its answer.\n\n"
            "Model: `{}` ({} s clips; longer uploads are trimmed, shorter ones padded). "
            "At least {:.0f} s of sound.".format(app.cfg.MODEL.WEIGHTS, avs.NUM_FRAMES, MIN_SOUND_S))
        with gr.Row(equal_height=False):
            with gr.Column():
                video = gr.Video(label="Video with sound", sources=["upload"], height=260,
                                 elem_id="video-input")
            with gr.Column():
                frames = gr.File(label="…or its frames, one per second (in name order)",
                                 file_count="multiple", file_types=["image"], height=140,
                                 elem_id="frames-input")
                audio = gr.Audio(label="…plus its sound (wav/flac)", type="filepath", sources=["upload"],
                                 elem_id="audio-input")
            with gr.Column():
                mute = gr.Checkbox(label="Mute (illusion check): also run the same frames in silence",
                                   elem_id="mute")
                swap = gr.Audio(label="Swap audio (illusion check): also run them with this sound",
                                type="filepath", sources=["upload"], elem_id="swap-input")
                button = gr.Button("Segment", variant="primary", elem_id="run")
        # Also where progress shows while the results are still hidden.
        status = gr.Markdown("Upload a clip, then press **Segment**.", min_height=70, elem_id="status")
        outputs = [status]
        with gr.Row(equal_height=False):
            for name in PASSES:
                with gr.Column(visible=False) as column:
                    gr.Markdown("### " + PASS_TITLES[name])
                    outputs += [
                        column,
                        gr.Video(label="Overlay", interactive=False, height=300, elem_id=name + "-video"),
                        # the picture labels its rows and seconds itself
                        gr.Image(show_label=False, format="png", interactive=False,
                                 buttons=["download", "fullscreen"], elem_id=name + "-strip"),
                        gr.Markdown(elem_id=name + "-summary"),
                    ]
        if examples:
            gr.Examples(list(examples.values()), inputs=[frames, audio], example_labels=list(examples),
                        label="Test clips of {} (frames + sound)".format(app.cfg.DATASETS.TEST[0]))

        def on_click(video, frames, audio, mute, swap, progress=gr.Progress(track_tqdm=True)):
            message, results = app.run(video, frames, audio, mute, swap, progress)
            values = [message]
            for name in PASSES:
                result = results.get(name, {})
                values += [gr.Column(visible=bool(result)), result.get("video"), result.get("strip"),
                           result.get("summary", "")]
            return values

        button.click(on_click, inputs=[video, frames, audio, mute, swap], outputs=outputs,
                     show_progress_on=[status], concurrency_limit=1)
    return page


def get_parser():
    parser = argparse.ArgumentParser(description="SelM audio-visual segmentation web demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest file accepted per upload")
    parser.add_argument("--examples", type=int, default=3,
                        help="offer this many clips of the config's test set as examples, when on disk")
    parser.add_argument("--verbose", action="store_true",
                        help="show the traceback of config and data errors too")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="selm_d2")
    with exit_on_user_error(args.verbose):
        cfg = setup_cfg(args.config_file, args.opts, hit_maps=True)
        app = SelMApp(cfg)
        examples = example_clips(cfg, args.examples)
    page = build_page(app, examples)
    page.queue().launch(server_name=args.host, server_port=args.port,
                        max_file_size="{}mb".format(args.max_upload_mb))


if __name__ == "__main__":
    main()
