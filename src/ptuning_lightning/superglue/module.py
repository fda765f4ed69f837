"""The SuperGLUE LightningModule: score each example's candidates, train on their softmax.

A candidate's score is the weighted sum of its tokens' log-probabilities (weights 1 or 1/n:
summed or averaged, set by the data). One forward pass covers the batch's sequences; the LM
head runs only at the positions that are read. ``head`` is the fine-tuning baseline instead:
``"labels"``, a linear classifier on the hidden state at the answer slot (the last token for
a causal LM, the mask for a masked LM), one output per label; ``"choices"`` (tasks without
label words: COPA, ReCoRD), a linear score of each candidate's sequence, read where the data
put it (``views``: the candidate is written into the input).

What trains: the prompt encoder (P-Tuning), the backbone too after ``set_trainable`` (its own
learning rate, ``backbone_lr``), and the classifier; the parameter groups, DDP and
checkpoints are ``prompting.module``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.module import PromptedModule
from ptuning_lightning.prompting.templates import place_prompt
from ptuning_lightning.superglue.metrics import SuperGlueMetric


class CandidateModule(PromptedModule):
    def __init__(
        self,
        backbone: Backbone,
        metrics: tuple[str, ...],
        n_classes: int,
        encoder: nn.Module | None = None,
        optimizer: Callable | None = None,
        lr: float | None = None,
        backbone_lr: float | None = None,
        head: str | None = None,
    ) -> None:
        """``lr``: the prompt encoder's and the classifier's learning rate, ``backbone_lr`` a
        tuned backbone's (constant: the few-shot protocol has no schedule)."""
        super().__init__(backbone, encoder, optimizer, lr=lr, backbone_lr=backbone_lr)
        if head not in (None, "labels", "choices"):
            raise ValueError(f"head must be None, 'labels' or 'choices', got {head!r}")
        outputs = {"labels": n_classes, "choices": 1}.get(head, 0)
        self.classifier = nn.Linear(backbone.hidden_size, outputs) if head else None
        self.head = head
        self.dev_metric = SuperGlueMetric(metrics, n_classes)
        self.test_metric = SuperGlueMetric(metrics, n_classes)
        self.confusion: dict[str, list[list[int]]] = {}  # split -> [gold][predicted] counts
        self.test_examples: dict[str, list] = {}  # the last test's per-example records

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C): each example's candidate scores; absent candidates get -inf."""
        embeds = place_prompt(
            self.backbone.embed(batch["input_ids"]),
            batch["prompt_index"],
            self.prompt().to(self.backbone.dtype),
        )
        hidden = self.backbone.hidden(embeds, batch["attention_mask"])
        sequence, position = batch["candidate_sequence"], batch["candidate_position"]
        weight = batch["candidate_weight"]
        read = weight > 0
        if self.head == "labels":  # the readout of the first candidate's sequence
            picked = hidden[sequence[:, 0], position[:, 0, 0]]
            return self.classifier(picked.float())
        if self.head == "choices":  # each candidate's own sequence, read at one position
            picked = hidden[sequence, position[:, :, 0]]  # (B, C, H)
            scores = self.classifier(picked.float()).squeeze(-1)
            return scores.masked_fill(~read[:, :, 0], float("-inf"))
        rows = sequence.unsqueeze(-1).expand_as(position)[read]
        logits = self.backbone.head(hidden[rows, position[read]]).float()
        token_logp = logits.log_softmax(-1).gather(-1, batch["candidate_token"][read][:, None])
        per_token = torch.zeros_like(weight).masked_scatter(read, token_logp.squeeze(-1))
        scores = (per_token * weight).sum(-1)
        return scores.masked_fill(~read.any(-1), float("-inf"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.scores(batch), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].numel())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.dev_metric.update(self.scores(batch), batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scores = self.scores(batch)
        self.test_metric.update(scores, batch)
        return scores

    def on_validation_epoch_end(self) -> None:
        self._log_metric("dev", self.dev_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def _log_metric(self, split: str, metric: SuperGlueMetric) -> None:
        """Computed (synchronised across DDP ranks) once per evaluation, then reset; the
        confusion matrix (which labels the model predicts) and the test's per-example records
        (for ``ptl-report``'s paired bootstrap) are kept for ``results.json``."""
        values = metric.compute()
        with metric.sync_context():
            self.confusion[split] = metric.confusion()
            if split == "test":
                self.test_examples = metric.examples()
        metric.reset()
        self.log_dict({f"{split}/{k}": v for k, v in values.items()}, prog_bar=split == "dev")


class PriorModule(CandidateModule):
    """The training prior (``prompt=prior``): every example gets the label most frequent
    among the training examples (ties: the first label), with no model call. The majority
    baseline of the FewGLUE table: what a classifier reaches without reading the input."""

    def __init__(
        self, backbone: Backbone, metrics: tuple[str, ...], n_classes: int, train: list[int]
    ) -> None:
        """``train``: every training example's gold label index."""
        super().__init__(backbone, metrics, n_classes)
        counts = torch.bincount(torch.tensor(train), minlength=n_classes)
        self.majority = int(counts.argmax())  # argmax keeps the first of tied labels

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = torch.zeros(batch["label"].numel(), batch["candidate_weight"].size(1))
        scores[:, self.majority] = 1.0
        return scores.to(batch["label"].device)
