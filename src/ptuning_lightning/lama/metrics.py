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


class TopCandidates(Metric):
    """Each scored example's top candidate, by (relation, index in its split): what
    ``results.json`` keeps per fact (``test_predictions``, ``test_hits``), from which the
    collapse rate and the bootstrap intervals of ``ptl-report`` follow. List states gathered
    over DDP ranks; padding copies are left out, so every example appears exactly once."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("relation", "index", "top"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        scores: torch.Tensor,
        index: torch.Tensor,
        relation: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
    ) -> None:
        """``scores`` (B, C); ``index`` (B,) each example's position in its split;
        ``relation`` (B,) its relation (multi-relation mode; None: relation 0)."""
        counted = torch.ones_like(index, dtype=torch.bool) if padding is None else padding == 0
        relation = torch.zeros_like(index) if relation is None else relation
        self.relation.append(relation[counted])
        self.index.append(index[counted])
        self.top.append(scores.argmax(dim=-1)[counted])

    def compute(self) -> dict[int, dict[int, int]]:
        """{relation: {index: top candidate}}."""
        out: dict[int, dict[int, int]] = {}
        states = (self.relation, self.index, self.top)
        if isinstance(self.top, list):  # not synced: lists of per-batch tensors
            states = tuple(torch.cat(s) if s else torch.empty(0, dtype=torch.long) for s in states)
        for r, i, t in zip(*(s.tolist() for s in states), strict=True):
            out.setdefault(r, {})[i] = t
        return out


class RelationMean(Metric):
    """The mean of a per-example value (the training loss) per relation: sum states of size
    R, exact under DDP. One relation (R = 1) in a separate run."""

    full_state_update = False

    def __init__(self, n_relations: int = 1) -> None:
        super().__init__()
        self.n = n_relations
        self.add_state("sum", default=torch.zeros(n_relations), dist_reduce_fx="sum")
        self.add_state(
            "count", default=torch.zeros(n_relations, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, values: torch.Tensor, relation: torch.Tensor | None = None) -> None:
        values = values.detach().float()
        relation = torch.zeros_like(values, dtype=torch.long) if relation is None else relation
        self.sum += torch.bincount(relation, weights=values, minlength=self.n)
        self.count += torch.bincount(relation, minlength=self.n)

    def compute(self) -> torch.Tensor:
        """(R,) means; NaN for a relation that had no example this epoch."""
        return self.sum / self.count.float()
