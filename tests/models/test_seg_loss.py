"""The segmentation loss: cross-entropy plus soft Dice, with ignored pixels left out of both."""

import torch

from parvis.models.base import soft_dice_loss


def test_dice_is_zero_for_a_confident_right_answer_and_high_for_a_wrong_one():
    targets = torch.randint(0, 3, (2, 8, 8))
    right = torch.nn.functional.one_hot(targets, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(right, targets).item() < 1e-3
    wrong = torch.nn.functional.one_hot((targets + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(wrong, targets).item() > 0.95


def test_a_small_class_counts_as_much_as_the_background():
    targets = torch.zeros(1, 16, 16, dtype=torch.long)
    targets[0, :2, :2] = 1  # 4 of 256 pixels
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 0] = 10  # everything called background: pixel accuracy 98%
    assert torch.nn.functional.cross_entropy(logits, targets).item() < 0.2
    assert soft_dice_loss(logits, targets).item() > 0.35  # class 1 Dice ~0 (0.2 with the smoothing): ~half the mean


def test_ignored_pixels_change_nothing():
    targets = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    masked = targets.clone()
    masked[:, :4] = 255
    garbage = logits.clone()
    garbage[:, :, :4] = torch.randn(2, 3, 4, 8) * 100
    assert torch.allclose(soft_dice_loss(logits[:, :, 4:], targets[:, 4:]), soft_dice_loss(garbage, masked, 255))
