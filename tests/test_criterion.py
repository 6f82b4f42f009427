"""SelMCriterion against the authors' loss.py (S4, MS3, AVSS) and hand computations."""
import pytest
import torch
from torch.nn import functional as F

from detectron2.config import get_cfg

from selm_d2.config import add_selm_config
from selm_d2.modeling.criterion import SelMCriterion, dice_loss

import official

AUX = [0.001, 0.01, 0.1]  # the authors' hard-coded hit-map weights


def _predictions(n, channels, size=(16, 16), seed=0):
    """Mask logits and three hit maps (2 tokens, one-hot per pixel, coarse to fine)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, channels, *size, generator=g, requires_grad=True)
    maps = []
    for side in (2, 4, 8):
        hard = F.one_hot(torch.randint(0, 2, (n, side, side), generator=g), 2)
        maps.append(hard.permute(0, 3, 1, 2).float().requires_grad_())
    return logits, maps


def _binary_targets(n, size=(16, 16), seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *size, generator=g) > 0.6).long()


def _check_against(losses, total, parts=None):
    torch.testing.assert_close(sum(losses.values()), total, rtol=1e-5, atol=1e-6)
    for key, value in (parts or {}).items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_ms3_equals_the_authors_loss_and_gradients():
    """MS3: every frame annotated; DICE + BCE + the hit-map DICE of the audio token."""
    official.require_official()
    loss = official.load_task("avs_ms3").loss
    logits, maps = _predictions(10, 1)
    targets = _binary_targets(10)
    losses = SelMCriterion(num_classes=1, aux_weights=AUX)(
        logits, maps, targets, torch.ones(10, dtype=torch.bool))
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_bce", "loss_dice"]
    gt = targets.float()[:, None]
    ref_logits = logits.detach().clone().requires_grad_()
    ref_maps = [m.detach().clone().requires_grad_() for m in maps]
    total, _ = loss.Seg_Loss(ref_logits, gt, hitmaps=ref_maps)
    _check_against(losses, total, {"loss_dice": loss.F5_Dice_Loss(logits, gt),
                                   "loss_bce": loss.F5_sigmoid_Focal_loss(logits, gt)})
    sum(losses.values()).backward()
    total.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    for ours, theirs in zip(maps, ref_maps):
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_s4_counts_the_first_frame_of_each_clip_only():
    """S4 training clips annotate frame 1: with those flags the losses are the authors' S4
    losses (which index frames 0, 5, ...); the other frames' targets do not matter."""
    official.require_official()
    loss = official.load_task("avs_s4").loss
    logits, maps = _predictions(10, 1)
    targets = torch.full((10, 16, 16), 255, dtype=torch.long)
    first = _binary_targets(2)
    targets[0], targets[5] = first[0], first[1]
    flags = torch.zeros(10, dtype=torch.bool)
    flags[[0, 5]] = True
    losses = SelMCriterion(num_classes=1, aux_weights=AUX)(logits, maps, targets, flags)
    total, _ = loss.Seg_Loss(logits, first.float()[:, None], hitmaps=maps)
    _check_against(losses, total)
    # Other frames' ground truth is not read.
    targets[1:5] = 1
    again = SelMCriterion(num_classes=1, aux_weights=AUX)(logits, maps, targets, flags)
    for key in losses:
        torch.testing.assert_close(again[key], losses[key])


def test_avss_equals_the_authors_loss():
    """AVSS: CE over K+1 logits (per-frame pixel mean, then mean over annotated frames) + the
    hit-map DICE against the foreground (the authors' loss_type "bce" path, with their frame
    flags); padding and unannotated frames do not count."""
    official.require_official()
    loss = official.load_task("avss").loss
    logits, maps = _predictions(10, 71)
    g = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 71, (10, 16, 16), generator=g)
    targets[:, :4] = 0  # some background in every frame
    flags = torch.ones(10, dtype=torch.bool)
    flags[[1, 7, 8, 9]] = False  # an unannotated frame, three padding frames
    ours_targets = targets.clone()
    ours_targets[~flags] = 255
    losses = SelMCriterion(num_classes=70, aux_weights=AUX)(logits, maps, ours_targets, flags)
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_ce"]
    ref_logits = logits.detach().clone().requires_grad_()
    total, _ = loss.Seg_Loss(ref_logits, targets, flags.float(), loss_type="bce", hitmaps=maps)
    _check_against(losses, total, {"loss_ce": loss.F10_IoU_BCELoss(logits, targets,
                                                                   flags.float())})
    losses["loss_ce"].backward()
    loss.F10_IoU_BCELoss(ref_logits, targets, flags.float()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_dice_by_hand():
    """1 - 2 sum(p g) / (sum(p^2) + 0.001 + sum(g^2) + 0.001), per frame, then the mean."""
    gt = torch.zeros(2, 4, 4)
    gt[0, :2] = 1  # 8 foreground pixels; frame 1 empty
    valid = torch.ones_like(gt, dtype=torch.bool)
    half = dice_loss(torch.zeros(2, 4, 4), gt, valid)  # p = 0.5 everywhere: sum p^2 = 4
    frame0 = 1 - 2 * 4 / (4 + 0.001 + 8 + 0.001)
    frame1 = 1 - 0 / (4 + 0.001 + 0.001)
    torch.testing.assert_close(half, torch.tensor((frame0 + frame1) / 2))
    perfect = dice_loss(torch.where(gt > 0, 50.0, -50.0)[:1], gt[:1], valid[:1])
    assert perfect < 1e-3


def test_ignored_pixels_are_left_out():
    """Pixels marked 255 count neither in the DICE sums nor in the BCE mean."""
    logits, maps = _predictions(2, 1, size=(4, 4))
    targets = _binary_targets(2, size=(4, 4))
    targets[0, 0] = 255  # one ignored row
    crit = SelMCriterion(num_classes=1, aux_weights=[0.0, 0.0, 1.0])
    losses = crit(logits, maps, targets, torch.ones(2, dtype=torch.bool))
    valid = targets != 255
    x, y = logits[:, 0][valid], targets[valid].float()
    bce = (torch.clamp(x, min=0) - x * y + torch.log1p(torch.exp(-x.abs()))).mean()
    torch.testing.assert_close(losses["loss_bce"], bce)
    p = logits[:, 0].sigmoid() * valid
    gt = targets.clamp(max=1).float() * valid
    dice = 1 - 2 * (p * gt).sum((1, 2)) / ((p * p).sum((1, 2)) + 0.001 + gt.sum((1, 2)) + 0.001)
    torch.testing.assert_close(losses["loss_dice"], dice.mean())
    changed = logits.detach().clone()
    changed[0, 0, 0] += 10.0  # an ignored row's logits
    again = crit(changed, maps, targets, torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(again["loss_dice"], losses["loss_dice"])
    torch.testing.assert_close(again["loss_bce"], losses["loss_bce"])


@pytest.mark.parametrize("num_classes", [1, 70])
def test_unannotated_batch_gives_zero_losses_connected_to_the_graph(num_classes):
    channels = 1 if num_classes == 1 else num_classes + 1
    logits, maps = _predictions(3, channels)
    crit = SelMCriterion(num_classes=num_classes, aux_weights=AUX)
    losses = crit(logits, maps, torch.full((3, 16, 16), 255), torch.zeros(3, dtype=torch.bool))
    assert len(losses) == (5 if num_classes == 1 else 4)
    total = sum(losses.values())
    assert total.item() == 0.0
    total.backward()
    assert logits.grad is not None and not logits.grad.any()
    assert all(m.grad is not None for m in maps)


def test_from_config_and_aux_weight_count():
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.SELM.NUM_CLASSES = 70
    cfg.MODEL.SELM.LOSS.AUX_WEIGHTS = [0.5, 0.25]
    crit = SelMCriterion(cfg)
    assert not crit.binary and crit.aux_weights == [0.5, 0.25]
    logits, maps = _predictions(2, 71)
    with pytest.raises(ValueError, match="AUX_WEIGHTS has 2 weights but CLEVER has 3"):
        crit(logits, maps, torch.zeros(2, 16, 16, dtype=torch.long),
             torch.ones(2, dtype=torch.bool))


def test_cross_entropy_averages_over_the_annotated_pixels_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    targets = torch.randint(0, 3, (1, 4, 4))
    targets[0, :2] = 255  # half the frame is not annotated
    maps = [torch.zeros(1, 2, s, s) for s in (1, 2, 4)]
    loss = SelMCriterion(num_classes=2, aux_weights=[0, 0, 0])(
        logits, maps, targets, torch.ones(1, dtype=torch.bool))["loss_ce"]
    assert torch.allclose(loss, F.cross_entropy(logits, targets, ignore_index=255))
