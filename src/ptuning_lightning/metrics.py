"""Metrics as torchmetrics states that sum exactly across DDP ranks (padding copies, which
make every rank's share of a split the same size, are not counted)."""

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

    def update(
        self, scores: torch.Tensor, target: torch.Tensor, padding: torch.Tensor | None = None
    ) -> None:
        """``scores`` (B, C) over candidates; ``target`` (B,) the gold candidate index;
        ``padding`` (B,) 1 for the copies that pad a split across DDP ranks (not counted)."""
        counted = torch.ones_like(target, dtype=torch.bool) if padding is None else padding == 0
        self.correct += ((scores.argmax(dim=-1) == target) & counted).sum()
        self.total += counted.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class ExampleCount(PrecisionAtOne):
    """The n behind a P@1: how many examples were scored (padding copies left out), summed
    over DDP ranks. Under DDP it must equal the split's size, as on one process."""

    def compute(self) -> torch.Tensor:
        return self.total.clone()


class RelationPrecisionAtOne(Metric):
    """P@1 and n per relation (multi-relation mode): sum states of size R, exact under DDP."""

    full_state_update = False

    def __init__(self, n_relations: int) -> None:
        super().__init__()
        self.n = n_relations
        self.add_state(
            "correct", default=torch.zeros(n_relations, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state(
            "total", default=torch.zeros(n_relations, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, scores: torch.Tensor, target: torch.Tensor, relation: torch.Tensor) -> None:
        hit = scores.argmax(dim=-1) == target
        self.correct += torch.bincount(relation[hit], minlength=self.n)
        self.total += torch.bincount(relation, minlength=self.n)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P@1 per relation, n per relation)."""
        return self.correct.float() / self.total.clamp(min=1), self.total.clone()
