import math

import pytest
import torch

from detectron2.config import get_cfg

from selm_d2.config import add_selm_config
from selm_d2.modeling.criterion import SelMCriterion, dice_loss


def _outputs(n, c, requires_grad=True):
    torch.manual_seed(0)
    pred = torch.randn(n, c, 8, 10, requires_grad=requires_grad)
    aux = [torch.randn(n, c, s, s, requires_grad=requires_grad) for s in (2, 4, 8)]
    return {"pred_masks": pred, "aux_masks": aux}


def _criterion(num_classes=1, **kw):
    args = dict(num_classes=num_classes, dice_weight=1.0, bce_weight=1.0, ce_weight=1.0,
                aux_weights=[0.001, 0.01, 0.1])
    args.update(kw)
    return SelMCriterion(**args)


def test_from_config_binary_keys_and_grad():
    cfg = get_cfg()
    add_selm_config(cfg)
    crit = SelMCriterion(cfg)
    out = _outputs(4, 1)
    gt = torch.randint(0, 2, (4, 31, 37))
    losses = crit(out, gt, torch.ones(4, dtype=torch.bool))
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_bce", "loss_dice"]
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert out["pred_masks"].grad.abs().sum() > 0
    assert all(a.grad.abs().sum() > 0 for a in out["aux_masks"])


def test_semantic_ce_keys_and_values():
    crit = _criterion(num_classes=3, semantic_loss="ce")
    out = _outputs(2, 4)
    gt = torch.randint(0, 4, (2, 16, 20))
    losses = crit(out, gt, torch.ones(2, dtype=torch.bool))
    assert sorted(losses) == ["loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_ce"]
    up = torch.nn.functional.interpolate(out["pred_masks"], size=(16, 20), mode="bilinear",
                                         align_corners=False)
    expected = torch.nn.functional.cross_entropy(up, gt)
    assert torch.allclose(losses["loss_ce"], expected, atol=1e-6)


def test_semantic_bce_is_the_paper_reading_of_eq6():
    # BCE on the one-hot K+1 channels + auxiliary DICE per channel; no CE, no final DICE.
    crit = _criterion(num_classes=3, aux_weights=[0.0, 0.0, 1.0])
    out = _outputs(2, 4)
    gt = torch.randint(0, 4, (2, 16, 20))
    losses = crit(out, gt, torch.ones(2, dtype=torch.bool))
    assert sorted(losses) == ["loss_aux_2", "loss_bce"]
    up = lambda x: torch.nn.functional.interpolate(  # noqa: E731
        x, size=(16, 20), mode="bilinear", align_corners=False)
    onehot = torch.nn.functional.one_hot(gt, 4).permute(0, 3, 1, 2).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(up(out["pred_masks"]), onehot)
    assert torch.allclose(losses["loss_bce"], expected, atol=1e-6)
    aux = up(out["aux_masks"][2]).flatten(0, 1)
    expected = dice_loss(aux, onehot.flatten(0, 1), torch.ones_like(aux, dtype=torch.bool))
    assert torch.allclose(losses["loss_aux_2"], expected, atol=1e-6)
    total = sum(losses.values())
    total.backward()
    assert out["pred_masks"].grad.abs().sum() > 0 and out["aux_masks"][2].grad.abs().sum() > 0


@pytest.mark.parametrize("semantic_loss", ["bce", "ce"])
def test_semantic_losses_ignore_unannotated_frames_and_pixels(semantic_loss):
    crit = _criterion(num_classes=3, semantic_loss=semantic_loss)
    out = _outputs(3, 4)
    gt = torch.randint(0, 4, (3, 8, 10))
    gt[2, :3] = 255
    flags = torch.tensor([True, False, True])
    ref = crit(out, gt, flags)
    changed = gt.clone()
    changed[1] = (changed[1] + 1) % 4  # unannotated frame
    for key, value in crit(out, changed, flags).items():
        assert torch.allclose(value, ref[key]), key
    # Only frames 0 and 2, and not frame 2's ignored rows (255), enter the BCE.
    if semantic_loss == "bce":
        pred = out["pred_masks"][[0, 2]]
        target = gt[[0, 2]]
        valid = (target != 255)[:, None].expand(-1, 4, -1, -1)
        onehot = torch.nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float()
        manual = torch.nn.functional.binary_cross_entropy_with_logits(pred[valid], onehot[valid])
        assert torch.allclose(ref["loss_bce"], manual, atol=1e-6)


def test_bad_semantic_loss_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SELM.LOSS.SEMANTIC='dice' is unknown"):
        _criterion(num_classes=3, semantic_loss="dice")
    with pytest.raises(ValueError, match="BCE_WEIGHT"):
        _criterion(num_classes=3, bce_weight=0.0)
    assert _criterion(num_classes=3, bce_weight=0.0, semantic_loss="ce")


def test_only_annotated_frames_and_pixels_count():
    crit = _criterion(aux_weights=[0.0, 0.0, 1.0])
    out = _outputs(3, 1)
    gt = torch.randint(0, 2, (3, 8, 10))
    flags = torch.tensor([True, False, True])
    ref = crit(out, gt, flags)
    # Changing an unannotated frame, or ignored pixels, changes nothing.
    gt2 = gt.clone()
    gt2[1] = 1 - gt2[1]
    gt3 = gt.clone()
    gt3[0, :2] = 255
    assert torch.allclose(crit(out, gt2, flags)["loss_bce"], ref["loss_bce"])
    changed = crit(out, gt3, flags)["loss_bce"]
    assert not torch.allclose(changed, ref["loss_bce"])
    pred = out["pred_masks"][[0, 2], 0]
    valid = gt3[[0, 2]] != 255
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        pred[valid], gt3[[0, 2]][valid].float())
    assert torch.allclose(changed, manual, atol=1e-6)


def test_zero_weights_drop_terms():
    crit = _criterion(dice_weight=0.0, aux_weights=[0.0, 0.1, 0.0])
    losses = crit(_outputs(2, 1), torch.zeros(2, 8, 10, dtype=torch.long),
                  torch.ones(2, dtype=torch.bool))
    assert sorted(losses) == ["loss_aux_1", "loss_bce"]


@pytest.mark.parametrize("num_classes", [1, 5])
def test_empty_and_unannotated_give_finite_connected_losses(num_classes):
    c = 1 if num_classes == 1 else num_classes + 1
    crit = _criterion(num_classes=num_classes)
    out = _outputs(2, c)
    empty = crit(out, torch.zeros(2, 8, 10, dtype=torch.long), torch.ones(2, dtype=torch.bool))
    assert all(torch.isfinite(v) for v in empty.values())
    assert sum(empty.values()) > 0  # empty GT still penalises foreground predictions

    for gt, flags in [(torch.full((2, 8, 10), 255), torch.ones(2, dtype=torch.bool)),
                      (torch.zeros(2, 8, 10, dtype=torch.long), torch.zeros(2, dtype=torch.bool))]:
        out = _outputs(2, c)
        losses = crit(out, gt, flags)
        assert len(losses) == (5 if num_classes == 1 else 4)
        total = sum(losses.values())
        assert total.item() == 0.0
        total.backward()
        assert out["pred_masks"].grad is not None
        assert all(a.grad is not None for a in out["aux_masks"])


def test_dice_loss_values():
    gt = torch.zeros(1, 4, 4)
    gt[0, :2] = 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    perfect = dice_loss(torch.where(gt > 0, 50.0, -50.0), gt, valid)
    assert perfect < 1e-6
    empty_gt_logits = torch.full((1, 4, 4), -50.0)
    assert dice_loss(empty_gt_logits, torch.zeros(1, 4, 4), valid) < 1e-6
    half = dice_loss(torch.zeros(1, 4, 4), gt, valid)  # p = 0.5 everywhere
    assert math.isclose(half.item(), 1 - (2 * 4 + 1) / (8 + 8 + 1), rel_tol=1e-5)


def test_aux_weight_count_mismatch_names_key():
    crit = _criterion(aux_weights=[0.1, 0.1])
    with pytest.raises(ValueError, match="AUX_WEIGHTS"):
        crit(_outputs(1, 1), torch.zeros(1, 8, 10, dtype=torch.long),
             torch.ones(1, dtype=torch.bool))
