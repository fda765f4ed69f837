"""SuperGLUE metrics as one torchmetrics state that is exact under DDP.

The state is one record per example (prediction, gold label, question, the chosen
candidate's ReCoRD EM/F1), concatenated across ranks. Every metric is computed from it at
``compute`` by ``cluster_counts`` and ``scores_from_counts``, which ``ptl-report``'s
bootstrap also uses. Padding copies (see ``data.batching.EvalShardSampler``) are left out,
so a DDP run counts every example once.

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


def cluster_counts(
    n_classes: int,
    pred: torch.Tensor,
    label: torch.Tensor,
    group: torch.Tensor,
    em: torch.Tensor,
    f1: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per cluster (a MultiRC question: its ``group``; otherwise each example) the counts
    every metric is made of, each (clusters, ...): examples, right predictions, the chosen
    candidates' EM and F1 (ReCoRD), per class true positives, predictions and gold labels
    (over the fixed labels), and whether all of the cluster's examples are right. Summed
    over all clusters they give the metrics (``scores_from_counts``); summed over resampled
    clusters, a bootstrap sample of them (``ptl-report``)."""
    if group.numel() == 0 or bool((group < 0).any()):
        group = torch.arange(pred.numel(), device=pred.device)
    _, cluster = group.unique(return_inverse=True)
    n_clusters = int(cluster.max()) + 1 if cluster.numel() else 0
    hit = (pred == label).double()
    classes = torch.arange(n_classes, device=pred.device)
    per_example = {
        "n": torch.ones_like(hit),
        "hit": hit,
        "em": em.double(),
        "f1": f1.double(),
        "tp": ((pred == label)[:, None] & (pred[:, None] == classes)).double(),
        "pred": (pred[:, None] == classes).double(),
        "gold": (label[:, None] == classes).double(),
    }
    counts = {
        key: torch.zeros(
            n_clusters, *value.shape[1:], dtype=torch.float64, device=pred.device
        ).index_add_(0, cluster, value)
        for key, value in per_example.items()
    }
    counts["all_right"] = (counts["hit"] == counts["n"]).double()
    return counts


def scores_from_counts(names: tuple[str, ...], totals: dict[str, torch.Tensor]) -> dict:
    """The metrics ``names`` and their mean ``score`` from ``cluster_counts`` summed over
    clusters (any leading shape: one total, or one per bootstrap sample), plus ``clusters``
    (how many were summed). CB's F1 is the unweighted mean of the per-class F1, MultiRC's
    F1a the F1 of class 1 ("true") and its EM the share of questions all right."""
    n = totals["n"].clamp(min=1)
    per_class = 2 * totals["tp"] / (totals["pred"] + totals["gold"]).clamp(min=1e-12)
    values = {
        "acc": totals["hit"] / n,
        "f1": per_class.mean(-1),
        "f1a": per_class[..., min(1, per_class.size(-1) - 1)],
        "em": totals["all_right"] / totals["clusters"].clamp(min=1),
        "record_em": totals["em"] / n,
        "record_f1": totals["f1"] / n,
    }
    chosen = {k: values[k].float() for k in names}
    chosen[TASK_SCORE] = torch.stack(list(chosen.values())).mean(0)
    return chosen


class SuperGlueMetric(Metric):
    """``metrics`` names what ``compute`` returns besides ``score``: ``acc``, ``f1`` (macro
    over ``n_classes``), ``f1a`` and ``em`` (MultiRC), ``record_em`` and ``record_f1``.

    The state is one entry per example (its ``index`` in the split, prediction, gold label,
    question and chosen candidate's EM/F1), concatenated across DDP ranks: the metrics follow
    from it (``cluster_counts``, ``scores_from_counts``), and so do the per-example records
    of ``results.json`` (``examples``), from which ``ptl-report`` bootstraps its intervals."""

    full_state_update = False
    KNOWN = ("acc", "f1", "f1a", "em", "record_em", "record_f1")
    FIELDS = ("index", "pred", "label", "group", "em", "f1")

    def __init__(self, metrics: tuple[str, ...] = ("acc",), n_classes: int = 2) -> None:
        super().__init__()
        unknown = set(metrics) - set(self.KNOWN)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; known: {self.KNOWN}")
        self.names = tuple(metrics)
        self.n_classes = n_classes
        for name in self.FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("seen", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """``scores`` (B, C) over each example's candidates; ``batch`` gives ``label`` and,
        where the task has them, ``index``, ``group``, ``candidate_em``/``candidate_f1`` and
        ``padding`` (a DDP padding copy, not counted)."""
        label = batch["label"]
        counted = batch["padding"] == 0 if "padding" in batch else torch.ones_like(label).bool()
        pred = scores.argmax(-1)
        index = batch.get("index", self.seen + torch.arange(label.numel(), device=label.device))
        self.seen += label.numel()
        rows = torch.arange(pred.numel(), device=pred.device)
        chosen = {
            key: batch[f"candidate_{key}"][rows, pred].double()
            if f"candidate_{key}" in batch
            else torch.zeros(pred.numel(), dtype=torch.float64, device=pred.device)
            for key in ("em", "f1")
        }
        group = batch.get("group", torch.full_like(label, -1))
        values = {"index": index, "pred": pred, "label": label, "group": group, **chosen}
        for name in self.FIELDS:
            getattr(self, name).append(values[name][counted])

    def state(self) -> dict[str, torch.Tensor]:
        """Per-example tensors, in split order (by ``index``)."""
        values = {name: self._cat(getattr(self, name)) for name in self.FIELDS}
        order = values["index"].argsort()
        return {name: value[order] for name, value in values.items()}

    def compute(self) -> dict[str, torch.Tensor]:
        s = self.state()
        group = s["group"] if "em" in self.names else s["group"][:0]  # MultiRC's questions
        counts = cluster_counts(self.n_classes, s["pred"], s["label"], group, s["em"], s["f1"])
        totals = {key: value.sum(0) for key, value in counts.items()}
        totals["clusters"] = torch.tensor(float(len(counts["n"])))
        return scores_from_counts(self.names, totals)

    def confusion(self) -> list[list[int]]:
        """[gold][predicted] counts over the fixed labels (a ReCoRD record's candidates are
        not: those examples are left out)."""
        s = self.state()
        fixed = (s["pred"] < self.n_classes) & (s["label"] < self.n_classes)
        index = s["label"][fixed] * self.n_classes + s["pred"][fixed]
        matrix = torch.bincount(index, minlength=self.n_classes**2)
        return matrix.view(self.n_classes, self.n_classes).tolist()

    def examples(self) -> dict[str, list]:
        """Per example, in split order: ``index``, ``pred`` and ``label`` (candidate indices),
        and where the task has them ``group`` (MultiRC's question) and the chosen candidate's
        ``em``/``f1`` (ReCoRD)."""
        s = self.state()
        keep = ["index", "pred", "label"]
        keep += ["group"] if "em" in self.names else []
        keep += ["em", "f1"] if "record_em" in self.names else []
        return {name: s[name].tolist() for name in keep}

    @staticmethod
    def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(state, torch.Tensor):
            return state
        return torch.cat(state) if state else torch.empty(0, dtype=torch.long)
