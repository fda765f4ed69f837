"""AutoPrompt (Shin et al., 2020): a discrete prompt found by gradient-guided token search.

The template's pseudo-token positions ``[P]`` hold *trigger tokens*, real vocabulary tokens.
One training step is one search iteration on one batch (so the search runs for the trainer's
epochs over the training split, with dev P@1 after each):

1. the gradient of the loss with respect to the trigger embeddings;
2. for one position (drawn from the seed and the step, so a resumed search replays it), the
   ``candidates`` tokens whose embeddings have the most negative dot product with that
   gradient (the first-order estimate of the largest loss decrease), among allowed tokens;
3. the loss of each candidate swap on the same batch, in one forward pass; the best swap is
   kept if it lowers the loss.

Allowed tokens exclude special tokens and every token that would not come back as itself when
the searched prompt is written out as text and tokenized again, so the saved template is the
prompt that was searched. Dev P@1 selects the best triggers (the usual ModelCheckpoint).
"""

from __future__ import annotations

import torch

from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.templates import Template, fill_pseudo


def trigger_spacing(template: Template) -> list[bool]:
    """Per trigger position, whether it follows whitespace once written out as text (tokens of
    one ``[P*n]`` block are written space-separated)."""
    return [
        part.space if i == 0 else True
        for part in template.parts
        if part.kind == "prompt"
        for i in range(part.count)
    ]


def allowed_tokens(tokenizer, space: bool) -> torch.Tensor:
    """(V,) bool: tokens that may be triggers at a position with (or without) whitespace in
    front: not special, no brackets (template syntax) or inner whitespace, and tokenized back
    to exactly themselves when written as a word."""
    vocab = len(tokenizer)
    words = [tokenizer.decode([t]).strip() for t in range(vocab)]
    texts = [(" " + w if space else w) for w in words]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    allowed = [
        t not in special
        and bool(w)
        and not any(c in w for c in "[]")
        and not any(c.isspace() for c in w)
        and ids[t] == [t]
        for t, w in enumerate(words)
    ]
    return torch.tensor(allowed)


class SearchSteps(torch.optim.Optimizer):
    """Counts search iterations as optimizer steps: Lightning measures a run's progress
    (global step, checkpoints, ``max_steps``) in those. The swap itself is in the module."""

    def __init__(self, trigger_ids: torch.Tensor) -> None:
        super().__init__([trigger_ids], {})

    def step(self, closure=None) -> None:
        if closure is not None:
            closure()


class AutoPromptModule(PromptModule):
    """A frozen backbone and searched trigger tokens; nothing is trained by an optimizer."""

    def __init__(
        self,
        backbone: Backbone,
        candidate_ids: torch.Tensor,
        template: Template,
        candidates: int = 10,
        init_token: str = "the",
        seed: int = 0,
        loss_over: str = "vocab",
    ) -> None:
        super().__init__(backbone, candidate_ids, loss_over=loss_over)
        self.automatic_optimization = False
        tokenizer, spacing = backbone.tokenizer, trigger_spacing(template)
        masks = {space: allowed_tokens(tokenizer, space) for space in set(spacing)}
        allowed = torch.stack([masks[space] for space in spacing])
        init = [self._token(init_token, space) for space in spacing]
        if not all(allowed[i, t] for i, t in enumerate(init)):
            raise ValueError(f"prompt.init_token={init_token!r} is not an allowed trigger token")
        self.register_buffer("allowed", allowed, persistent=False)  # (n, V)
        self.register_buffer("trigger_ids", torch.tensor(init))  # checkpointed: the result
        self.candidates, self.seed = candidates, seed

    def _token(self, word: str, space: bool) -> int:
        ids = self.backbone.tokenizer(" " + word if space else word, add_special_tokens=False)
        if len(ids["input_ids"]) != 1:
            raise ValueError(f"prompt.init_token={word!r} must be a single token")
        return ids["input_ids"][0]

    def prompt(self) -> torch.Tensor:
        return self.backbone.embed(self.trigger_ids)

    def learned_state(self) -> set[str]:
        return {"trigger_ids"}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return SearchSteps(self.trigger_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        embeds = self.prompt().detach().requires_grad_()
        loss = self.loss(batch, embeds)
        (grad,) = torch.autograd.grad(loss, embeds)
        step = self.current_epoch * 1_000_003 + batch_idx  # the same after a resume
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        position = int(torch.randint(len(self.trigger_ids), (1,), generator=generator))
        proposals = self.propose(grad[position], position)
        losses = self.swap_losses(batch, position, proposals)
        best = int(losses.argmin())
        if losses[best] < loss.detach():
            self.trigger_ids[position] = proposals[best]
        self.record_loss(torch.minimum(losses[best], loss.detach()), batch["target_index"].numel())
        self.optimizers().step()

    def propose(self, grad: torch.Tensor, position: int) -> torch.Tensor:
        """The allowed tokens with the largest first-order loss decrease at ``position``."""
        weights = self.backbone.embeddings
        scores = -(weights.float() @ grad.float())
        scores[~self.allowed[position]] = float("-inf")
        scores[self.trigger_ids[position]] = float("-inf")
        return scores.topk(self.candidates).indices

    @torch.no_grad()
    def swap_losses(
        self, batch: dict[str, torch.Tensor], position: int, proposals: torch.Tensor
    ) -> torch.Tensor:
        """(k,) mean loss on ``batch`` with each proposal at ``position``, in one forward."""
        k, size = len(proposals), batch["target_index"].numel()
        triggers = self.trigger_ids.repeat(k, 1)
        triggers[:, position] = proposals
        prompts = self.backbone.embed(triggers).repeat_interleave(size, dim=0)  # (k*B, n, H)
        repeated = {key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in batch.items()}
        return self.loss(repeated, prompts, reduction="none").view(k, size).mean(1)

    @property
    def trains(self) -> bool:
        """The search changes the triggers, though no parameter has a gradient."""
        return True

    def exported(self, template: str, index: int = 0) -> tuple[torch.Tensor, str]:
        """The searched prompt as plain text (no embeddings left to store)."""
        words = [self.backbone.tokenizer.decode([t]).strip() for t in self.trigger_ids.tolist()]
        return self.prompt()[:0], fill_pseudo(template, words)
