"""python -m selm_d2.data.check_avsbench on good and broken trees."""
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from selm_d2.data.check_avsbench import main
from selm_d2.data.datasets import register_avs_dataset
from test_audio import truncated_wav
from test_datasets import make_avss_tree, make_ms3_tree, make_s4_tree, write_image, write_wav

S4_CLIPS = [("a1", "dog_barking", "train"), ("b2", "race_car", "val"),
            ("c3", "race_car", "test")]
AVSS_CLIPS = [("s_1", "v1s", "train"), ("m_1", "v1m", "val"), ("v_1", "v2", "test")]


def make_release(root):
    """$DETECTRON2_DATASETS-like folder with S4, MS3 and AVSS."""
    make_s4_tree(os.path.join(root, "avsbench_object"), S4_CLIPS)
    make_ms3_tree(os.path.join(root, "avsbench_object"), [("m1", "train"), ("m2", "val"),
                                                          ("m3", "test")])
    make_avss_tree(os.path.join(root, "avsbench_semantic"), AVSS_CLIPS)
    return root


def test_good_tree_passes(tmp_path, capsys):
    root = make_release(str(tmp_path))
    assert main([root, "--deep"]) == 0
    out = capsys.readouterr().out
    assert "No problems found" in out
    for layout in ("avsbench_s4", "avsbench_ms3", "avss"):
        assert "{} train".format(layout) in out  # one table row per layout and split


def test_broken_tree_fails_and_names_paths(tmp_path, capsys):
    root = make_release(str(tmp_path))
    s4 = os.path.join(root, "avsbench_object", "Single-source", "s4_data")
    missing_mask = os.path.join(s4, "gt_masks", "val", "race_car", "b2", "b2_3.png")
    os.remove(missing_mask)
    corrupt_wav = os.path.join(s4, "audio_wav", "test", "race_car", "c3.wav")
    with open(corrupt_wav, "wb") as f:
        f.write(b"RIFF....WAVEjunk")
    avss = os.path.join(root, "avsbench_semantic")
    bad_colour = os.path.join(avss, "v2", "v_1", "labels_rgb", "4.png")
    write_image(bad_colour, np.full((24, 32, 3), (12, 34, 56), np.uint8))
    wrong_size = os.path.join(avss, "v1m", "m_1", "labels_rgb", "1.png")
    write_image(wrong_size, np.zeros((10, 10, 3), np.uint8))
    # Frames after the first are checked too: one missing, one of another size.
    missing_frame = os.path.join(s4, "visual_frames", "val", "race_car", "b2", "b2_4.png")
    os.remove(missing_frame)
    small_frame = os.path.join(avss, "v1m", "m_1", "frames", "3.jpg")
    write_image(small_frame, np.zeros((10, 10, 3), np.uint8))

    assert main([root]) == 1  # header-level checks see the missing files and the sizes
    out = capsys.readouterr().out
    assert missing_mask in out and wrong_size in out and corrupt_wav not in out
    assert missing_frame in out and small_frame in out

    assert main([os.path.join(root, "avsbench_object"), "--layout", "avsbench_s4",
                 "--splits", "train", "test", "--deep"]) == 1
    out = capsys.readouterr().out
    assert corrupt_wav in out and missing_mask not in out  # val not requested

    assert main([avss, "--deep"]) == 1
    out = capsys.readouterr().out
    assert bad_colour in out and "(12, 34, 56)" in out


def test_bad_clip_folder_and_missing_root(tmp_path, capsys):
    avss = make_avss_tree(str(tmp_path / "sem"), AVSS_CLIPS)
    os.remove(os.path.join(avss, "v2", "v_1", "frames", "7.jpg"))
    assert main([avss]) == 1
    assert os.path.join("v2", "v_1") in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 1
    assert "datasets/README.md" in capsys.readouterr().out


def test_command_line_entry_point(tmp_path):
    root = make_s4_tree(str(tmp_path), S4_CLIPS[:1])
    result = subprocess.run(
        [sys.executable, "-m", "selm_d2.data.check_avsbench", root, "--splits", "train"],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
        cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "avsbench_s4 train" in result.stdout


# ------------------------------------------------------------------ bad input (issue rows)
def test_audio_cut_short_is_reported(tmp_path, capsys):
    """A wav truncated to 0.05 s with its header intact, and a 2 s wav for a 5 s clip."""
    root = make_s4_tree(str(tmp_path), S4_CLIPS)
    wav = os.path.join(root, "Single-source", "s4_data", "audio_wav", "{}", "race_car", "{}.wav")
    cut = truncated_wav(wav.format("val", "b2"), 0.05)
    two_seconds = write_wav(wav.format("test", "c3"), seconds=2.0, rate=48000)
    assert main([root, "--deep"]) == 1
    out = capsys.readouterr().out
    assert "[short_audio]" in out
    line = next(x for x in out.splitlines() if cut in x)
    assert "0.05 s" in line and "0 whole" in line and "5 frames" in line
    line = next(x for x in out.splitlines() if two_seconds in x)
    assert "2.00 s" in line and "2 whole" in line
    assert "1 problem" not in out and "2 problem(s) found" in out


def test_absent_splits_are_not_problems(tmp_path, capsys):
    """A tree (and metadata) with the test split only."""
    root = str(tmp_path)
    make_s4_tree(os.path.join(root, "avsbench_object"), [("c3", "race_car", "test")])
    make_ms3_tree(os.path.join(root, "avsbench_object"), [("m3", "test")])
    make_avss_tree(os.path.join(root, "avsbench_semantic"), [("v_1", "v2", "test")])
    assert main([root, "--deep"]) == 0
    out = capsys.readouterr().out
    assert "No problems found" in out and "--splits test" in out
    for layout in ("avsbench_s4", "avsbench_ms3", "avss"):
        assert "{} train: absent".format(layout) in out and "{} val: absent".format(layout) in out
    assert main([root, "--splits", "test", "--deep"]) == 0
    assert ": absent" not in capsys.readouterr().out
    assert main([root, "--splits", "train"]) == 1  # nothing at all to check
    assert "every requested split is absent" in capsys.readouterr().out


def test_garbage_first_frame_is_found_and_named_at_load(tmp_path, capsys):
    root = make_s4_tree(str(tmp_path), S4_CLIPS)
    frame = os.path.join(root, "Single-source", "s4_data", "visual_frames", "val", "race_car",
                         "b2", "b2_1.png")
    with open(frame, "wb") as f:
        f.write(np.random.RandomState(0).bytes(500))
    assert main([root]) == 1
    out = capsys.readouterr().out
    assert "[corrupt_images]" in out and frame in out
    register_avs_dataset("t_garbage_frame", root, "avsbench_s4", split="val")
    with pytest.raises(ValueError) as e:
        DatasetCatalog.get("t_garbage_frame")
    assert "'b2'" in str(e.value) and frame in str(e.value) and "check_avsbench" in str(e.value)
    # the other splits still load
    register_avs_dataset("t_garbage_frame_test", root, "avsbench_s4", split="test")
    assert [d["clip_id"] for d in DatasetCatalog.get("t_garbage_frame_test")] == ["c3"]
