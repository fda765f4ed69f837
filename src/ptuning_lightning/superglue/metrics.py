"""SuperGLUE metrics as one torchmetrics state that is exact under DDP.

Every statistic is a sum (correct, confusion matrix, ReCoRD EM/F1 of the chosen candidates)
except MultiRC's exact match, which needs all answers of a question together: the (question,
correct) pairs are concatenated across ranks and grouped at ``compute``. Padding copies (see
``data.batching.EvalShardSampler``) are left out, so a DDP run counts every example once.

Definitions follow SuperGLUE: CB's F1 is the unweighted mean of the per-class F1; MultiRC's
F1a is the F1 of the "true" class over all answer options and its EM the share of questions
whose answers are all right; ReCoRD's EM and token F1 take the max over the gold answers
(SQuAD normalisation: lower case, no punctuation or articles).
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch
from torchmetrics import Metric

TASK_SCORE = "score"  # the task's one number: the mean of its metrics, as SuperGLUE averages


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


class SuperGlueMetric(Metric):
    """``metrics`` names what ``compute`` returns besides ``score``: ``acc``, ``f1`` (macro
    over ``n_classes``), ``f1a`` and ``em`` (MultiRC), ``record_em`` and ``record_f1``."""

    full_state_update = False
    KNOWN = ("acc", "f1", "f1a", "em", "record_em", "record_f1")

    def __init__(self, metrics: tuple[str, ...] = ("acc",), n_classes: int = 2) -> None:
        super().__init__()
        unknown = set(metrics) - set(self.KNOWN)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; known: {self.KNOWN}")
        self.names = tuple(metrics)
        self.n_classes = n_classes
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("confusion", default=torch.zeros(n_classes, n_classes), dist_reduce_fx="sum")
        self.add_state("record", default=torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("groups", default=[], dist_reduce_fx="cat")
        self.add_state("group_correct", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """``scores`` (B, C) over each example's candidates; ``batch`` gives ``label`` and,
        where the task needs them, ``group``, ``candidate_em``/``candidate_f1``, ``padding``."""
        label = batch["label"]
        counted = batch["padding"] == 0 if "padding" in batch else torch.ones_like(label).bool()
        pred, label = scores.argmax(-1)[counted], label[counted]
        hit = pred == label
        self.correct += hit.sum()
        self.total += hit.numel()
        if pred.numel() and scores.size(-1) == self.n_classes:
            index = label * self.n_classes + pred
            self.confusion += (
                torch.bincount(index, minlength=self.n_classes**2)
                .view(self.n_classes, self.n_classes)
                .to(self.confusion)
            )
        if "candidate_em" in batch:
            rows = torch.arange(pred.numel(), device=pred.device)
            self.record[0] += batch["candidate_em"][counted][rows, pred].sum().double()
            self.record[1] += batch["candidate_f1"][counted][rows, pred].sum().double()
        if "group" in batch:
            self.groups.append(batch["group"][counted])
            self.group_correct.append(hit)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.total.clamp(min=1).double()
        values = {"acc": self.correct / total}
        matrix = self.confusion.double()  # rows: gold, columns: predicted
        tp = matrix.diag()
        per_class = 2 * tp / (matrix.sum(0) + matrix.sum(1)).clamp(min=1e-12)
        values["f1"] = per_class.mean()
        values["f1a"] = per_class[1] if self.n_classes > 1 else per_class[0]
        values["record_em"], values["record_f1"] = self.record[0] / total, self.record[1] / total
        values["em"] = self._question_em()
        chosen = {k: values[k].float() for k in self.names}
        chosen[TASK_SCORE] = torch.stack(list(chosen.values())).mean()
        return chosen

    def _question_em(self) -> torch.Tensor:
        groups, correct = self._cat(self.groups), self._cat(self.group_correct)
        if groups.numel() == 0:
            return torch.tensor(0.0, dtype=torch.float64)
        ids, inverse = groups.unique(return_inverse=True)
        wrong = torch.zeros(ids.numel(), device=groups.device).index_add_(
            0, inverse, (~correct.bool()).float()
        )
        return (wrong == 0).double().mean()

    @staticmethod
    def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(state, torch.Tensor):
            return state
        return torch.cat(state) if state else torch.empty(0, dtype=torch.long)
