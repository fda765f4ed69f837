"""The LightningModule: a frozen backbone plus a prompt encoder, trained on the answer slot.

Data flow of one step: token embeddings of the batch -> pseudo-token positions overwritten by
the encoder's output (computed once per step) -> the frozen body -> the head at the answer
position only -> cross-entropy of the gold object (training) or the argmax over the candidate
words (P@1). Only trainable parameters are given to the optimizer and saved in checkpoints:
the encoder's, plus the backbone's in the fine-tuning methods (``prompt.finetune``).
``PriorModule`` (``prompt=prior``) scores without the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptuning_lightning.lama.metrics import ExampleCount, PrecisionAtOne, RelationMean, TopCandidates
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.module import PromptedModule
from ptuning_lightning.prompting.templates import place_prompt

LOSS_OVER = ("vocab", "candidates")


class PromptModule(PromptedModule):
    def __init__(
        self,
        backbone: Backbone,
        candidate_ids: torch.Tensor,
        encoder: nn.Module | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        loss_over: str = "vocab",
        backbone_lr: float | None = None,
        template_weights: list[float] | None = None,
        warmup: Callable | None = None,
    ) -> None:
        """``encoder=None`` is a prompt without pseudo tokens (a manual or discrete template);
        ``scheduler`` steps every epoch (the paper's decay), ``warmup`` every step;
        ``loss_over`` is ``vocab`` (the paper: softmax over the whole vocabulary) or
        ``candidates`` (softmax over the candidate words only); ``backbone_lr`` is the
        learning rate of a trainable backbone (the fine-tuning methods), whose parameters
        form the optimizer's second group; ``template_weights`` (k,) make each example's k
        consecutive rows a template ensemble (evaluation only, see ``LamaDataModule``)."""
        super().__init__(backbone, encoder, optimizer, scheduler, warmup, backbone_lr=backbone_lr)
        if loss_over not in LOSS_OVER:
            raise ValueError(f"prompt.loss_over must be one of {LOSS_OVER}, got {loss_over!r}")
        self.register_buffer("candidate_ids", candidate_ids, persistent=False)
        if template_weights is not None:
            if self.trains:
                raise ValueError("a template ensemble is evaluation only: it has no training")
            weights = torch.tensor(template_weights, dtype=torch.float32)
            self.register_buffer("template_weights", weights, persistent=False)
        else:
            self.template_weights = None
        self.loss_over = loss_over
        self.dev_p1, self.test_p1 = PrecisionAtOne(), PrecisionAtOne()
        self.dev_n, self.test_n = ExampleCount(), ExampleCount()  # results.json: dev_n, test_n
        self.test_top = TopCandidates()  # results.json: test_predictions, collapse_rate
        self.train_loss, self.loss_curve = RelationMean(), []  # results.json: train_loss

    def scores(
        self, batch: dict[str, torch.Tensor], prompt: torch.Tensor, candidates: bool
    ) -> torch.Tensor:
        """Logits at the answer slot: over candidate words, or over the whole vocabulary."""
        embeds = place_prompt(
            self.backbone.embed(batch["input_ids"]),
            batch["prompt_index"],
            prompt.to(self.backbone.dtype),
        )
        return self.backbone.logits_at(
            embeds,
            batch["attention_mask"],
            batch["answer_position"],
            self.candidate_ids if candidates else None,
        )

    def loss(
        self, batch: dict[str, torch.Tensor], prompt: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Cross-entropy of the gold object, over the vocabulary or the candidates."""
        on_candidates = self.loss_over == "candidates"
        logits = self.scores(batch, prompt, candidates=on_candidates)
        target = batch["target_index"] if on_candidates else batch["target_token"]
        return F.cross_entropy(logits, target, reduction=reduction)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, self.prompt())
        self.record_loss(loss, batch["target_index"].numel())
        return loss

    def record_loss(self, loss: torch.Tensor, size: int) -> None:
        """Log a step's mean loss over ``size`` examples and add it to the epoch's mean."""
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.train_loss.update(loss.detach().expand(size))

    def on_train_epoch_end(self) -> None:
        """The epoch's mean training loss joins ``loss_curve`` (``train_loss`` in results)."""
        self.loss_curve.append(float(self.train_loss.compute()))
        self.train_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "dev", self.dev_p1, self.dev_n)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Returns the candidate scores (B, C), for callbacks (``callbacks.PredictionTable``)."""
        return self._evaluate(batch, "test", self.test_p1, self.test_n)

    def _evaluate(
        self, batch: dict[str, torch.Tensor], split: str, p1: PrecisionAtOne, n: ExampleCount
    ) -> torch.Tensor:
        """Logs ``<split>/P@1`` and ``<split>/n`` (examples scored, padding copies left out)."""
        scores = self.scores(batch, self.prompt(), candidates=True)
        if self.template_weights is not None:
            scores = self.ensemble(scores)
        size = batch["target_index"].numel()
        for metric in (p1, n):
            metric.update(scores, batch["target_index"], batch.get("padding"))
        if split == "test" and "index" in batch:  # per-fact results need the facts' positions
            self.test_top.update(scores, batch["index"], padding=batch.get("padding"))
        self.log(f"{split}/P@1", p1, prog_bar=True, batch_size=size)
        self.log(f"{split}/n", n, batch_size=size)
        return scores

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The learned state, and the loss curve so far, which a resumed run continues."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["loss_curve"] = self.loss_curve

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loss_curve = checkpoint.get("loss_curve", self.loss_curve)

    def on_test_epoch_start(self) -> None:
        self.test_top.reset()

    def test_predictions(self, relation: int = 0) -> dict[int, int]:
        """{test example index: its top candidate} of ``relation`` (multi-relation mode) in the
        last test, over every rank under DDP."""
        return self.test_top.compute().get(relation, {})

    def ensemble(self, scores: torch.Tensor) -> torch.Tensor:
        """(B * k, C) scores of k templates per example -> (B, C): the log of the weighted
        mean of the k candidate distributions (LPAQA's ensemble)."""
        k = self.template_weights.numel()
        probs = scores.softmax(-1).view(-1, k, scores.size(-1))
        return torch.einsum("bkc,k->bc", probs, self.template_weights).log()


class PriorModule(PromptModule):
    """The training prior as a method (``prompt=prior``): every fact of a relation is answered
    with the relation's most frequent training object, whatever the subject, with no model
    call. It is the floor that a learned prompt must beat to show recall rather than the label
    prior of its training facts (P39 "position held" has half its test objects equal to the
    most frequent training one).

    Scores are the log relative frequency of each candidate among the training objects; ties
    go to the candidate listed first in the vocabulary (``torch.argmax`` keeps the first)."""

    def __init__(
        self, backbone: Backbone, candidate_ids: torch.Tensor, train_targets: list[int]
    ) -> None:
        """``train_targets``: the candidate index of every training fact's object."""
        super().__init__(backbone, candidate_ids)
        counts = torch.bincount(torch.tensor(train_targets), minlength=len(candidate_ids))
        self.register_buffer("log_prior", (counts / counts.sum()).log(), persistent=False)

    def scores(
        self, batch: dict[str, torch.Tensor], prompt: torch.Tensor, candidates: bool
    ) -> torch.Tensor:
        if not candidates:
            raise ValueError("prompt=prior has nothing to train")
        return self.log_prior.expand(batch["target_index"].numel(), -1)
