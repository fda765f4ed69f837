"""Metrics as torchmetrics states that sum exactly across DDP ranks."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class PrecisionAtOne(Metric):
    """P@1: the share of examples whose top-scoring candidate is the gold one."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """``scores`` (B, C) over candidates; ``target`` (B,) the gold candidate index."""
        self.correct += (scores.argmax(dim=-1) == target).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)
