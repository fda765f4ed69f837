"""P@1: exact values on hand-made scores, accumulation across batches, reset."""

from __future__ import annotations

import torch

from ptuning_lightning.lama.metrics import PrecisionAtOne

# Four examples over three candidates; the argmax is candidate 2, 0, 1, 1.
SCORES = torch.tensor([[0.1, 0.2, 0.7], [0.9, 0.0, 0.1], [0.2, 0.5, 0.3], [-1.0, 3.0, 2.0]])


def test_three_of_four_right():
    """P@1 is the share of examples whose top candidate is the gold one."""
    metric = PrecisionAtOne()
    metric.update(SCORES, torch.tensor([2, 0, 1, 2]))
    assert metric.compute().item() == 0.75


def test_accumulates_over_batches():
    """Batches of different sizes count per example, not per batch (3/4 and 0/1 -> 3/5)."""
    metric = PrecisionAtOne()
    metric.update(SCORES, torch.tensor([2, 0, 1, 2]))
    metric.update(SCORES[:1], torch.tensor([0]))
    assert (metric.correct.item(), metric.total.item()) == (3, 5)
    assert metric.compute().item() == torch.tensor(3 / 5).item()


def test_reset_starts_over():
    """reset() (Lightning calls it every epoch) forgets earlier batches."""
    metric = PrecisionAtOne()
    metric.update(SCORES, torch.tensor([0, 1, 2, 0]))  # all wrong
    assert metric.compute().item() == 0.0
    metric.reset()
    metric.update(SCORES[:2], torch.tensor([2, 0]))
    assert metric.compute().item() == 1.0


def test_empty_metric_is_zero_not_nan():
    """A split that saw no examples reports 0, never NaN from 0/0."""
    assert PrecisionAtOne().compute().item() == 0.0
