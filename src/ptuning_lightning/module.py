"""The LightningModule: a frozen backbone plus a prompt encoder, trained on the answer slot.

Data flow of one step: token embeddings of the batch -> pseudo-token positions overwritten by
the encoder's output (computed once per step) -> the frozen body -> the head at the answer
position only -> cross-entropy of the gold object (training) or the argmax over the candidate
words (P@1). Only trainable parameters are given to the optimizer and saved in checkpoints:
the encoder's, plus the backbone's in the fine-tuning baselines (``prompt.finetune``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from ptuning_lightning.backbones import Backbone
from ptuning_lightning.metrics import ExampleCount, PrecisionAtOne, RelationMean, TopCandidates
from ptuning_lightning.templates import place_prompt

LOSS_OVER = ("vocab", "candidates")


class PromptParts:
    """What every prompt LightningModule shares (it has ``backbone`` and ``encoder``): the
    prompt from its encoder, and checkpoints that hold the learned state only."""

    def prompt(self) -> torch.Tensor:
        """The continuous prompt (n_prompt, H), or an empty one for text-only templates."""
        if self.encoder is None:
            return torch.empty(0, self.backbone.hidden_size, device=self.device)
        return self.encoder()

    def relation_prompts(self) -> list[torch.Tensor]:
        """The prompt of each relation the module serves (one here), unpadded."""
        return [self.prompt()]

    def learned_state(self) -> set[str]:
        """State-dict names of what training changes: the trainable parameters."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the learned state: kilobytes, not the frozen backbone's gigabytes (a
        fine-tuned backbone trains, so its checkpoints do hold it)."""
        learned = self.learned_state()
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in learned
        }


class PromptModule(PromptParts, LightningModule):
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
        learning rate of a trainable backbone (the fine-tuning baselines), whose parameters
        form the optimizer's second group; ``template_weights`` (k,) make each example's k
        consecutive rows a template ensemble (evaluation only, see ``LamaDataModule``)."""
        super().__init__()
        if loss_over not in LOSS_OVER:
            raise ValueError(f"prompt.loss_over must be one of {LOSS_OVER}, got {loss_over!r}")
        self.backbone, self.encoder = backbone, encoder
        self.register_buffer("candidate_ids", candidate_ids, persistent=False)
        if template_weights is not None:
            if optimizer is not None:
                raise ValueError("a template ensemble is evaluation only: it has no training")
            weights = torch.tensor(template_weights, dtype=torch.float32)
            self.register_buffer("template_weights", weights, persistent=False)
        else:
            self.template_weights = None
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.warmup_factory = warmup
        self.loss_over, self.backbone_lr = loss_over, backbone_lr
        self.dev_p1, self.test_p1 = PrecisionAtOne(), PrecisionAtOne()
        self.dev_n, self.test_n = ExampleCount(), ExampleCount()  # results.json: dev_n, test_n
        self.test_top = TopCandidates()  # results.json: test_predictions, collapse_rate
        self.train_loss, self.loss_curve = RelationMean(), []  # results.json: train_loss
        self.strict_loading = False  # checkpoints hold the trainable state only
        # DDP broadcasts every parameter and buffer from rank 0 when it sets up (the gigabytes
        # of the backbone, at every fit, validate and test) and buffers before every forward.
        # The frozen backbone and the candidate ids are the same on every rank (same weights,
        # same data), so only the trainable prompt is synchronised.
        self._ddp_params_and_buffers_to_ignore = [
            name for name, p in self.named_parameters() if not p.requires_grad
        ] + [name for name, _ in self.named_buffers()]

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

    def parameter_groups(self) -> list[dict]:
        """The prompt's parameters (the optimizer's learning rate) and, when the backbone
        trains, the backbone's (``backbone_lr``); empty groups are left out."""
        prompt = [p for p in self.encoder.parameters() if p.requires_grad] if self.encoder else []
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": prompt}] if prompt else []
        if backbone:
            if self.backbone_lr is None:
                raise ValueError("the backbone trains, so prompt.backbone_lr must be set")
            groups.append({"params": backbone, "lr": self.backbone_lr})
        return groups

    def configure_optimizers(self):
        groups = self.parameter_groups()
        if self.optimizer_factory is None or not groups:
            raise RuntimeError("this prompt has nothing to train (use evaluation instead)")
        optimizer = self.optimizer_factory(groups)
        schedulers = []  # both multiply the current learning rate, so they compose
        if self.warmup_factory is not None:
            schedulers.append({"scheduler": self.warmup(optimizer), "interval": "step"})
        if self.scheduler_factory is not None:
            schedulers.append({"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"})
        return ([optimizer], schedulers) if schedulers else optimizer

    def warmup(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The configured per-step warmup of ``optimizer``."""
        return self.warmup_factory(optimizer)

    def exported(self, template: str) -> tuple[torch.Tensor, str]:
        """What ``prompt.pt`` stores of the trained prompt: its embeddings and template."""
        return self.prompt(), template
