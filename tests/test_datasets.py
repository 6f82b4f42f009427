"""AVSBench S4/MS3/AVSS and manifest parsing, registration, and mask decoding.

Trees are written in the official layouts with small files; the genuine AVSBench metadata
files (fixture `avsbench_meta_dir`) check the CSV parsing. The tree writers are also used by
test_mapper.py and test_check_avsbench.py.
"""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import selm_d2.data.datasets  # noqa: F401  (registers the builtin names)
from selm_d2.data.datasets import (
    AVSS_CLASSES, S4_CATEGORIES, AVSSLayout, MS3Layout, S4Layout, read_label2idx,
    register_avs_dataset,
)
from selm_d2.data.masks import avss_palette, read_clip_masks, read_mask

FRAME_H, FRAME_W = 24, 32


# ------------------------------------------------------------------ tree writers
def write_image(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return path


def write_wav(path, seconds=5.0, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    return path


def frame_array(k, height=FRAME_H, width=FRAME_W):
    """An RGB frame whose content differs per frame index k."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = 10 * k
    frame[: height // 2, : width // 2, 1] = 200
    return frame


def binary_mask(height=FRAME_H, width=FRAME_W):
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2, : width // 2] = 255
    return mask


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_s4_tree(root, clips, log_mel=()):
    """avsbench_object/Single-source with clips [(name, category, split)]."""
    base = os.path.join(root, "Single-source")
    write_csv(os.path.join(base, "s4_meta_data.csv"), ["name", "start", "category", "split"],
              [(n, 0, c, s) for n, c, s in clips])
    data = os.path.join(base, "s4_data")
    for name, category, split in clips:
        for k in range(1, 6):
            write_image(os.path.join(data, "visual_frames", split, category, name,
                                     "{}_{}.png".format(name, k)), frame_array(k))
            if k == 1 or split != "train":
                write_image(os.path.join(data, "gt_masks", split, category, name,
                                         "{}_{}.png".format(name, k)), binary_mask())
        write_wav(os.path.join(data, "audio_wav", split, category, name + ".wav"))
        if name in log_mel:
            pkl = os.path.join(data, "audio_log_mel", split, category, name + ".pkl")
            os.makedirs(os.path.dirname(pkl), exist_ok=True)
            open(pkl, "wb").close()
    return root


def make_ms3_tree(root, clips):
    """avsbench_object/Multi-sources with clips [(name, split)]."""
    base = os.path.join(root, "Multi-sources")
    write_csv(os.path.join(base, "ms3_meta_data.csv"), ["video_id", "split"], clips)
    data = os.path.join(base, "ms3_data")
    for name, split in clips:
        for k in range(1, 6):
            write_image(os.path.join(data, "visual_frames", name, "{}.mp4_{}.png".format(name, k)),
                        frame_array(k))
            write_image(os.path.join(data, "gt_masks", split, name, "{}_{}.png".format(name, k)),
                        binary_mask())
        write_wav(os.path.join(data, "audio_wav", split, name + ".wav"))
    return root


def avss_label(class_index, height=FRAME_H, width=FRAME_W):
    """Class map: `class_index` in the top-left quarter, background elsewhere."""
    label = np.zeros((height, width), np.uint8)
    label[: height // 2, : width // 2] = class_index
    return label


def make_avss_tree(root, clips, labels="rgb", annotate_all_v1s=False, frames=None):
    """avsbench_semantic with clips [(uid, subset, split)]; labels "rgb" or "semantic"."""
    with open(os.path.join(_makedirs(root), "label2idx.json"), "w") as f:
        json.dump({name: i + 1 for i, name in enumerate(AVSS_CLASSES)}, f)
    write_csv(os.path.join(root, "metadata.csv"),
              ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"],
              [(uid.split("_")[0], uid, 0, 0, "dog", split, subset)
               for uid, subset, split in clips])
    palette = avss_palette()
    for i, (uid, subset, split) in enumerate(clips):
        clip = os.path.join(root, subset, uid)
        count = frames or (10 if subset == "v2" else 5)
        for t in range(count):
            write_image(os.path.join(clip, "frames", "{}.jpg".format(t)), frame_array(t))
            if t == 0 or not (subset == "v1s" and split == "train") or annotate_all_v1s:
                label = avss_label(1 + (i + t) % 70)
                if labels == "rgb":
                    write_image(os.path.join(clip, "labels_rgb", "{}.png".format(t)),
                                palette[label])
                else:
                    write_image(os.path.join(clip, "labels_semantic", "{}.png".format(t)),
                                label, "L")
        write_wav(os.path.join(clip, "audio.wav"), seconds=count)
    return root


def _makedirs(path):
    os.makedirs(path, exist_ok=True)
    return path


def load(name, root, layout, **kwargs):
    """Register under a fresh name and load the dicts."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_avs_dataset(name, str(root), layout, **kwargs)
    return DatasetCatalog.get(name)


# ------------------------------------------------------------------ masks
def test_avss_palette_matches_official_colours():
    palette = avss_palette()
    assert palette.shape == (71, 3) and palette.dtype == np.uint8
    assert tuple(palette[0]) == (0, 0, 0)
    assert tuple(palette[1]) == (128, 0, 0)
    assert tuple(palette[14]) == (64, 128, 128)  # clarinet
    assert tuple(palette[70]) == (32, 128, 128)  # woman
    assert len({tuple(c) for c in palette}) == 71


def test_read_mask_binary_accepts_every_png_mode(tmp_path):
    fg = binary_mask() > 0
    expected = fg.astype(np.uint8)
    paths = [write_image(str(tmp_path / "l.png"), binary_mask(), "L"),
             write_image(str(tmp_path / "rgb.png"), np.stack([binary_mask() // 255 * 7] * 3, -1)),
             write_image(str(tmp_path / "la.png"), np.stack([binary_mask(), np.full_like(
                 binary_mask(), 255)], -1), "LA")]
    one_bit = str(tmp_path / "one.png")
    Image.fromarray(fg).convert("1").save(one_bit)
    # Palette file whose index 1 is coloured black: the index, not the colour, counts.
    pal = Image.fromarray(expected, "P")
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    pal_path = str(tmp_path / "p.png")
    pal.save(pal_path)
    for path in paths + [one_bit, pal_path]:
        mask = read_mask(path, "binary")
        assert mask.dtype == np.uint8, path
        np.testing.assert_array_equal(mask, expected, err_msg=path)


def test_read_mask_avss_rgb_decodes_palette_and_names_unknown_colour(tmp_path):
    label = avss_label(14)
    label[-1, -1] = 70
    path = write_image(str(tmp_path / "lab.png"), avss_palette()[label])
    np.testing.assert_array_equal(read_mask(path, "avss_rgb"), label)

    rgb = avss_palette()[label]
    rgb[0, 0] = (12, 34, 56)
    bad = write_image(str(tmp_path / "bad.png"), rgb)
    with pytest.raises(ValueError) as e:
        read_mask(bad, "avss_rgb")
    assert bad in str(e.value) and "(12, 34, 56)" in str(e.value)
    assert "labels_semantic" in str(e.value)  # says how to fix


def test_read_mask_avss_index_range(tmp_path):
    label = avss_label(70)
    label[0, 0] = 255  # ignore
    path = write_image(str(tmp_path / "ok.png"), label, "L")
    np.testing.assert_array_equal(read_mask(path, "avss_index"), label)
    label[1, 1] = 71
    bad = write_image(str(tmp_path / "bad.png"), label, "L")
    with pytest.raises(ValueError, match="71"):
        read_mask(bad, "avss_index")
    rgb = write_image(str(tmp_path / "rgb.png"), avss_palette()[avss_label(3)])
    with pytest.raises(ValueError, match="mode RGB"):
        read_mask(rgb, "avss_index")


def test_read_mask_missing_and_corrupt_files_are_named(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_mask(missing, "binary")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="corrupt.png"):
        read_mask(str(corrupt), "binary")
    with pytest.raises(ValueError, match="mask_format"):
        read_mask(missing, "instance")


def test_read_clip_masks_fills_unannotated_frames(tmp_path):
    path = write_image(str(tmp_path / "m.png"), binary_mask())
    masks = read_clip_masks({"sem_seg_file_names": [path, None], "mask_format": "binary",
                             "height": FRAME_H, "width": FRAME_W, "clip_id": "c"})
    assert masks.shape == (2, FRAME_H, FRAME_W)
    assert masks[0].max() == 1 and (masks[1] == 255).all()
    with pytest.raises(ValueError, match="m.png"):
        read_clip_masks({"sem_seg_file_names": [path], "mask_format": "binary",
                         "height": FRAME_H + 1, "width": FRAME_W, "clip_id": "c"})


# ------------------------------------------------------------------ genuine metadata
def _counts(layout_cls, root, **kwargs):
    return {split: sum(1 for _ in layout_cls(root, split=split, **kwargs).records())
            for split in ("train", "val", "test")}


def test_genuine_s4_and_ms3_metadata(avsbench_meta_dir, tmp_path):
    for folder, name in (("Single-source", "s4_meta_data.csv"),
                         ("Multi-sources", "ms3_meta_data.csv")):
        os.makedirs(tmp_path / folder)
        shutil.copy(os.path.join(avsbench_meta_dir, name), tmp_path / folder / name)
    assert _counts(S4Layout, str(tmp_path)) == {"train": 3452, "val": 740, "test": 740}
    assert _counts(MS3Layout, str(tmp_path)) == {"train": 296, "val": 64, "test": 64}
    s4 = list(S4Layout(str(tmp_path)).records())
    assert sorted({record["category"] for record in s4}) == S4_CATEGORIES

    # Dicts of genuine rows: implied paths, S4 train annotates frame 1 only.
    train_row = next(S4Layout(str(tmp_path), split="train").records())
    clip = S4Layout(str(tmp_path)).clip_dict(train_row)
    name, category = train_row["name"], train_row["category"]
    assert clip["clip_id"] == name and clip["category"] == category
    assert clip["file_names"][4] == os.path.join(
        str(tmp_path), "Single-source", "s4_data", "visual_frames", "train", category, name,
        name + "_5.png")
    assert clip["sem_seg_file_names"][1:] == [None] * 4
    ms3_row = next(MS3Layout(str(tmp_path), split="val").records())
    clip = MS3Layout(str(tmp_path)).clip_dict(ms3_row)
    assert clip["file_names"][0].endswith(os.path.join(
        "ms3_data", "visual_frames", ms3_row["name"], ms3_row["name"] + ".mp4_1.png"))
    assert None not in clip["sem_seg_file_names"]


def test_genuine_avss_metadata(avsbench_meta_dir, tmp_path):
    shutil.copy(os.path.join(avsbench_meta_dir, "avss_metadata.csv"), tmp_path / "metadata.csv")
    root = str(tmp_path)
    assert _counts(AVSSLayout, root) == {"train": 8498, "val": 1304, "test": 1554}
    subsets = {s: sum(1 for _ in AVSSLayout(root, subset=s).records())
               for s in ("v1s", "v1m", "v2")}
    assert subsets == {"v1s": 4932, "v1m": 424, "v2": 6000}
    names = read_label2idx(os.path.join(avsbench_meta_dir, "label2idx.json"))
    assert len(names) == 71 and names == AVSS_CLASSES and names[0] == "background"


# ------------------------------------------------------------------ layouts
def test_s4_dicts(tmp_path):
    root = make_s4_tree(str(tmp_path), [("a1", "dog_barking", "train"),
                                        ("b2", "race_car", "train"),
                                        ("c3", "dog_barking", "val")], log_mel=("a1",))
    train = load("t_s4_train", root, "avsbench_s4", split="train")
    assert [d["clip_id"] for d in train] == ["a1", "b2"]
    a1 = train[0]
    assert (a1["height"], a1["width"]) == (FRAME_H, FRAME_W)
    assert a1["mask_format"] == "binary" and a1["category"] == "dog_barking"
    assert len(a1["file_names"]) == 5 and all(os.path.isfile(p) for p in a1["file_names"])
    assert os.path.isfile(a1["sem_seg_file_names"][0])
    assert a1["sem_seg_file_names"][1:] == [None] * 4
    assert os.path.isfile(a1["audio_file_name"])
    assert a1["audio_log_mel_file"].endswith(os.path.join("audio_log_mel", "train",
                                                          "dog_barking", "a1.pkl"))
    assert train[1]["audio_log_mel_file"] is None
    val = load("t_s4_val", root, "avsbench_s4", split="val")
    assert len(val) == 1 and all(os.path.isfile(p) for p in val[0]["sem_seg_file_names"])
    # root may also be the Single-source folder itself
    direct = load("t_s4_direct", os.path.join(root, "Single-source"), "avsbench_s4")
    assert len(direct) == 3
    meta = MetadataCatalog.get("t_s4_train")
    assert meta.evaluator_type == "avs_binary" and meta.categories == S4_CATEGORIES
    with pytest.raises(ValueError, match="valid"):
        load("t_s4_typo", root, "avsbench_s4", split="valid")


def test_ms3_dicts(tmp_path):
    root = make_ms3_tree(str(tmp_path), [("m1", "train"), ("m2", "test")])
    clips = load("t_ms3", root, "avsbench_ms3")
    assert [d["clip_id"] for d in clips] == ["m1", "m2"]
    m1 = clips[0]
    assert os.path.basename(m1["file_names"][2]) == "m1.mp4_3.png"
    assert all(os.path.isfile(p) for p in m1["file_names"] + m1["sem_seg_file_names"])
    assert m1["audio_file_name"].endswith(os.path.join("audio_wav", "train", "m1.wav"))
    assert "category" not in m1 and m1["audio_log_mel_file"] is None


def test_avss_dicts_rgb_labels(tmp_path):
    clips = [("s_0_5000", "v1s", "train"), ("t_0_5000", "v1s", "val"),
             ("m_0_5000", "v1m", "train"), ("v_0_10000", "v2", "train")]
    root = make_avss_tree(str(tmp_path), clips)
    train = {d["clip_id"]: d for d in load("t_avss_train", root, "avss", split="train")}
    assert set(train) == {"s_0_5000", "m_0_5000", "v_0_10000"}
    v1s = train["s_0_5000"]
    assert v1s["subset"] == "v1s" and v1s["mask_format"] == "avss_rgb"
    assert os.path.isfile(v1s["sem_seg_file_names"][0])
    assert v1s["sem_seg_file_names"][1:] == [None] * 4
    assert v1s["file_names"][3].endswith(os.path.join("v1s", "s_0_5000", "frames", "3.jpg"))
    assert v1s["audio_file_name"].endswith(os.path.join("s_0_5000", "audio.wav"))
    v2 = train["v_0_10000"]
    assert len(v2["file_names"]) == 10 and None not in v2["sem_seg_file_names"]
    masks = read_clip_masks(v2)
    assert masks.shape == (10, FRAME_H, FRAME_W)
    np.testing.assert_array_equal(masks[2], avss_label(1 + (3 + 2) % 70))

    only_v2 = load("t_avss_v2", root, "avss", subset="v2")
    assert [d["clip_id"] for d in only_v2] == ["v_0_10000"]
    meta = MetadataCatalog.get("t_avss_v2")
    assert meta.evaluator_type == "avss" and meta.num_frames == 10
    assert meta.stuff_classes == AVSS_CLASSES and len(meta.stuff_colors) == 71
    assert MetadataCatalog.get("t_avss_train").num_frames == 10
    v1m = load("t_avss_v1m", root, "avss", subset="v1m")
    assert len(v1m) == 1 and MetadataCatalog.get("t_avss_v1m").num_frames == 5


def test_avss_prefers_labels_semantic_and_uses_extra_v1s_labels(tmp_path):
    root = make_avss_tree(str(tmp_path), [("s_1", "v1s", "train")], labels="semantic",
                          annotate_all_v1s=True)
    (clip,) = load("t_avss_sem", root, "avss")
    assert clip["mask_format"] == "avss_index"
    assert None not in clip["sem_seg_file_names"]
    np.testing.assert_array_equal(read_clip_masks(clip)[4], avss_label(1 + 4 % 70))


def test_avss_frame_count_mismatch_names_clip_folder(tmp_path):
    root = make_avss_tree(str(tmp_path), [("v_bad", "v2", "val")], frames=9)
    with pytest.raises(ValueError) as e:
        load("t_avss_count", root, "avss")
    assert os.path.join("v2", "v_bad") in str(e.value) and "9 frame" in str(e.value)


def test_metadata_csv_missing_column_is_named(tmp_path):
    write_csv(str(tmp_path / "Single-source" / "s4_meta_data.csv"),
              ["name", "start", "category"], [("a", 0, "dog_barking")])
    with pytest.raises(ValueError) as e:
        load("t_s4_cols", str(tmp_path), "avsbench_s4")
    assert "s4_meta_data.csv" in str(e.value) and "'split'" in str(e.value)

    write_csv(str(tmp_path / "sem" / "metadata.csv"), ["vid", "uid", "split"], [("a", "a_1",
                                                                                "train")])
    with pytest.raises(ValueError) as e:
        load("t_avss_cols", str(tmp_path / "sem"), "avss")
    assert "metadata.csv" in str(e.value) and "'label'" in str(e.value)


def test_s4_csv_without_category_names_that_column(tmp_path):
    write_csv(str(tmp_path / "Single-source" / "s4_meta_data.csv"),
              ["name", "start", "split"], [("a1", 0, "train")])
    with pytest.raises(ValueError) as e:
        load("t_s4_nocat", str(tmp_path), "avsbench_s4")
    assert "['category']" in str(e.value) and "'split'" not in str(e.value)


def test_csv_with_byte_order_mark(tmp_path):
    """Spreadsheet exports start with U+FEFF: the first column is still "uid" / "name"."""
    root = make_avss_tree(str(tmp_path / "sem"), [("v_1", "v2", "test")])
    path = os.path.join(root, "metadata.csv")
    text = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8-sig") as f:  # writes the BOM
        f.write("uid,label,split,vid\n" + "v_1,v2,test,v\n")
    assert open(path, "rb").read(3) == b"\xef\xbb\xbf" and "uid" in text
    assert [d["clip_id"] for d in load("t_avss_bom", root, "avss")] == ["v_1"]
    s4 = make_s4_tree(str(tmp_path / "obj"), [("a1", "dog_barking", "train")])
    csv_path = os.path.join(s4, "Single-source", "s4_meta_data.csv")
    content = open(csv_path, encoding="utf-8").read()
    with open(csv_path, "w", encoding="utf-8-sig") as f:
        f.write(content)
    assert [d["clip_id"] for d in load("t_s4_bom", s4, "avsbench_s4")] == ["a1"]


def test_s4_columns_by_header_name_or_by_position_without_header(tmp_path):
    root = make_s4_tree(str(tmp_path), [("a1", "dog_barking", "train"),
                                        ("b2", "race_car", "val")])
    csv_path = os.path.join(root, "Single-source", "s4_meta_data.csv")
    write_csv(csv_path, ["split", "category", "start", "name"],
              [("train", "dog_barking", 0, "a1"), ("val", "race_car", 0, "b2")])
    clips = load("t_s4_reordered", root, "avsbench_s4")
    assert [(d["clip_id"], d["category"]) for d in clips] == [("a1", "dog_barking"),
                                                              ("b2", "race_car")]
    assert all(os.path.isfile(p) for d in clips for p in d["file_names"])
    # no header row: every row is a clip, columns by position (name, start, category, split)
    with open(csv_path, "w") as f:
        f.write("a1,0,dog_barking,train\nb2,0,race_car,val\n")
    assert [d["clip_id"] for d in load("t_s4_headerless", root, "avsbench_s4")] == ["a1", "b2"]
    # a header of unknown names is neither
    with open(csv_path, "w") as f:
        f.write("id,t,cls,part\na1,0,dog_barking,train\n")
    with pytest.raises(ValueError, match="names none of the columns"):
        load("t_s4_unknown_header", root, "avsbench_s4")


def test_missing_root_error_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_avs_dataset("t_missing_root", str(tmp_path / "avsbench_object"), "avsbench_s4")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("t_missing_root")
    message = str(e.value)
    assert os.path.join(str(tmp_path), "avsbench_object", "Single-source",
                        "s4_meta_data.csv") in message
    assert "DETECTRON2_DATASETS" in message and "datasets/README.md" in message


def test_datasets_root_is_read_when_a_builtin_dataset_loads(tmp_path, monkeypatch):
    """DETECTRON2_DATASETS set after `import selm_d2` (this module imported it long ago)."""
    root = str(tmp_path / "elsewhere")
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("avsbench_s4_test")
    tried = os.path.join(root, "avsbench_object", "Single-source", "s4_meta_data.csv")
    assert tried in str(e.value) and "(now {!r})".format(root) in str(e.value)
    make_s4_tree(os.path.join(root, "avsbench_object"), [("c3", "race_car", "test")])
    assert [d["clip_id"] for d in DatasetCatalog.get("avsbench_s4_test")] == ["c3"]
    make_avss_tree(os.path.join(root, "avsbench_semantic"), [("v_1", "v2", "val")])
    (clip,) = DatasetCatalog.get("avss_v2_val")
    assert clip["file_names"][0].startswith(root)


def test_builtin_names_and_metadata():
    names = set(DatasetCatalog.list())
    for split in ("train", "val", "test"):
        assert {"avsbench_s4_" + split, "avsbench_ms3_" + split, "avss_" + split,
                "avss_v1s_" + split, "avss_v1m_" + split, "avss_v2_" + split} <= names
    s4 = MetadataCatalog.get("avsbench_s4_train")
    assert s4.evaluator_type == "avs_binary" and s4.ignore_label == 255 and s4.num_frames == 5
    assert s4.stuff_classes == ["background", "sounding object"]
    assert len(s4.stuff_colors) == 2 and s4.stuff_colors[0] == [0, 0, 0]
    assert len(s4.categories) == 23
    assert MetadataCatalog.get("avsbench_ms3_test").evaluator_type == "avs_binary"
    for name, frames in (("avss_val", 10), ("avss_v1s_train", 5), ("avss_v1m_test", 5),
                         ("avss_v2_val", 10)):
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "avss" and meta.num_frames == frames
        assert meta.stuff_classes == AVSS_CLASSES and meta.ignore_label == 255
        assert meta.stuff_colors == avss_palette().tolist()


# ------------------------------------------------------------------ manifest
def _manifest_clip_files(root, clip_id, count=3):
    for t in range(count):
        write_image(os.path.join(root, clip_id, "frames", "{}.jpg".format(t)), frame_array(t))
    write_image(os.path.join(root, clip_id, "masks", "0.png"), binary_mask())
    write_wav(os.path.join(root, clip_id, "audio.wav"), seconds=count)


def test_manifest_json(tmp_path):
    root = str(tmp_path)
    for clip_id in ("c1", "c2"):
        _manifest_clip_files(root, clip_id)
    manifest = {"mask_format": "binary", "clips": [
        {"clip_id": "c1", "frames": ["c1/frames/0.jpg", "c1/frames/1.jpg", "c1/frames/2.jpg"],
         "audio": "c1/audio.wav", "masks": ["c1/masks/0.png", None, None], "split": "train"},
        {"clip_id": "c2", "frames": "c2/frames/*.jpg", "audio": os.path.join(root,
                                                                              "c2/audio.wav"),
         "split": "val"},
    ]}
    path = tmp_path / "clips.json"
    path.write_text(json.dumps(manifest))
    train = load("t_manifest_json", str(path), "manifest", split="train")
    assert len(train) == 1
    c1 = train[0]
    assert c1["file_names"][1] == os.path.join(root, "c1", "frames", "1.jpg")
    assert c1["sem_seg_file_names"] == [os.path.join(root, "c1", "masks", "0.png"), None, None]
    assert (c1["height"], c1["width"]) == (FRAME_H, FRAME_W) and c1["mask_format"] == "binary"
    (c2,) = load("t_manifest_json_val", str(path), "manifest", split="val")
    assert [os.path.basename(p) for p in c2["file_names"]] == ["0.jpg", "1.jpg", "2.jpg"]
    assert c2["sem_seg_file_names"] == [None] * 3
    meta = MetadataCatalog.get("t_manifest_json")
    assert meta.evaluator_type == "avs_binary" and meta.stuff_classes[1] == "sounding object"


def test_manifest_csv_semantic_classes(tmp_path):
    root = str(tmp_path)
    _manifest_clip_files(root, "c1", count=12)
    _manifest_clip_files(root, "c2", count=2)
    path = tmp_path / "clips.csv"
    path.write_text("clip_id,frames,audio,masks,mask_format\n"
                    "c1,c1/frames/*.jpg,c1/audio.wav,c1/masks/0.png;;;;;;;;;;;,avss_index\n"
                    "c2,c2/frames/1.jpg;c2/frames/0.jpg,c2/audio.wav,,\n")
    clip, c2 = load("t_manifest_csv", str(path), "manifest",
                    metadata={"stuff_classes": ["background", "dog", "cat"]})
    assert c2["file_names"] == [os.path.join(root, "c2", "frames", n) for n in ("1.jpg", "0.jpg")]
    assert c2["sem_seg_file_names"] == [None, None] and c2["mask_format"] == "binary"
    # natural sort: 10.jpg after 9.jpg
    assert [os.path.basename(p) for p in clip["file_names"]][-3:] == ["9.jpg", "10.jpg", "11.jpg"]
    assert clip["sem_seg_file_names"][0].endswith(os.path.join("c1", "masks", "0.png"))
    assert clip["sem_seg_file_names"][1:] == [None] * 11 and clip["mask_format"] == "avss_index"
    meta = MetadataCatalog.get("t_manifest_csv")
    assert meta.evaluator_type == "avss" and len(meta.stuff_colors) == 3


def test_manifest_errors_name_the_file(tmp_path):
    path = tmp_path / "clips.json"
    path.write_text(json.dumps([{"clip_id": "x", "frames": ["a.jpg", "b.jpg"], "audio": "a.wav",
                                 "masks": ["a.png"]}]))
    with pytest.raises(ValueError, match="clips.json.*1 masks for 2 frames"):
        load("t_manifest_bad", str(path), "manifest")
    path.write_text(json.dumps([{"clip_id": "x", "frames": ["a.jpg"]}]))
    with pytest.raises(ValueError, match="audio"):
        load("t_manifest_bad2", str(path), "manifest")
