"""demo/demo.py writes overlays, label maps, heat maps and a video for binary and AVSS models."""
import glob
import os
import re
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import REPO_ROOT
from selm_d2 import add_selm_config
from selm_d2.data.synthetic import generate
from selm_d2.utils import file_name_key

sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
import demo  # noqa: E402
import media  # noqa: E402
from selm_d2.engine import predictor  # noqa: E402


@pytest.fixture(scope="module")
def synth_clip(tmp_path_factory):
    """One generated 5-frame 32x32 MS3-layout clip: (frames folder, wav path)."""
    root = str(tmp_path_factory.mktemp("demo_synth"))
    generate(root, layouts=("ms3",), clips_per_split={"train": 0, "val": 0, "test": 1}, size=32,
             seed=1, progress=False)
    frames = sorted(glob.glob(os.path.join(root, "Multi-sources", "ms3_data", "visual_frames", "*")))[0]
    wav = glob.glob(os.path.join(root, "Multi-sources", "ms3_data", "audio_wav", "test", "*.wav"))[0]
    return frames, wav


def _weights(config, tmp_path):
    """A checkpoint of the config's (untrained) model, written as train_net.py would."""
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "synth", config))
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    return str(tmp_path / "model.pth")


def _run(config, weights, frames, wav, out):
    return demo.main(["--config-file", os.path.join(REPO_ROOT, "configs", "synth", config),
                      "--input", frames, "--audio", wav, "--output", str(out), "--heatmaps",
                      "--opts", "MODEL.WEIGHTS", weights])


@pytest.mark.parametrize("config,max_label", [("ms3.yaml", 255), ("avss.yaml", 6)])
def test_demo_writes_expected_files(config, max_label, synth_clip, tmp_path):
    frames, wav = synth_clip
    out = tmp_path / "out"
    _run(config, _weights(config, tmp_path), frames, wav, out)
    for k in range(5):
        overlay = np.asarray(Image.open(out / "frame_{}.png".format(k)))
        assert overlay.shape == (32, 32, 3)
        mask = np.asarray(Image.open(out / "mask_{}.png".format(k)))
        assert mask.shape == (32, 32) and mask.max() <= max_label
        # one hit map per CLEVER layer
        assert len(glob.glob(str(out / "heatmap_*_{}.png".format(k)))) == 3
    # The overlay video carries the clip's sound, one frame per second of it (ffmpeg comes
    # with the [app] extra that `make install` installs).
    duration = media.extract_audio(str(out / "overlay.mp4"), str(tmp_path / "sound.wav"), 10)
    assert duration == pytest.approx(5.0, abs=0.1)
    assert not glob.glob(str(out / "*.tmp*"))


def test_demo_reads_a_video_file(synth_clip, tmp_path):
    frames, wav = synth_clip
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 4, (32, 32))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for path in sorted(glob.glob(os.path.join(frames, "*.png")), key=file_name_key):
        for _ in range(4):  # 4 fps: one second per frame
            writer.write(cv2.imread(path))
    writer.release()
    out = tmp_path / "out"
    _run("ms3.yaml", _weights("ms3.yaml", tmp_path), video, wav, out)
    assert sorted(os.listdir(out)).count("frame_4.png") == 1


def test_demo_missing_frames_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no frames"):
        predictor.list_frames(str(tmp_path))


def test_demo_refuses_random_weights_unless_asked(synth_clip, tmp_path, capsys, monkeypatch):
    frames, wav = synth_clip
    args = ["--config-file", os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml"),
            "--input", frames, "--audio", wav, "--output", str(tmp_path / "out")]
    monkeypatch.delenv("SELM_D2_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:  # a user's mistake: the message, no traceback
        demo.main(args)
    assert exit_info.value.code == 2
    assert re.search("ERROR: MODEL.WEIGHTS is empty.*--allow-random-weights", capsys.readouterr().err)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        demo.main(args + ["--verbose"])
    assert not (tmp_path / "out" / "frame_0.png").exists()
    demo.main(args + ["--allow-random-weights"])
    assert (tmp_path / "out" / "frame_0.png").exists()


def _synth_cfg(config):
    return predictor.setup_cfg(os.path.join(REPO_ROOT, "configs", "synth", config), [])


def test_clip_length_follows_the_data_pipeline():
    ms3, avss = _synth_cfg("ms3.yaml"), _synth_cfg("avss.yaml")  # 5 frames; 10 frames, padded
    frames = ["{}.png".format(k) for k in range(12)]
    assert predictor.fit_clip_length(frames, ms3) == (frames[:5], 5)
    assert predictor.fit_clip_length(frames, avss) == (frames[:10], 10)
    # short clips: repeated last frame (as "repeat_last" audio) unless the mapper pads
    assert predictor.fit_clip_length(frames[:3], ms3) == (frames[:3] + [frames[2]] * 2, 3)
    assert predictor.fit_clip_length(frames[:3], avss) == (frames[:3], 3)


def test_video_frames_stop_where_the_video_ends(tmp_path):
    video = str(tmp_path / "short.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 4, (32, 32))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for k in range(14):  # 3.5 s at 4 fps; frame k has grey level 10 * k
        writer.write(np.full((32, 32, 3), 10 * k, np.uint8))
    writer.release()
    paths = predictor.extract_video_frames(video, 5, str(tmp_path))
    # seconds 0-2 at 15/16 s (frames 3, 7, 11); the partial second 3 gets the last frame (13)
    levels = [int(cv2.imread(p).mean() / 10 + 0.5) for p in paths]
    assert levels == [3, 7, 11, 13]
