"""What every LightningModule of a prompt over a backbone shares, whatever the task family:
the prompt from its encoder, the two learning rates, what DDP leaves alone and what a
checkpoint holds.

- Parameter groups: the prompt's own parameters (the encoder, and a classifier head where
  there is one) at ``lr`` (None: the optimizer's), a trainable backbone's at ``backbone_lr``
  (the fine-tuning methods). Empty groups are left out.
- DDP: the frozen backbone and every buffer are the same on every rank (same weights, same
  data), so DDP neither broadcasts them when it sets up (the backbone's gigabytes, at every
  fit, validate and test) nor before every forward: only what trains is synchronised.
- Checkpoints hold the learned state only: kilobytes, not the frozen backbone's gigabytes (a
  fine-tuned backbone trains, so its checkpoints do hold it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule
from torch import nn

from ptuning_lightning.prompting.backbones import Backbone


class PromptedModule(LightningModule):
    def __init__(
        self,
        backbone: Backbone,
        encoder: nn.Module | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        warmup: Callable | None = None,
        lr: float | None = None,
        backbone_lr: float | None = None,
    ) -> None:
        """``encoder=None``: a prompt without pseudo tokens. ``optimizer``, ``scheduler`` (steps
        every epoch) and ``warmup`` (every step) are factories, used only when the module
        fits; ``lr`` and ``backbone_lr`` are the two groups' learning rates."""
        super().__init__()
        self.backbone, self.encoder = backbone, encoder
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.warmup_factory = warmup
        self.lr, self.backbone_lr = lr, backbone_lr
        self.loss_curve: list = []  # the mean training loss per epoch, where a module records it
        self.strict_loading = False  # checkpoints hold the trainable state only

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by DDP when it wraps the module (see the module doc)."""
        frozen = [name for name, p in self.named_parameters() if not p.requires_grad]
        return frozen + [name for name, _ in self.named_buffers()]

    @property
    def trains(self) -> bool:
        """Whether fitting changes anything: some parameter requires a gradient."""
        return any(p.requires_grad for p in self.parameters())

    def prompt(self) -> torch.Tensor:
        """The continuous prompt (n_prompt, H), or an empty one for text-only templates."""
        if self.encoder is None:
            return torch.empty(0, self.backbone.hidden_size, device=self.device)
        return self.encoder()

    def prompts(self) -> list[torch.Tensor]:
        """The prompt of each target the module serves (one, unless it serves several, as
        LAMA's one pass does), unpadded."""
        return [self.prompt()]

    def parameter_groups(self) -> list[dict]:
        """The prompt's own parameters at ``lr``, a trainable backbone's at ``backbone_lr``."""
        own = [
            p
            for name, p in self.named_parameters()
            if p.requires_grad and not name.startswith("backbone.")
        ]
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": own} | ({} if self.lr is None else {"lr": self.lr})] if own else []
        if body:
            if self.backbone_lr is None:
                raise ValueError("the backbone trains, so prompt.backbone_lr must be set")
            groups.append({"params": body, "lr": self.backbone_lr})
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

    def learned_state(self) -> set[str]:
        """State-dict names a checkpoint keeps: what training changes (the trainable
        parameters) and the prompt encoder's buffers that its output needs with them (the
        offset of a start at given words)."""
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        return trained | {name for name, _ in self.named_buffers() if name.startswith("encoder.")}

    def exported(self, template: str, index: int = 0) -> tuple[torch.Tensor, str]:
        """What ``prompt.pt`` stores of the trained prompt of target ``index``: its embeddings
        and template."""
        return self.prompts()[index], template

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        learned = self.learned_state()
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in learned
        }


def advanced_warmup(
    warmup: Callable, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``warmup`` on a stand-in optimizer (learning rate 1) after ``steps`` optimizer steps:
    the stand-in's learning rate is then the factor that the next step's rate gets. Serves the
    one pass (a warmup per relation, and a resume) and the check that a run outlives its
    warmup (``lama.run.check_warmup``)."""
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup(stand_in)
    for _ in range(steps):
        stand_in.step()
        schedule.step()
    return stand_in, schedule
