"""The training prior as a method (``prompt=prior``): every fact of a relation is answered with
the relation's most frequent training object, whatever the subject, with no model call.

It is the floor that a learned prompt must beat to show recall rather than the label prior
of its training facts (LAMA relations such as P39 "position held" have half their test
objects equal to the most frequent training one). It runs through the same module, metrics
and ``results.json`` as every other method, so tables show it beside MP and P-Tuning.
"""

from __future__ import annotations

import torch

from ptuning_lightning.backbones import Backbone
from ptuning_lightning.module import PromptModule


class PriorModule(PromptModule):
    """Scores every example with the log relative frequency of each candidate among the
    training objects: the argmax is the most frequent one; ties go to the candidate listed
    first in the vocabulary (``torch.argmax`` keeps the first maximum)."""

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
