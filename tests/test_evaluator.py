"""Tests of the AVSBench metrics (selm_d2/evaluation/metrics.py) and of AVSEvaluator.

Expected values are worked out by hand in the comments, or (random inputs) compared with a
plain per-threshold / per-class loop written from the AVSBench description.
"""
import json
import os
import pathlib

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from selm_d2.evaluation import AVSEvaluator
from selm_d2.evaluation.metrics import (
    avss_frame_class_scores,
    avss_scores,
    binary_frame_f_curves,
    binary_frame_iou,
    binary_scores_batch_protocol,
    binary_scores_dataset_level,
    f_thresholds,
)


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)[None]  # one frame [1, H, W]


# ----------------------------------------------------------------------------- binary IoU
def test_iou_empty_gt_scores_background_fraction():
    gt = _t([[0, 0], [0, 0]], torch.long)
    all_background = _t([[0.1, 0.2], [0.3, 0.5]])
    assert binary_frame_iou(all_background, gt).item() == pytest.approx(4 / (4 + 1e-7))
    # one pixel above 0.5 -> 3 of 4 pixels correctly background, U = H*W = 4
    assert binary_frame_iou(_t([[0.9, 0.2], [0.3, 0.4]]), gt).item() == pytest.approx(3 / 4)


def test_iou_perfect_and_half_overlap():
    gt = _t([[1, 0], [1, 0]], torch.long)  # left column sounds
    assert binary_frame_iou(gt.float(), gt).item() == pytest.approx(1.0)
    # prediction = top row: I = 1 (top-left), U = 3
    assert binary_frame_iou(_t([[0.9, 0.8], [0.1, 0.2]]), gt).item() == pytest.approx(1 / 3)
    # 0.5 is not foreground (strict >)
    assert binary_frame_iou(_t([[0.5, 0.0], [0.5, 0.0]]), gt).item() == pytest.approx(0.0)


# ----------------------------------------------------------------------------- binary F
def test_f_thresholds_are_official():
    th = f_thresholds()
    assert th.dtype == torch.float32 and th.numel() == 255
    assert th[0].item() == 0.0 and th[-1].item() == 1.0  # 1 - 1e-10 rounds to 1 in float32


def test_f_curve_by_hand_2x2():
    prob = _t([[0.9, 0.6], [0.3, 0.0]])
    gt = _t([[1, 0], [1, 0]], torch.long)
    curve = binary_frame_f_curves(prob, gt)[0].double()
    # thresholds k/254: t=0 -> 4 positives, tp 2: P=.5 R=1 -> 1.3*.5/(.15+1)
    # (0, .3] k=1..76 -> {.9,.6,.3}: P=2/3 R=1 -> 1.3*(2/3)/1.2
    # (.3, .6] k=77..152 -> {.9,.6}: P=R=.5 -> .5
    # (.6, .9] k=153..228 -> {.9}: P=1 R=.5 -> .65/.8
    # (.9, 1] k=229..254 -> nothing: 0/0 -> 0
    expected = np.concatenate([[0.65 / 1.15], np.full(76, 1.3 * (2 / 3) / 1.2), np.full(76, 0.5),
                               np.full(76, 0.65 / 0.8), np.zeros(26)])
    np.testing.assert_allclose(curve.numpy(), expected, rtol=1e-6)
    assert binary_scores_dataset_level([np.ones(1)], [curve.numpy()[None]])[1] == \
        pytest.approx(0.8125)


def test_f_curve_and_iou_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    prob = torch.rand(3, 6, 5, generator=g)
    prob[0, 0, :3] = torch.tensor([0.0, 1.0, f_thresholds()[100].item()])  # exact thresholds
    gt = (torch.rand(3, 6, 5, generator=g) > 0.6).long()
    gt[2, 0, 0] = 255  # an ignored pixel
    curves = binary_frame_f_curves(prob, gt)
    ious = binary_frame_iou(prob, gt)
    for i in range(3):
        keep = gt[i] != 255
        p, y = prob[i][keep], gt[i][keep].float()
        for k, th in enumerate(f_thresholds()):
            pos = (p >= th).float()
            tp = (pos * y).sum()
            prec, rec = tp / (pos.sum() + 1e-20), tp / (y.sum() + 1e-20)
            f = torch.nan_to_num(1.3 * prec * rec / (0.3 * prec + rec))
            assert curves[i, k].item() == pytest.approx(f.item(), abs=1e-6)
        b = (p > 0.5).float()
        iou = (b * y).sum() / (torch.maximum(b, y).sum() + 1e-7)
        assert ious[i].item() == pytest.approx(iou.item())


# ----------------------------------------------------------------------------- protocols
def _curve(**peaks):
    c = np.zeros((1, 255), dtype=np.float32)
    for k, v in peaks.items():
        c[0, int(k[1:])] = v
    return c


# Clip A: one frame; B: a sounding and an empty-GT frame; C: one frame; D: only an empty frame.
PROTOCOL_IOUS = [np.array([0.5]), np.array([0.7, 0.9]), np.array([0.2]), np.array([1.0])]
PROTOCOL_CURVES = [_curve(t0=1.0), _curve(t1=0.5), _curve(t0=0.8, t1=0.2), np.zeros((0, 255))]


@pytest.mark.parametrize(
    "batch_size, m_j, m_f",
    [
        # bs 1: J (.5 + .8 + .2 + 1)/4; F (1 + .5 + .8 + 0)/4 (D has no valid frame: 0, counted)
        (1, 0.625, 0.575),
        # bs 2: [A,B] J .7, mean curve (.5, .25) -> .5; [C,D] J .6, curve C -> .8
        (2, 0.65, 0.65),
        # bs 3: [A,B,C] J 2.3/4, curve (.6, .2333) -> .6; [D] J 1, F 0 (counted)
        (3, (0.575 + 1.0) / 2, 0.3),
        # bs 4: all frames: J 3.3/5; curve (1.8/3, .7/3) -> .6
        (4, 0.66, 0.6),
    ],
)
def test_batch_protocol_depends_on_batch_size(batch_size, m_j, m_f):
    got = binary_scores_batch_protocol(PROTOCOL_IOUS, PROTOCOL_CURVES, batch_size)
    assert got == pytest.approx((m_j, m_f))


def test_dataset_level_protocol_and_empty_batches():
    assert binary_scores_dataset_level(PROTOCOL_IOUS, PROTOCOL_CURVES) == \
        pytest.approx((0.66, 0.6))
    # a batch of clips with only empty-GT frames scores F = 0 and still counts (official)
    assert binary_scores_batch_protocol([np.ones(2), np.ones(1)],
                                        [np.zeros((0, 255)), _curve(t0=0.9)], 1) \
        == pytest.approx((1.0, 0.45))
    # no sounding frame at all: M_F is undefined (NaN), not 0; M_J is still defined
    silent = ([np.ones(2), np.ones(1)], [np.zeros((0, 255))] * 2)
    for m_j, m_f in (binary_scores_batch_protocol(*silent, 1),
                     binary_scores_dataset_level(*silent)):
        assert m_j == 1.0 and np.isnan(m_f)
    # a batch without any annotated frame has nothing to average and is left out
    assert binary_scores_batch_protocol(
        [np.array([0.4]), np.zeros(0)], [_curve(t0=0.9), np.zeros((0, 255))], 1) == \
        pytest.approx((0.4, 0.9))
    with pytest.raises(ValueError, match="F_BATCH_SIZE"):
        binary_scores_batch_protocol(PROTOCOL_IOUS, PROTOCOL_CURVES, 0)


# ----------------------------------------------------------------------------- AVSS
def _avss_example():
    gt = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
    pred = torch.tensor([[[0, 1], [0, 0]], [[2, 0], [0, 0]]])
    return pred, gt


def test_avss_frame_class_scores_by_hand():
    pred, gt = _avss_example()
    iou, fscore, present = avss_frame_class_scores(pred, gt, num_classes=4)
    # frame 0: c0 P3 G2 I2 -> IoU 2/3, F(P 2/3, R 1); c1 P1 G2 I1 -> .5, F(1, .5)
    # frame 1: c0 P3 G4 I3 -> .75, F(1, .75); c2 P1 G0 -> IoU 0, counted, F NaN -> 0
    np.testing.assert_allclose(iou.numpy(), [[2 / 3, 0.5, 0, 0], [0.75, 0, 0, 0]], rtol=1e-12)
    np.testing.assert_allclose(
        fscore.numpy(), [[1.3 * (2 / 3) / 1.2, 0.8125, 0, 0], [0.975 / 1.05, 0, 0, 0]], rtol=1e-12)
    assert present.tolist() == [[True, True, False, False], [True, False, True, False]]


def test_avss_scores_absent_classes_and_no_bg_quirk():
    pred, gt = _avss_example()
    iou, fscore, present = avss_frame_class_scores(pred, gt, num_classes=4)
    s = avss_scores(iou.sum(0).numpy(), fscore.sum(0).numpy(), present.sum(0).numpy())
    per_iou = [(2 / 3 + 0.75) / 2, 0.5, 0.0, 0.0]  # class 3 never occurs: count 0 -> 0
    per_f = [(1.3 * (2 / 3) / 1.2 + 0.975 / 1.05) / 2, 0.8125, 0.0, 0.0]
    np.testing.assert_allclose(s["per_class_iou"], per_iou)
    assert s["mIoU"] == pytest.approx(sum(per_iou) / 4)  # mean over all K+1 classes
    assert s["F"] == pytest.approx(sum(per_f) / 4)
    # "noBg" drops the LAST index (official quirk), not background 0
    assert s["mIoU_noBg"] == pytest.approx(sum(per_iou[:3]) / 3)
    assert s["F_noBg"] == pytest.approx(sum(per_f[:3]) / 3)


def test_avss_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="number of classes"):
        avss_frame_class_scores(torch.zeros(1, 2, 2, dtype=torch.long),
                                torch.full((1, 2, 2), 7), num_classes=4)


# ----------------------------------------------------------------------------- evaluator
def _write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)  # 2-D uint8 -> mode L
    return str(path)


def _register(name, dicts, evaluator_type, classes=None):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    meta = MetadataCatalog.get(name).set(evaluator_type=evaluator_type, ignore_label=255)
    if classes is not None:
        meta.set(stuff_classes=classes)


# Binary clips of 2 frames, 4x4. Ground truth 0/1 per frame; None = unannotated frame.
BINARY_GT = [
    [[[1] * 4] * 2 + [[0] * 4] * 2, [[1, 1, 0, 0]] * 4],
    [[[0] * 4] * 4, [[0] * 4] * 4],  # silent clip
    [[[0, 1, 1, 0]] * 4, None],
    [[[1] * 4] * 4, [[0, 0, 0, 1]] * 4],
    [[[1, 0, 0, 0]] * 4, [[0] * 4] * 4],
]


def _binary_dicts(root, write=True):
    dicts = []
    for i, frames in enumerate(BINARY_GT):
        files = [None if m is None else str(root / "b{}_{}.png".format(i, t))
                 for t, m in enumerate(frames)]
        for path, m in zip(files, frames):
            if write and path is not None:
                _write_png(path, 255 * np.array(m))
        dicts.append({"clip_id": "clip{}".format(i), "file_names": ["f"] * 2,
                      "sem_seg_file_names": files, "mask_format": "binary",
                      "height": 4, "width": 4})
    return dicts


def _binary_output(i):
    prob = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(i))
    return {"sem_seg": torch.stack([1 - prob, prob], 1)}


def _expected_binary(order, batch_size):
    """(batch-protocol, dataset-level) (M_J, M_F) of the binary clips taken in `order`."""
    ious, curves = [], []
    for i in order:
        prob = _binary_output(i)["sem_seg"][:, 1]
        frames = [t for t, m in enumerate(BINARY_GT[i]) if m is not None]
        gt = torch.tensor([BINARY_GT[i][t] for t in frames])
        ious.append(binary_frame_iou(prob[frames], gt).numpy())
        sounding = gt.flatten(1).any(1)
        curves.append(binary_frame_f_curves(prob[frames][sounding], gt[sounding]).numpy())
    return binary_scores_batch_protocol(ious, curves, batch_size), \
        binary_scores_dataset_level(ious, curves)


def test_evaluator_binary_end_to_end(tmp_path):
    dicts = _binary_dicts(tmp_path)
    _register("avs_test_binary", dicts, "avs_binary")
    out_dir = tmp_path / "out"
    ev = AVSEvaluator("avs_test_binary", str(out_dir), distributed=False, f_batch_size=2)
    ev.reset()
    for i, d in enumerate(dicts):
        ev.process([d], [_binary_output(i)])
    res = ev.evaluate()["sem_seg"]
    assert list(res) == ["M_J", "M_J_official_bs2", "M_F_official_bs2", "M_F_dataset",
                         "fg_rate", "fg_rate_silent"]
    (j_off, f_off), (j_ds, f_ds) = _expected_binary(range(len(dicts)), 2)
    assert res["M_J"] == pytest.approx(100 * j_ds)
    assert res["M_J_official_bs2"] == pytest.approx(100 * j_off)
    assert res["M_F_official_bs2"] == pytest.approx(100 * f_off)
    assert res["M_F_dataset"] == pytest.approx(100 * f_ds)
    silent_prob = _binary_output(1)["sem_seg"][:, 1]
    assert res["fg_rate_silent"] == pytest.approx(100 * (silent_prob > 0.5).double().mean().item())
    assert os.listdir(out_dir) == ["avs_results.json"]  # no temp file left
    report = json.loads((out_dir / "avs_results.json").read_text())
    assert report["metrics"] == pytest.approx(dict(res))
    assert report["settings"]["f_batch_size"] == 2 and report["num_silent_clips"] == 1


def test_evaluator_prefix_and_eval_size(tmp_path):
    # ground truth and probabilities constant on 2x2 blocks: scoring at 2x2 equals scoring 4x4
    block = np.kron(np.array([[1, 0], [0, 0]]), np.ones((2, 2)))
    path = _write_png(tmp_path / "m.png", 255 * block)
    d = {"clip_id": "c", "file_names": ["f"], "sem_seg_file_names": [path],
         "mask_format": "binary", "height": 4, "width": 4}
    _register("avs_test_resize", [d], "avs_binary")
    prob = torch.from_numpy(np.kron(np.array([[0.9, 0.7], [0.2, 0.4]]), np.ones((2, 2)))).float()
    out = {"sem_seg": torch.stack([1 - prob, prob])[None]}
    ev = AVSEvaluator("avs_test_resize", str(tmp_path), distributed=False, eval_size=2,
                      prefix="silenced")
    ev.reset()
    ev.process([d], [out])
    res = ev.evaluate()["sem_seg"]
    assert res["silenced/M_J"] == pytest.approx(50.0)  # I 1, U 2 at 2x2
    assert res["silenced/fg_rate"] == pytest.approx(50.0)
    assert "silenced/fg_rate_silent" not in res
    assert os.path.isfile(tmp_path / "avs_results_silenced.json")


def test_evaluator_from_config(tmp_path):
    from detectron2.config import get_cfg

    from selm_d2.config import add_selm_config

    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.AVS.F_BATCH_SIZE = 1
    dicts = _binary_dicts(tmp_path)
    _register("avs_test_cfg", dicts, "avs_binary")
    ev = AVSEvaluator(cfg, "avs_test_cfg", distributed=False, prefix="other")
    ev.reset()
    ev.process([dicts[0]], [_binary_output(0)])
    assert "other/M_F_official_bs1" in ev.evaluate()["sem_seg"]
    assert os.path.isfile(tmp_path / "avs_results_other.json")


def test_evaluator_rejects_bad_input(tmp_path):
    dicts = _binary_dicts(tmp_path)
    _register("avs_test_bad", dicts, "sem_seg")
    with pytest.raises(ValueError, match="evaluator_type"):
        AVSEvaluator("avs_test_bad", distributed=False)
    _register("avs_test_bad", dicts, "avs_binary")
    ev = AVSEvaluator("avs_test_bad", distributed=False)
    with pytest.raises(ValueError, match="clip0"):
        ev.process([dicts[0]], [{"sem_seg": torch.zeros(2, 2, 3, 4)}])


def _official_avss_sums(logits, labels, num_classes):
    """AVSBench avss/test.py on one batch, restated: per frame, ``argmax(softmax) + 1`` and
    ``label + 1`` are histogrammed into classes 1..C (torch.histc); IoU = I / (U + eps),
    F from I/P and I/G with NaN -> 0, and a class counts in a frame when U > 0.

    logits: [N, C, H, W] as the official model outputs them (zeros on padding frames);
    labels: [N, H, W], zeros where the loader padded. Returns [3, C] sums (IoU, F, count).
    """
    predict = torch.argmax(torch.softmax(logits, 1), 1).float() + 1
    target = labels.float() + 1
    inter_map = predict * (predict == target).float()
    sums = torch.zeros(3, num_classes, dtype=torch.float64)
    for i in range(labels.shape[0]):
        def hist(x):
            return torch.histc(x, bins=num_classes, min=1, max=num_classes).double()
        inter, area_p, area_g = hist(inter_map[i]), hist(predict[i]), hist(target[i])
        union = area_p + area_g - inter
        f = 1.3 * (inter / area_p) * (inter / area_g) / (0.3 * (inter / area_p) + inter / area_g)
        sums += torch.stack([inter / (2.220446049250313e-16 + union),
                             torch.nan_to_num(f, nan=0.0), (union > 0).double()])
    return sums


def _avss_clip(root, protocol):
    """One 3-frame clip: annotated (classes 0/1/2), unannotated (None), annotated."""
    gt0 = [[0, 1], [1, 0]]
    gt1 = [[0, 0], [2, 2]]
    files = [_write_png(root / "a0.png", gt0), None, _write_png(root / "a2.png", gt1)]
    d = {"clip_id": "s", "file_names": ["f"] * 3, "sem_seg_file_names": files,
         "mask_format": "avss_index", "height": 2, "width": 2}
    _register("avs_test_avss", [d], "avss", ["background", "a", "b", "c"])
    pred = torch.tensor([[[0, 1], [0, 0]], [[3, 3], [3, 3]], [[0, 0], [2, 1]]])
    probs = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    ev = AVSEvaluator("avs_test_avss", str(root), distributed=False, avss_protocol=protocol)
    ev.reset()
    ev.process([d], [{"sem_seg": probs}])
    return ev.evaluate()["sem_seg"], pred, (gt0, gt1)


def test_evaluator_avss_protocols(tmp_path):
    res, pred, (gt0, gt1) = _avss_clip(tmp_path, "annotated")
    iou, fscore, present = avss_frame_class_scores(pred[[0, 2]], torch.tensor([gt0, gt1]), 4)
    annotated = avss_scores(iou.sum(0).numpy(), fscore.sum(0).numpy(),
                            present.sum(0).numpy().astype(float))
    assert list(res) == ["mIoU", "F", "mIoU_noBg", "F_noBg", "mIoU_annotated", "F_annotated",
                         "mIoU_official", "F_official", "fg_rate"]
    assert res["mIoU"] == res["mIoU_annotated"] == pytest.approx(100 * annotated["mIoU"])
    assert res["F_noBg"] == pytest.approx(100 * annotated["F_noBg"])
    assert res["fg_rate"] == pytest.approx(100 * (1 / 4 + 2 / 4) / 2)  # unannotated frame dropped

    # official: the batch the AVSBench loader and model make of this clip: 10 frames, the
    # missing label and the 7 padding labels zero, logits of the 7 padding frames zeroed
    logits = torch.zeros(10, 4, 2, 2)
    logits[:3] = 5.0 * torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2)
    labels = torch.zeros(10, 2, 2, dtype=torch.long)
    labels[0], labels[2] = torch.tensor(gt0), torch.tensor(gt1)
    official = avss_scores(*_official_avss_sums(logits, labels, 4).numpy())
    res_official, _, _ = _avss_clip(tmp_path, "official")
    assert res_official["mIoU"] == pytest.approx(100 * official["mIoU"])
    assert res_official["F"] == pytest.approx(100 * official["F"])
    assert res_official["mIoU_noBg"] == pytest.approx(100 * official["mIoU_noBg"])
    for key in ("mIoU_annotated", "F_annotated", "mIoU_official", "F_official"):
        assert res_official[key] == pytest.approx(res[key])  # both reported either way
    assert res["mIoU_official"] == pytest.approx(res_official["mIoU"]) != res["mIoU"]
    report = json.loads((tmp_path / "avs_results.json").read_text())
    assert report["settings"]["avss_protocol"] == "official"
    per_class = report["per_class"]
    assert list(per_class) == ["background", "a", "b", "c"]
    # background: 2 annotated frames + the unannotated one (predicted "c") + 7 padding frames
    assert per_class["background"]["num_frames"] == 10 and per_class["c"]["num_frames"] == 1
    with pytest.raises(ValueError, match="AVSS_PROTOCOL"):
        AVSEvaluator("avs_test_avss", None, distributed=False, avss_protocol="padded")


def test_evaluator_all_silent_set_has_undefined_f(tmp_path):
    dicts = _binary_dicts(tmp_path)[1:2] * 3  # the silent clip, three times
    _register("avs_test_silent", dicts, "avs_binary")
    ev = AVSEvaluator("avs_test_silent", str(tmp_path), distributed=False, f_batch_size=2)
    ev.reset()
    for d in dicts:
        ev.process([d], [_binary_output(1)])
    res = ev.evaluate()["sem_seg"]
    assert np.isnan(res["M_F_dataset"]) and np.isnan(res["M_F_official_bs2"])
    assert 0 < res["M_J"] < 100  # defined: the fraction of pixels predicted background
    metrics = json.loads((tmp_path / "avs_results.json").read_text())["metrics"]
    assert metrics["M_F_dataset"] is None and metrics["M_F_official_bs2"] is None
    assert metrics["M_J"] == pytest.approx(res["M_J"])


# ----------------------------------------------------------------------------- distributed
def _distributed_worker(rank, root, result_file):
    import torch.distributed as dist
    from detectron2.data.samplers import InferenceSampler

    dist.init_process_group("gloo", init_method="file://" + os.path.join(root, "pg"),
                            rank=rank, world_size=2)
    try:
        dicts = _binary_dicts(pathlib.Path(root), write=False)
        _register("avs_test_dist", dicts, "avs_binary")
        ev = AVSEvaluator("avs_test_dist", os.path.join(root, "out"), f_batch_size=2)
        ev.reset()
        for i in InferenceSampler(len(dicts)):  # contiguous shard of this rank
            ev.process([dicts[i]], [_binary_output(i)])
        res = ev.evaluate()
        if rank == 0:
            with open(result_file, "w") as f:
                json.dump(res["sem_seg"], f)
        else:
            assert res == {}
    finally:
        dist.destroy_process_group()


def test_evaluator_two_processes_match_single_process(tmp_path):
    dicts = _binary_dicts(tmp_path)
    _register("avs_test_dist", dicts, "avs_binary")
    ev = AVSEvaluator("avs_test_dist", None, distributed=False, f_batch_size=2)
    ev.reset()
    for i, d in enumerate(dicts):
        ev.process([d], [_binary_output(i)])
    single = ev.evaluate()["sem_seg"]
    # rank 1's clips before rank 0's would change the official batches: an order bug shows
    (_, f_swapped), _ = _expected_binary([3, 4, 0, 1, 2], 2)
    assert 100 * f_swapped != pytest.approx(single["M_F_official_bs2"])
    result_file = str(tmp_path / "dist.json")
    # fork: the workers inherit the imported modules (spawn would re-import torch twice)
    mp.start_processes(_distributed_worker, args=(str(tmp_path), result_file), nprocs=2,
                       start_method="fork")
    with open(result_file) as f:
        multi = json.load(f)
    assert multi == pytest.approx(dict(single))
    assert sorted(os.listdir(tmp_path / "out")) == ["avs_results.json"]
