"""AVS-Synth: official layouts, determinism, sounding-vs-silent ground truth, audio content,
atomic and idempotent generation, and reading through the real AVSBench loaders."""
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from selm_d2.data import synthetic as S
from selm_d2.data.masks import avss_palette
from selm_d2.data.synthetic import sound, writers

SIZE = 32
COUNTS = {"train": 3, "val": 3, "test": 3}
SR = 16000


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """All three layouts, seed 0, 3 clips per split at 32x32 (holds v1s/v1m/v2 clips and
    silent clips; asserted where it matters)."""
    out = str(tmp_path_factory.mktemp("avs_synth"))
    S.generate(out, clips_per_split=COUNTS, size=SIZE, seed=0, progress=False)
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _tree(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def _clips(layout):
    """SynthClip of every clip of the fixture, in CSV order."""
    return [S.plan_clip(layout, split, i, 0, SIZE, 10.0)
            for split in S.SPLITS for i in range(COUNTS[split])]


def _expected_labels(scene):
    """uint8 [T, H, W]: category + 1 of the visible sounding object, drawn in order (later
    objects occlude earlier ones), computed from the silhouettes alone."""
    masks = S.object_masks(scene)
    labels = np.zeros((scene.num_frames, scene.size, scene.size), np.uint8)
    for obj, mask in zip(scene.objects, masks):
        for t in range(scene.num_frames):
            labels[t][mask[t]] = obj.category + 1 if obj.sounding[t] else 0
    return labels


# ------------------------------------------------------------------------------ scenes
def test_every_category_sounds_and_is_a_distractor_equally_often():
    for style, num_frames in (("multi", 5), ("multi", 10), ("single", 5)):
        on = np.zeros(len(S.SYNTH_CATEGORIES))
        seen = np.zeros(len(S.SYNTH_CATEGORIES))
        by_order = {"first": [], "last": []}
        silent = changing = 0
        for i in range(500):
            scene = S.sample_scene(np.random.default_rng([7, i]), style, num_frames, 64, 10.0)
            cats = [o.category for o in scene.objects]
            assert 2 <= len(cats) <= (3 if style == "single" else 4)
            assert len(set(cats)) == len(cats), "categories in a clip must be distinct"
            sounding = scene.sounding
            for o in scene.objects:
                on[o.category] += o.sounding.sum()
                seen[o.category] += num_frames
            by_order["first"].append(sounding[0].mean())
            by_order["last"].append(sounding[-1].mean())
            if style == "single":
                assert sounding.sum(axis=0).tolist() == [1] * num_frames
                assert sounding.all(axis=1).sum() == 1, "S4: one object sounds throughout"
            silent += scene.silent
            changing += any((sounding[:, t] != sounding[:, 0]).any() for t in range(num_frames))
        fraction = on / seen
        assert ((fraction > 0.3) & (fraction < 0.7)).all(), (style, fraction)
        # The drawing order (who occludes whom) must not reveal who sounds either.
        for order, values in by_order.items():
            assert 0.3 < np.mean(values) < 0.7, (style, order, np.mean(values))
        if style == "multi":
            assert 0.04 < silent / 500 < 0.18
            assert changing > 0.5 * (500 - silent), "the sounding set must change over time"
        else:
            assert silent == 0


def test_silent_scene_has_empty_masks_and_noise_only_audio():
    scene = next(c.scene for c in (S.plan_clip("ms3", "train", i, 0, SIZE, 10.0)
                                   for i in range(100)) if c.scene.silent)
    frames, owner = S.render_frames(scene)
    assert (owner >= 0).any(), "silent clips still show objects"
    assert not S.label_maps(scene, owner).any()
    signal, noise = S.render_audio(scene)
    assert not signal.any()
    expected = sound.SOURCE_RMS ** 2 / 10 ** (scene.snr_db / 10)
    assert abs(10 * np.log10(np.mean(noise.astype(np.float64) ** 2) / expected)) < 0.1


# ------------------------------------------------------------------------------ layouts
def test_written_trees_are_exactly_the_official_layouts(synth_root):
    s4 = os.path.join(synth_root, "Single-source")
    header, rows = _read_csv(os.path.join(s4, "s4_meta_data.csv"))
    assert header == ["name", "start", "category", "split"]
    expected = {"s4_meta_data.csv", S.INFO_FILE}
    for name, _, category, split in rows:
        assert category in S.SYNTH_CATEGORIES
        for k in range(1, 6):
            expected.add("s4_data/visual_frames/{}/{}/{}/{}_{}.png".format(split, category, name,
                                                                        name, k))
            if split != "train" or k == 1:  # S4 train annotates frame 1 only
                expected.add("s4_data/gt_masks/{}/{}/{}/{}_{}.png".format(split, category, name,
                                                                       name, k))
        expected.add("s4_data/audio_wav/{}/{}/{}.wav".format(split, category, name))
        expected.add("s4_data/audio_log_mel/{}/{}/{}.pkl".format(split, category, name))
    assert set(_tree(s4)) == expected
    assert [r[3] for r in rows] == [s for s in S.SPLITS for _ in range(COUNTS[s])]

    ms3 = os.path.join(synth_root, "Multi-sources")
    header, rows = _read_csv(os.path.join(ms3, "ms3_meta_data.csv"))
    assert header == ["video_id", "split"]
    expected = {"ms3_meta_data.csv", S.INFO_FILE}
    for name, split in rows:
        for k in range(1, 6):
            expected.add("ms3_data/visual_frames/{}/{}.mp4_{}.png".format(name, name, k))
            expected.add("ms3_data/gt_masks/{}/{}/{}_{}.png".format(split, name, name, k))
        expected.add("ms3_data/audio_wav/{}/{}.wav".format(split, name))
        expected.add("ms3_data/audio_log_mel/{}/{}.pkl".format(split, name))
    assert set(_tree(ms3)) == expected

    avss = os.path.join(synth_root, "AVSS")
    header, rows = _read_csv(os.path.join(avss, "metadata.csv"))
    assert header == ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    with open(os.path.join(avss, "label2idx.json")) as f:
        assert json.load(f) == {n: i + 1 for i, n in
                                enumerate(["background"] + S.SYNTH_CATEGORIES)}
    expected = {"metadata.csv", "label2idx.json", S.INFO_FILE}
    for _, uid, _, _, a_obj, split, subset in rows:
        num_frames = 10 if subset == "v2" else 5
        for i in range(num_frames):
            expected.add("{}/{}/frames/{}.jpg".format(subset, uid, i))
            if not (subset == "v1s" and split == "train") or i == 0:
                expected.add("{}/{}/labels_rgb/{}.png".format(subset, uid, i))
        expected.add("{}/{}/audio.wav".format(subset, uid))
    assert set(_tree(avss)) == expected
    subsets = {(r[6], r[5]) for r in rows}
    assert ("v1s", "train") in subsets and any(s == "v2" for s, _ in subsets), subsets


def test_file_formats(synth_root):
    paths = {"png_mask": [], "png_frame": [], "jpg": [], "label_rgb": [], "wav": []}
    for folder, _, names in os.walk(synth_root):
        for name in names:
            path = os.path.join(folder, name)
            if "gt_masks" in path:
                paths["png_mask"].append(path)
            elif "visual_frames" in path:
                paths["png_frame"].append(path)
            elif "labels_rgb" in path:
                paths["label_rgb"].append(path)
            elif name.endswith(".jpg"):
                paths["jpg"].append(path)
            elif name.endswith(".wav"):
                paths["wav"].append(path)
    palette = {tuple(c) for c in avss_palette(len(S.SYNTH_CATEGORIES) + 1)}
    for path in paths["png_mask"]:
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            assert set(np.unique(np.asarray(im))) <= {0, 255}
    for kind in ("png_frame", "jpg"):
        for path in paths[kind]:
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    for path in paths["label_rgb"]:
        with Image.open(path) as im:
            colours = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
            assert colours <= palette
    for path in paths["wav"]:
        info = sf.info(path)
        num_frames = 10 if "/v2/" in path else 5
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert info.frames == num_frames * SR, path


# ------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_any_workers_other_seed_differs(synth_root, tmp_path):
    S.generate(str(tmp_path / "again"), clips_per_split=COUNTS, size=SIZE, seed=0, workers=2,
               progress=False)
    reference = _tree(synth_root)
    assert _tree(str(tmp_path / "again")) == reference

    S.generate(str(tmp_path / "other"), layouts=["ms3"], clips_per_split=COUNTS, size=SIZE,
               seed=1, progress=False)
    other = _tree(str(tmp_path / "other"))
    assert set(other) <= set(reference)
    for suffix in (".png", ".wav"):
        assert any(other[p] != reference[p] for p in other if p.endswith(suffix)), suffix


# ------------------------------------------------------------------------------ ground truth
def _palette_index(rgb):
    palette = avss_palette(len(S.SYNTH_CATEGORIES) + 1)
    match = (rgb[:, :, None, :] == palette[None, None]).all(axis=-1)
    assert match.any(axis=-1).all()
    return match.argmax(axis=-1)


def test_masks_are_the_visible_sounding_objects(synth_root):
    colours = np.array([S.CATEGORY_LOOKS[c][1] for c in S.SYNTH_CATEGORIES], np.float64)
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    checked_colour = 0
    for layout in ("s4", "ms3"):
        for clip in _clips(layout):
            expected = _expected_labels(clip.scene)
            if layout == "s4":
                cat = clip.scene.sounding_categories()[0]
                base = os.path.join(synth_root, "Single-source", "s4_data", "{}",
                                    clip.split, cat, clip.name, clip.name + "_{}.png")
                frame_path = base.format("visual_frames", "{}")
                mask_path = base.format("gt_masks", "{}")
                annotated = 1 if clip.split == "train" else 5
                assert all(expected[t].any() for t in range(5)), "S4: the source is visible"
            else:
                data = os.path.join(synth_root, "Multi-sources", "ms3_data")
                frame_path = os.path.join(data, "visual_frames", clip.name,
                                          clip.name + ".mp4_{}.png")
                mask_path = os.path.join(data, "gt_masks", clip.split, clip.name,
                                         clip.name + "_{}.png")
                annotated = 5
            for t in range(annotated):
                mask = np.asarray(Image.open(mask_path.format(t + 1))) > 0
                np.testing.assert_array_equal(mask, expected[t] > 0, err_msg=clip.name)
            # The pixels the objects own in the frames carry their category's colour.
            owner = np.full(expected.shape, -1)
            for o, m in enumerate(S.object_masks(clip.scene)):
                owner[m] = o
            for t in range(5):
                rgb = np.asarray(Image.open(frame_path.format(t + 1)), np.float64)
                for o, obj in enumerate(clip.scene.objects):
                    if (owner[t] == o).sum() >= 6:
                        mean = rgb[owner[t] == o].mean(axis=0)
                        assert np.argmax(colours @ mean / np.linalg.norm(mean)) == obj.category
                        checked_colour += 1
    assert checked_colour > 50

    for clip in _clips("avss"):
        expected = _expected_labels(clip.scene)
        folder = os.path.join(synth_root, "AVSS", clip.subset, clip.name, "labels_rgb")
        annotated = 1 if (clip.subset, clip.split) == ("v1s", "train") else clip.scene.num_frames
        for t in range(annotated):
            rgb = np.asarray(Image.open(os.path.join(folder, "{}.png".format(t))).convert("RGB"))
            np.testing.assert_array_equal(_palette_index(rgb), expected[t], err_msg=clip.name)


def test_silent_clips_have_empty_masks(synth_root):
    silent = 0
    for clip in _clips("ms3"):
        if clip.scene.silent:
            silent += 1
            for k in range(1, 6):
                path = os.path.join(synth_root, "Multi-sources", "ms3_data", "gt_masks",
                                    clip.split, clip.name, "{}_{}.png".format(clip.name, k))
                assert not np.asarray(Image.open(path)).any()
    assert silent, "the fixture should hold a silent MS3 clip"


# ------------------------------------------------------------------------------ audio
def _wav_path(root, layout, clip):
    if layout == "ms3":
        return os.path.join(root, "Multi-sources", "ms3_data", "audio_wav", clip.split,
                            clip.name + ".wav")
    return os.path.join(root, "AVSS", clip.subset, clip.name, "audio.wav")


def test_each_second_holds_the_sounding_categories_bands(synth_root):
    freqs = np.fft.rfftfreq(SR, 1.0 / SR)
    noise_only = (freqs >= 7100) & (freqs <= 7900)  # above every category band
    checked = {True: 0, False: 0}
    for layout in ("ms3", "avss"):
        for clip in _clips(layout):
            audio, rate = sf.read(_wav_path(synth_root, layout, clip))
            assert rate == SR
            for t in range(clip.scene.num_frames):
                power = np.abs(np.fft.rfft(audio[t * SR:(t + 1) * SR] * np.hanning(SR))) ** 2
                density = power[noise_only].mean()
                for obj in clip.scene.objects:
                    lo, hi = S.SOUND_BANDS_HZ[S.SYNTH_CATEGORIES[obj.category]]
                    band = (freqs >= lo) & (freqs <= hi)
                    ratio = power[band].sum() / (density * band.sum())
                    if obj.sounding[t]:
                        assert ratio > 5, (clip.name, t, obj.category, ratio)
                    else:
                        assert ratio < 2.5, (clip.name, t, obj.category, ratio)
                    checked[bool(obj.sounding[t])] += 1
    assert min(checked.values()) > 20, checked


def test_log_mel_examples_identify_the_sounding_categories(synth_root):
    from selm_d2.data.audio import MEL_MAX_HZ, MEL_MIN_HZ, NUM_MEL_BINS, load_audio_examples

    def mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)

    centres = np.linspace(mel(MEL_MIN_HZ), mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)[1:-1]
    bins = {c: (centres >= mel(lo)) & (centres <= mel(hi)) for c, (lo, hi) in
            ((S.SYNTH_CATEGORIES.index(n), band) for n, band in S.SOUND_BANDS_HZ.items())}
    compared = 0
    for clip in _clips("ms3"):
        examples = load_audio_examples(_wav_path(synth_root, "ms3", clip), 5).numpy()[:, 0]
        # Per-bin noise floor (bands differ in width, so in noise level).
        floor = np.percentile(examples.reshape(-1, NUM_MEL_BINS), 10, axis=0)
        for obj in clip.scene.objects:
            band = bins[obj.category]
            # Example t spans 0.96t..0.96(t+1) s: frames from 4t+3 on lie inside second t.
            level = np.array([(examples[t, 4 * t + 3:][:, band] - floor[band]).max(axis=1).mean()
                              for t in range(5)])
            if obj.sounding.any() and not obj.sounding.all():
                assert level[obj.sounding].min() > level[~obj.sounding].max() + 0.3, (
                    clip.name, obj.category, obj.sounding, level)
                compared += 1
    assert compared >= 3


def test_log_mel_pickles_are_the_wavs_examples(synth_root):
    """S4/MS3 ship AVSBench's pickles: the same model input as the wav, read without an STFT."""
    from selm_d2.data.audio import load_audio_examples
    from selm_d2.data.datasets.avsbench import MS3Layout

    layout = MS3Layout(os.path.join(synth_root, "Multi-sources"), split="test")
    dicts = [layout.clip_dict(row) for row in layout.records()]
    assert dicts
    for d in dicts:
        assert d["audio_log_mel_file"].endswith(os.path.join("audio_log_mel", "test",
                                                              d["clip_id"] + ".pkl"))
        from_wav = load_audio_examples(d["audio_file_name"], 5)
        assert torch.equal(load_audio_examples(d["audio_log_mel_file"], 5), from_wav)


def test_snr_is_honoured(synth_root):
    for clip in _clips("ms3"):
        if clip.scene.silent:
            continue
        audio, _ = sf.read(_wav_path(synth_root, "ms3", clip))
        signal, _ = S.render_audio(clip.scene)
        signal = signal.astype(np.float64)
        span = np.repeat(clip.scene.sounding.any(axis=0), SR)
        # The file holds gain * (signal + noise); the noise is independent of the signal.
        gain = audio @ signal / (signal @ signal)
        residual = audio - gain * signal
        snr = 10 * np.log10(np.mean((gain * signal[span]) ** 2) / np.mean(residual[span] ** 2))
        assert abs(snr - 10.0) < 1.0, (clip.name, snr)
    for snr_db in (0.0, 20.0):
        scene = S.sample_scene(np.random.default_rng(3), "multi", 5, SIZE, snr_db)
        signal, noise = S.render_audio(scene)
        span = np.repeat(scene.sounding.any(axis=0), SR)
        measured = 10 * np.log10(np.mean(signal[span].astype(np.float64) ** 2)
                                 / np.mean(noise[span].astype(np.float64) ** 2))
        assert abs(measured - snr_db) < 1.0


# ------------------------------------------------------------------------------ loaders
def test_real_avsbench_loaders_read_the_synthetic_layouts(synth_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from selm_d2.data.datasets import register_avs_synth
    from selm_d2.data.masks import read_clip_masks

    names = ["avs_synth_{}_{}".format(layout, split) for layout in S.LAYOUTS
             for split in S.SPLITS]
    assert set(names) <= set(DatasetCatalog.list())
    def reregister(root):
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_avs_synth.register_all_avs_synth(root)

    reregister(synth_root)
    try:
        for layout in S.LAYOUTS:
            for split in S.SPLITS:
                name = "avs_synth_{}_{}".format(layout, split)
                dicts = DatasetCatalog.get(name)
                expected = [c for c in _clips(layout) if c.split == split]
                assert [d["clip_id"] for d in dicts] == [c.name for c in expected]
                for d, clip in zip(dicts, expected):
                    assert (d["height"], d["width"]) == (SIZE, SIZE)
                    assert len(d["file_names"]) == clip.scene.num_frames
                    assert all(os.path.isfile(p) for p in d["file_names"] + [d["audio_file_name"]])
                    masks = read_clip_masks(d)
                    labels = _expected_labels(clip.scene)
                    for t, path in enumerate(d["sem_seg_file_names"]):
                        if path is None:
                            assert masks[t].min() == 255
                        elif layout == "avss":
                            np.testing.assert_array_equal(masks[t], labels[t])
                        else:
                            np.testing.assert_array_equal(masks[t], labels[t] > 0)
                    sparse = (layout == "s4" and split == "train") or (
                        layout == "avss" and (clip.subset, split) == ("v1s", "train"))
                    annotated = [p is not None for p in d["sem_seg_file_names"]]
                    assert annotated == ([True] + [False] * 4 if sparse
                                         else [True] * clip.scene.num_frames)
                meta = MetadataCatalog.get(name)
                if layout == "avss":
                    assert meta.evaluator_type == "avss"
                    assert meta.stuff_classes == ["background"] + S.SYNTH_CATEGORIES
                    assert meta.stuff_colors == avss_palette(7).tolist()
                    assert meta.num_frames == 10
                else:
                    assert meta.evaluator_type == "avs_binary"
                    assert meta.num_frames == 5
    finally:
        reregister(None)  # the default: $DETECTRON2_DATASETS/avs_synth when loaded


# ------------------------------------------------------------------------------ 70 categories
def test_coded_categories_differ_in_look_and_in_vggish_log_mel():
    """AVSBench-semantic's 70: distinct (shape, colour) pairs, and sounds that a nearest
    template recognises from the mean VGGish log-mel of one second at 10 dB SNR."""
    from selm_d2.data.audio import waveform_to_examples

    names = S.synth_categories(70)
    assert names == S.CODED_CATEGORIES and len(set(names)) == 70
    assert len({S.CATEGORY_LOOKS[n][:2] for n in names}) == 70
    assert len({S.CODED_SOUNDS[n][0] for n in names}) == 70  # every tone pair is its own
    t = np.arange(SR) / SR

    def mean_log_mel(name, seed):
        rng = np.random.default_rng(seed)
        wave = sound._tone_pair(rng, t, *S.CODED_SOUNDS[name]) * sound.SOURCE_RMS
        noise = rng.standard_normal(SR)
        noise *= np.sqrt(np.mean(wave ** 2) / 10.0 / np.mean(noise ** 2))
        return waveform_to_examples(wave + noise, SR)[0].mean(axis=0)  # [64]

    templates = np.stack([mean_log_mel(n, 1) for n in names])
    heard = np.stack([mean_log_mel(n, 2) for n in names])
    nearest = ((heard[:, None] - templates[None]) ** 2).sum(-1).argmin(axis=1)
    assert nearest.tolist() == list(range(70))


@pytest.mark.parametrize("bad", [3, 71])
def test_number_of_categories_is_checked(bad, tmp_path):
    with pytest.raises(ValueError, match="--num-categories must be between 4 and 70"):
        S.generate(str(tmp_path), layouts=["avss"], num_categories=bad, progress=False)


def test_70_category_avss_layout_reads_through_the_registered_names(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from selm_d2.data.masks import read_clip_masks

    out = str(tmp_path / "avs_synth70")
    S.main(["--out", out, "--layouts", "avss", "--clips-per-split", "4", "0", "2",
            "--size", "32", "--num-categories", "70"])
    root = os.path.join(out, "AVSS")
    with open(os.path.join(root, "label2idx.json")) as f:
        label2idx = json.load(f)
    assert label2idx == {n: i + 1 for i, n in enumerate(["background"] + S.CODED_CATEGORIES)}
    with open(os.path.join(root, S.INFO_FILE)) as f:
        assert json.load(f)["categories"] == S.CODED_CATEGORIES

    # The registered names read $DETECTRON2_DATASETS/avs_synth70 when they are loaded.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    meta = MetadataCatalog.get("avs_synth70_avss_train")
    assert meta.stuff_classes == ["background"] + S.CODED_CATEGORIES
    assert meta.evaluator_type == "avss" and len(meta.stuff_colors) == 71
    dicts = DatasetCatalog.get("avs_synth70_avss_train")
    categories = tuple(S.synth_categories(70))
    expected = [S.plan_clip("avss", "train", i, 0, 32, 10.0, categories) for i in range(4)]
    assert [d["clip_id"] for d in dicts] == [c.name for c in expected]
    for d, clip in zip(dicts, expected):
        masks = read_clip_masks(d)
        labels = _expected_labels(clip.scene)
        for t, path in enumerate(d["sem_seg_file_names"]):
            if path is not None:
                np.testing.assert_array_equal(masks[t], labels[t])


# ------------------------------------------------------------------------------ atomicity
def _failing_after(n, exc=KeyboardInterrupt):
    real = writers._write_clip
    calls = []

    def write(job):
        if len(calls) >= n:
            raise exc("interrupted")
        calls.append(job)
        return real(job)
    return write


def test_interrupted_generation_leaves_no_complete_looking_layout(tmp_path, monkeypatch):
    out = str(tmp_path)
    monkeypatch.setattr(writers, "_write_clip", _failing_after(3))
    with pytest.raises(KeyboardInterrupt):
        S.generate(out, layouts=["ms3"], clips_per_split=COUNTS, size=SIZE, progress=False)
    assert os.listdir(out) == []

    # A killed run leaves its hidden temp folder: the next run removes it and completes.
    monkeypatch.undo()
    os.makedirs(os.path.join(out, ".avs_synth_tmp_ms3_killed", "ms3_data"))
    S.generate(out, layouts=["ms3"], clips_per_split=COUNTS, size=SIZE, progress=False)
    assert os.listdir(out) == ["Multi-sources"]

    # Interrupting a regeneration with other settings keeps the complete old layout.
    before = _tree(out)
    monkeypatch.setattr(writers, "_write_clip", _failing_after(2))
    with pytest.raises(KeyboardInterrupt):
        S.generate(out, layouts=["ms3"], clips_per_split=COUNTS, size=SIZE, seed=5,
                   progress=False)
    assert os.listdir(out) == ["Multi-sources"]
    assert _tree(out) == before


def test_rerun_is_a_no_op_and_other_settings_regenerate(tmp_path, monkeypatch):
    out = str(tmp_path / "synth")
    counts = {"train": 1, "val": 1, "test": 1}
    S.generate(out, layouts=["s4", "ms3"], clips_per_split=counts, size=SIZE, progress=False)
    root = os.path.join(out, "Single-source")
    stamps = {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in _tree(root)}

    monkeypatch.setattr(writers, "_write_clip", _failing_after(0, RuntimeError))
    S.generate(out, layouts=["s4", "ms3"], clips_per_split=counts, size=SIZE, progress=False)
    assert {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in _tree(root)} == stamps
    monkeypatch.undo()

    S.generate(out, layouts=["s4"], clips_per_split=counts, size=SIZE, snr_db=3.0,
               progress=False)
    with open(os.path.join(root, S.INFO_FILE)) as f:
        assert json.load(f)["snr_db"] == 3.0
    assert sorted(os.listdir(out)) == ["Multi-sources", "Single-source"]

    foreign = tmp_path / "foreign"
    (foreign / "Multi-sources").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="Multi-sources"):
        S.generate(str(foreign), layouts=["ms3"], clips_per_split=counts, size=SIZE,
                   progress=False)


def test_command_line(tmp_path, capsys):
    out = str(tmp_path / "cli")
    S.main(["--out", out, "--layouts", "ms3", "--clips-per-split", "1", "0", "2",
            "--size", "32", "--seed", "3", "--snr-db", "5"])
    assert os.path.join(out, "Multi-sources") in capsys.readouterr().out
    with open(os.path.join(out, "Multi-sources", S.INFO_FILE)) as f:
        info = json.load(f)
    assert (info["seed"], info["snr_db"], info["size"]) == (3, 5.0, 32)
    assert info["clips_per_split"] == {"train": 1, "val": 0, "test": 2}
    with pytest.raises(SystemExit):
        S.main(["--out", out, "--layouts", "nope"])


def test_default_size_is_what_the_synth_recipe_trains_and_scores_at(tmp_path):
    """At the default size the model's training targets are the scored masks, pixel for pixel.

    A 2x nearest-neighbour resize of the masks (128 -> 64, as the recipe trained before
    2026-12-01) takes source pixel 2i+1 for target pixel i: every edge of the training target
    moves by half a source pixel against the masks the evaluator scores.
    """
    from detectron2.data import transforms as T

    from selm_d2 import load_config
    from selm_d2.data import AVSClipDatasetMapper
    from selm_d2.data.masks import read_clip_masks
    from selm_d2.data.datasets.register import build_layout, load_avs_clips

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "synth",
                                   "ms3.yaml"), [])
    assert S.DEFAULT_SIZE == cfg.INPUT.AVS.SIZE
    out = str(tmp_path / "data")
    S.generate(out, layouts=["ms3"], clips_per_split={"train": 3, "val": 0, "test": 0},
               progress=False)
    clips = load_avs_clips(build_layout(os.path.join(out, "Multi-sources"), "avsbench_ms3",
                                        split="train"))
    mapper = AVSClipDatasetMapper(cfg, is_train=True)
    sounding = 0
    for clip in clips:
        mapped = mapper(clip)
        masks = read_clip_masks(clip)
        assert masks.shape[1:] == (S.DEFAULT_SIZE, S.DEFAULT_SIZE)
        sounding += int((masks == 1).sum())
        np.testing.assert_array_equal(mapped["sem_seg"].numpy(), masks)
        frame = np.asarray(Image.open(clip["file_names"][0]).convert("RGB"))
        np.testing.assert_array_equal(mapped["image"][0].permute(1, 2, 0).numpy(), frame)
    assert sounding > 0
    # Why the size matters: the resize a larger tree would go through is shifted.
    ramp = np.tile(np.arange(2 * S.DEFAULT_SIZE, dtype=np.uint8), (4, 1))
    halved = T.ResizeTransform(4, 2 * S.DEFAULT_SIZE, 2, S.DEFAULT_SIZE).apply_segmentation(ramp)
    assert halved[0, :3].tolist() == [1, 3, 5]
