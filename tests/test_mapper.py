"""AVSClipDatasetMapper: clip-consistent augmentation, padding, flags, audio, errors."""
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from selm_d2.config import add_selm_config
from selm_d2.data.audio import load_audio_examples, silent_examples
from selm_d2.data.dataset_mapper import AVSClipDatasetMapper
from test_datasets import (  # tree writers shared by the data tests
    FRAME_H, FRAME_W, binary_mask, frame_array, load, make_avss_tree, make_s4_tree, write_image,
    write_wav,
)


def mapper(is_train=False, **kwargs):
    args = dict(size=16, crop="center", random_flip=False, scale_range=(1.0, 1.0), num_frames=5,
                pad_to_frames=0, audio_source="auto", short_audio_policy="repeat_last",
                sample_rate=16000)
    args.update(kwargs)
    return AVSClipDatasetMapper(is_train, **args)


def ramp_clip(tmp_path, count=5, height=16, width=40, name="ramp"):
    """Frames whose red channel = 5 * column and AVSS index masks = column // 4 + 1 (and
    green = frame index), so a crop offset and a flip can be read back from both."""
    columns = np.arange(width)
    files, masks = [], []
    for t in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = 5 * columns
        frame[..., 1] = 20 * t
        files.append(write_image(str(tmp_path / name / "{}.png".format(t)), frame))
        label = np.broadcast_to(columns // 4 + 1, (height, width))
        masks.append(write_image(str(tmp_path / name / "m{}.png".format(t)), label, "L"))
    audio = write_wav(str(tmp_path / name / "audio.wav"), seconds=count)
    return {"clip_id": name, "file_names": files, "sem_seg_file_names": masks,
            "mask_format": "avss_index", "audio_file_name": audio, "audio_log_mel_file": None,
            "height": height, "width": width}


def test_one_random_crop_and_flip_per_clip(tmp_path):
    clip = ramp_clip(tmp_path)
    m = mapper(is_train=True, crop="random", random_flip=True)
    seen = set()
    for seed in range(10):
        np.random.seed(seed)
        out = m(clip)
        image, sem_seg = out["image"].numpy(), out["sem_seg"].numpy()
        assert image.shape == (5, 3, 16, 16) and sem_seg.shape == (5, 16, 16)
        column = image[:, 0, 0, :].astype(int) // 5  # source column of each output column
        flipped = column[0, 0] > column[0, -1]
        seen.add((int(column[0].min()), bool(flipped)))
        for t in range(5):
            np.testing.assert_array_equal(column[t], column[0])  # same crop/flip every frame
            np.testing.assert_array_equal(image[t, 1], 20 * t)  # frames keep their order
            np.testing.assert_array_equal(sem_seg[t, 0], column[0] // 4 + 1)  # masks follow
        assert np.abs(np.diff(column[0])).max() == 1  # a crop, not a resize
    offsets = {offset for offset, _ in seen}
    assert len(offsets) > 1 and {flip for _, flip in seen} == {True, False}


def test_center_crop_train_and_resize_test(tmp_path):
    clip = ramp_clip(tmp_path)
    out = mapper(is_train=True)(clip)
    column = out["image"][0, 0, 0].numpy().astype(int) // 5
    np.testing.assert_array_equal(column, np.arange(12, 28))  # (40 - 16) / 2 = 12
    assert (out["height"], out["width"]) == (16, 40)

    test_out = mapper()(clip)
    assert test_out["image"].shape == (5, 3, 16, 16)
    labels = test_out["sem_seg"].unique().tolist()
    assert set(labels) <= set(range(1, 11))  # nearest: no interpolated labels


def test_scale_below_one_pads_to_size(tmp_path):
    clip = ramp_clip(tmp_path)
    np.random.seed(0)
    out = mapper(is_train=True, size=16, scale_range=(0.5, 0.5))(clip)
    assert out["image"].shape == (5, 3, 16, 16)
    assert (out["sem_seg"][:, 8:] == 255).all() and (out["image"][:, :, 8:] == 0).all()
    assert (out["sem_seg"][:, :8] != 255).all()


def test_s4_train_clip_flags_and_ignore(tmp_path):
    root = make_s4_tree(str(tmp_path), [("a1", "dog_barking", "train")])
    (clip,) = load("t_map_s4", root, "avsbench_s4", split="train")
    out = mapper(size=FRAME_W)(clip)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (5, 3, FRAME_W, FRAME_W)
    assert out["sem_seg"].dtype == torch.int64 and out["audio"].dtype == torch.float32
    assert out["audio"].shape == (5, 1, 96, 64)
    assert out["frame_mask_flags"].tolist() == [True, False, False, False, False]
    assert out["frame_valid"].tolist() == [True] * 5
    assert set(out["sem_seg"][0].unique().tolist()) == {0, 1}
    assert (out["sem_seg"][1:] == 255).all()
    for key in ("clip_id", "file_names", "sem_seg_file_names", "mask_format"):
        assert out[key] == clip[key]
    assert (out["height"], out["width"]) == (FRAME_H, FRAME_W)
    np.testing.assert_allclose(out["audio"], load_audio_examples(clip["audio_file_name"], 5))


def test_avss_ten_frames_and_padding(tmp_path):
    root = make_avss_tree(str(tmp_path), [("a_v1", "v1m", "val"), ("a_v2", "v2", "val")])
    clips = {d["clip_id"]: d for d in load("t_map_avss", root, "avss")}
    m = mapper(num_frames=10, pad_to_frames=10, short_audio_policy="zero_pad")
    v2 = m(clips["a_v2"])
    assert v2["image"].shape == (10, 3, 16, 16) and v2["audio"].shape == (10, 1, 96, 64)
    assert v2["frame_valid"].all() and v2["frame_mask_flags"].all()
    v1 = m(clips["a_v1"])
    assert v1["image"].shape == (10, 3, 16, 16)
    assert v1["frame_valid"].tolist() == [True] * 5 + [False] * 5
    assert v1["frame_mask_flags"].tolist() == [True] * 5 + [False] * 5
    assert (v1["sem_seg"][5:] == 255).all() and (v1["image"][5:] == 0).all()
    assert (v1["audio"][5:] == 0).all() and (v1["audio"][:5] != 0).any()
    assert v1["sem_seg"][:5].max() <= 70 and (v1["sem_seg"][:5] > 0).any()

    with pytest.raises(ValueError, match="a_v1.*PAD_TO_FRAMES"):
        mapper(num_frames=10)(clips["a_v1"])
    with pytest.raises(ValueError, match="a_v2.*NUM_FRAMES is 5"):
        mapper(num_frames=5, pad_to_frames=10)(clips["a_v2"])


def test_clips_of_different_sizes_map_to_one_size(tmp_path):
    small = ramp_clip(tmp_path, height=16, width=40, name="small")
    large = ramp_clip(tmp_path, height=30, width=24, name="large")
    for is_train in (True, False):
        m = mapper(is_train=is_train, size=12)
        a, b = m(small), m(large)
        assert a["image"].shape == b["image"].shape == (5, 3, 12, 12)
        assert (b["height"], b["width"]) == (30, 24)


def test_missing_files_are_named(tmp_path):
    clip = ramp_clip(tmp_path)
    for key, index, error in (("file_names", 3, FileNotFoundError),
                              ("sem_seg_file_names", 2, FileNotFoundError)):
        broken = dict(clip, **{key: list(clip[key])})
        broken[key][index] = str(tmp_path / "gone" / "x.png")
        with pytest.raises(error, match=os.path.join("gone", "x.png")):
            mapper()(broken)
    broken = dict(clip, audio_file_name=str(tmp_path / "gone.wav"))
    with pytest.raises(ValueError, match="gone.wav"):
        mapper()(broken)


def test_size_mismatches_are_named(tmp_path):
    clip = ramp_clip(tmp_path)
    odd_mask = write_image(str(tmp_path / "odd_mask.png"), np.ones((16, 39), np.uint8), "L")
    with pytest.raises(ValueError, match="odd_mask.png"):
        mapper()(dict(clip, sem_seg_file_names=clip["sem_seg_file_names"][:4] + [odd_mask]))
    odd_frame = write_image(str(tmp_path / "odd_frame.png"), frame_array(0, 16, 39))
    with pytest.raises(ValueError, match="odd_frame.png.*same size"):
        mapper()(dict(clip, file_names=clip["file_names"][:4] + [odd_frame]))


def test_audio_sources_and_silence_override(tmp_path):
    clip = ramp_clip(tmp_path)
    out = mapper()(dict(clip, audio_override="silence"))
    torch.testing.assert_close(out["audio"], silent_examples(5))
    with pytest.raises(FileNotFoundError, match="log_mel"):
        mapper(audio_source="log_mel")(clip)

    log_mel = torch.randn(5, 1, 96, 64)
    pkl = str(tmp_path / "ramp" / "audio.pkl")  # pairs with ramp/audio.wav
    with open(pkl, "wb") as f:
        pickle.dump(log_mel, f)
    with_pkl = dict(clip, audio_log_mel_file=pkl)
    torch.testing.assert_close(mapper(audio_source="auto")(with_pkl)["audio"], log_mel)
    wav = mapper(audio_source="wav")(with_pkl)["audio"]
    torch.testing.assert_close(wav, load_audio_examples(clip["audio_file_name"], 5))
    # Swapping in another clip's wav (illusion evaluation) must not keep the stale pickle.
    other = write_wav(str(tmp_path / "other.wav"), seconds=2)
    swapped = mapper(audio_source="auto")(dict(with_pkl, audio_file_name=other))["audio"]
    torch.testing.assert_close(swapped, load_audio_examples(other, 5))
    with pytest.raises(FileNotFoundError, match="other.wav"):
        mapper(audio_source="log_mel")(dict(with_pkl, audio_file_name=other))


def test_from_config():
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.INPUT.AVS.SIZE = 32
    cfg.INPUT.AVS.RANDOM_FLIP = True
    cfg.INPUT.AVS.PAD_TO_FRAMES = 10
    m = AVSClipDatasetMapper(cfg, is_train=True)
    assert m.is_train and m.size == 32 and m.pad_to_frames == 10
    assert "RandomFlip" in str(m.augmentations)
    assert "RandomFlip" not in str(AVSClipDatasetMapper(cfg, is_train=False).augmentations)
    cfg.INPUT.AVS.CROP = "corner"
    with pytest.raises(ValueError, match="INPUT.AVS.CROP"):
        AVSClipDatasetMapper(cfg, is_train=True)


def test_binary_masks_follow_frames(tmp_path):
    # Foreground drawn into the frame itself: after mapping, mask == bright pixels.
    files, masks = [], []
    for t in range(5):
        mask = binary_mask(FRAME_H, FRAME_W)
        frame = np.stack([mask] * 3, -1)
        files.append(write_image(str(tmp_path / "{}.png".format(t)), frame))
        masks.append(write_image(str(tmp_path / "m{}.png".format(t)), mask))
    clip = {"clip_id": "b", "file_names": files, "sem_seg_file_names": masks,
            "mask_format": "binary", "audio_file_name": write_wav(str(tmp_path / "a.wav")),
            "audio_log_mel_file": None, "height": FRAME_H, "width": FRAME_W}
    np.random.seed(3)
    out = mapper(is_train=True, size=FRAME_H, crop="random", random_flip=True)(clip)
    np.testing.assert_array_equal((out["image"][:, 0] > 127).long(), out["sem_seg"])
