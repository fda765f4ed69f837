"""Many LAMA relations in one pass (``multi_relation: true``): one backbone, mixed batches, a
prompt encoder per relation, and the protocol of separate runs kept per relation.

Data: step t of an epoch concatenates batch t of every relation that is still training, where
a relation's batches are exactly those of its separate run (the same ``EpochShuffleSampler``
permutation, the same batch size); an epoch ends when the relation with the most batches is
through. Examples carry ``relation``, their relation's index.

Module: every example gets its relation's prompt. The loss is the sum of per-relation batch
means (each encoder gets the gradient of its own run; Adam's state is per parameter), dev
P@1 after every epoch keeps each relation's best prompt, and a relation stops after
``patience`` epochs without improvement, as ``EarlyStopping`` stops a separate run.
``dev/P@1`` is the macro of the best dev P@1 so far, so the usual ModelCheckpoint and
EarlyStopping (all relations stalled) still apply. ``per_relation_best`` is the one pass's
selection for the runner (``launch.runner``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator

import lightning as L
import torch
from lightning.pytorch import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader

from ptuning_lightning.data.batching import EpochShuffleSampler, SplitLoaders
from ptuning_lightning.lama.data import SPLITS, LamaDataModule
from ptuning_lightning.lama.metrics import RelationMean, RelationPrecisionAtOne
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.encoders import FixedPrompt
from ptuning_lightning.prompting.module import advanced_warmup
from ptuning_lightning.prompting.selection import improves

log = logging.getLogger(__name__)


class RelationBatches:
    """Batch sampler over the relations' concatenated training examples (see module doc).
    ``active`` (relation indices) is read at the start of every epoch: early-stopped
    relations drop out. Lightning calls ``set_epoch`` through the ``sampler`` attribute."""

    def __init__(self, sizes: list[int], batch_size: int, seed: int, active: set[int]) -> None:
        self.samplers = [EpochShuffleSampler(size, seed) for size in sizes]
        self.offsets = [sum(sizes[:r]) for r in range(len(sizes))]
        self.batch_size, self.active = batch_size, active
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def _batches(self, r: int) -> list[list[int]]:
        order = [self.offsets[r] + i for i in self.samplers[r]]
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        per_relation = [self._batches(r) for r in sorted(self.active)]
        for t in range(len(self)):
            yield [i for batches in per_relation if t < len(batches) for i in batches[t]]

    def __len__(self) -> int:
        size = self.batch_size
        return max((-(-len(self.samplers[r]) // size) for r in self.active), default=0)


class OnePassData(SplitLoaders, LightningDataModule):
    """The ``LamaDataModule`` of each relation (same tokenizer and candidates), served as one:
    dev and test like any split (``SplitLoaders``), training in ``RelationBatches``."""

    def __init__(self, relations: dict[str, LamaDataModule]) -> None:
        super().__init__()
        self.names, self.parts = list(relations), list(relations.values())
        self.active: set[int] = set(range(len(self.parts)))
        self.datasets: dict[str, list[dict]] = {}
        first = self.parts[0]  # the loader settings: one task config serves every relation
        for key in ("batch_size", "eval_batch_size", "num_workers", "seed", "pad_id"):
            setattr(self, key, getattr(first, key))
        self.sort_eval_by_length = first.sort_eval_by_length

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for part in self.parts:
            part.setup()
        first = self.parts[0]
        for part, name in zip(self.parts[1:], self.names[1:], strict=True):
            if not part.candidate_ids.equal(first.candidate_ids):
                raise ValueError(
                    f"multi_relation: {name}'s answer candidates differ from "
                    f"{self.names[0]}'s (their templates space [Y] differently)"
                )
        self.candidate_ids = first.candidate_ids
        for split in SPLITS:  # ``index``: the position in the concatenated split
            examples = [
                {**example, "relation": r}
                for r, part in enumerate(self.parts)
                for example in part.datasets[split]
            ]
            self.datasets[split] = [{**e, "index": i} for i, e in enumerate(examples)]

    def train_dataloader(self) -> DataLoader:
        sizes = [len(part.datasets["train"]) for part in self.parts]
        batches = RelationBatches(sizes, self.batch_size, self.seed, self.active)
        return DataLoader(
            self.datasets["train"], batch_sampler=batches, collate_fn=self.collate_fn()
        )


# Per-relation selection state, kept in checkpoints so that a resumed pass goes on exactly.
SELECTION = ("best", "waited", "stopped_epoch", "best_states", "dev_count", "relation_steps")


class OnePassModule(PromptModule):
    def __init__(
        self,
        backbone: Backbone,
        candidate_ids: torch.Tensor,
        encoders: list[nn.Module | None],
        active: set[int],
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        loss_over: str = "vocab",
        patience: int | None = None,
        ties_improve: bool = True,
        warmup: Callable | None = None,
    ) -> None:
        """``encoders``: one per relation (None: a template without pseudo tokens);
        ``active``: the relations still training, shared with ``OnePassData``;
        ``patience``: epochs without improvement before a relation stops (None: it never
        stops, as a separate run without early stopping); ``ties_improve``: a dev P@1 equal to
        the best so far counts as an improvement."""
        empty = torch.empty(0, backbone.hidden_size)
        prompts = nn.ModuleList([e if e is not None else FixedPrompt(empty) for e in encoders])
        super().__init__(
            backbone, candidate_ids, prompts, optimizer, scheduler, loss_over, warmup=warmup
        )
        n = len(encoders)
        with torch.no_grad():
            self.lengths = [len(p()) for p in prompts]  # pseudo tokens per relation
        self.active, self.patience, self.ties_improve = active, patience, ties_improve
        self.dev_relations, self.test_relations = (RelationPrecisionAtOne(n) for _ in range(2))
        self.best = [float("-inf")] * n
        self.waited = [0] * n
        self.stopped_epoch: list[int | None] = [None] * n
        self.best_states: list[dict | None] = [None] * n
        self.dev_count = [0] * n
        self.relation_steps = [0] * n  # optimizer steps each relation took part in (warmup)
        self.present: set[int] = set()  # the relations of the step's training batches
        # per relation: [stand-in optimizer, its warmup schedule, the factor last applied]
        self.stand_ins: dict[int, list] = {}
        self.train_loss = RelationMean(n)
        self.loss_curve: list[list[float]] = [[] for _ in range(n)]  # per relation

    def prompt(self, present: torch.Tensor | None = None) -> torch.Tensor:
        """(R, n_max, H): the relations' prompts, zero-padded to the longest. Only the
        ``present`` relations' encoders run: the others get no gradient (not a zero one, which
        Adam's momentum and weight decay would still turn into an update)."""
        present = set(range(len(self.encoder)) if present is None else present.tolist())
        longest = max(self.lengths)
        rows = [
            p() if r in present else torch.zeros(0, self.backbone.hidden_size, device=self.device)
            for r, p in enumerate(self.encoder)
        ]
        return torch.stack([nn.functional.pad(p, (0, 0, 0, longest - p.size(0))) for p in rows])

    def prompts(self) -> list[torch.Tensor]:
        """Each relation's prompt (n_r, H), unpadded (empty without pseudo tokens)."""
        return [p() for p in self.encoder]

    def prompt_rows(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_max, H): each example's relation's prompt."""
        relation = batch["relation"]
        return self.prompt(relation.unique())[relation]

    def parameter_groups(self) -> list[dict]:
        """One optimizer group per relation that trains (``relation``: its index), so that
        each relation warms up over its own steps (``warmup``)."""
        groups = []
        for r, encoder in enumerate(self.encoder):
            params = [p for p in encoder.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "relation": r})
        return groups

    def warmup(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Each relation's warmup counts the steps it took part in, as its separate run does
        (a relation with fewer batches sits out an epoch's last steps). The configured
        warmup runs per relation on a stand-in optimizer; each relation's group multiplies its
        learning rate by the change of that factor (``MultiplicativeLR`` composes with the
        per-epoch scheduler, as the warmup of a separate run does)."""
        self.stand_ins = {}
        for group in optimizer.param_groups:
            r = group["relation"]  # a resumed pass goes on from the steps it took
            self.stand_ins[r] = [
                *advanced_warmup(self.warmup_factory, self.relation_steps[r]),
                None,
            ]
        factors = [self._factor_change(group["relation"]) for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.MultiplicativeLR(
            optimizer,
            [
                lambda _, r=group["relation"]: self._factor_change(r)
                for group in optimizer.param_groups
            ],
        )
        for group, factor in zip(optimizer.param_groups, factors, strict=True):
            group["lr"] *= factor  # the starting factor (step 0, or where a resume left off)
        return scheduler

    def _factor_change(self, relation: int) -> float:
        """The relation's warmup factor divided by the one its group last applied."""
        stand_in, _, applied = self.stand_ins[relation]
        factor = stand_in.param_groups[0]["lr"]
        self.stand_ins[relation][2] = factor
        return factor / (applied or 1.0)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Count a step for each relation of the step's batches and advance its warmup, which
        Lightning then applies after the step (as a separate run's warmup advances)."""
        for r in sorted(self.present):
            self.relation_steps[r] += 1
            if r in self.stand_ins:
                stand_in, schedule, _ = self.stand_ins[r]
                stand_in.step()
                schedule.step()
        self.present = set()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        relation = batch["relation"]
        self.present |= set(relation.unique().tolist())
        per_example = self.loss(batch, self.prompt_rows(batch), reduction="none")
        count = torch.bincount(relation, minlength=len(self.encoder))[relation]
        loss = (per_example / count).sum()  # the sum over relations of each one's batch mean
        self.log("train/loss", loss, prog_bar=True, batch_size=relation.numel())
        self.train_loss.update(per_example, relation)
        return loss

    def on_train_epoch_end(self) -> None:
        """Each relation that trained this epoch adds its mean loss to its curve."""
        for r, value in enumerate(self.train_loss.compute().reshape(-1).tolist()):
            if self.train_loss.count[r] > 0:
                self.loss_curve[r].append(value)
        self.train_loss.reset()

    def _relation_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores(batch, self.prompt_rows(batch), candidates=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        scores = self._relation_scores(batch)
        self.dev_relations.update(scores, batch["target_index"], batch["relation"])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scores = self._relation_scores(batch)
        self.test_relations.update(scores, batch["target_index"], batch["relation"])
        self.test_top.update(scores, batch["index"], batch["relation"])
        return scores

    def on_validation_epoch_end(self) -> None:
        """Per relation: keep the best prompt, count epochs without improvement, stop."""
        p1, n = self.dev_relations.compute()
        self.dev_relations.reset()
        if self.trainer.sanity_checking:
            return
        for r in sorted(self.active):
            self.dev_count[r] = int(n[r])
            if improves(float(p1[r]), self.best[r], self.ties_improve):
                self.best[r], self.waited[r] = float(p1[r]), 0
                self.best_states[r] = copy.deepcopy(self.encoder[r].state_dict())
            else:
                self.waited[r] += 1
                if self.patience is not None and self.waited[r] >= self.patience:
                    self.active.discard(r)
                    self.stopped_epoch[r] = self.current_epoch
        self.log("dev/P@1", sum(self.best) / len(self.best), prog_bar=True)
        if not self.active:
            self.trainer.should_stop = True

    def on_test_epoch_end(self) -> None:
        p1, n = self.test_relations.compute()
        self.test_results = [(float(p), int(k)) for p, k in zip(p1, n, strict=True)]
        self.test_relations.reset()

    def load_best(self) -> None:
        """Every relation's prompt as it was at its best dev P@1."""
        for r, state in enumerate(self.best_states):
            if state is not None:
                self.encoder[r].load_state_dict(state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["multi_relation"] = {key: getattr(self, key) for key in SELECTION}
        checkpoint["multi_relation"]["active"] = sorted(self.active)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["multi_relation"]
        for key in SELECTION:
            setattr(self, key, state[key])
        self.active.clear()
        self.active.update(state["active"])


def per_relation_best(
    trainer: L.Trainer, module: OnePassModule, data: OnePassData
) -> tuple[dict, None]:
    """The one pass's dev selection for the runner: every relation's best prompt, which the
    module kept (a pass that ended before its first dev evaluation scores its final prompts).
    The per-relation dev results stay in the module (``best``, ``dev_count``)."""
    if None in module.best_states:  # ended before a dev evaluation (trainer.max_steps)
        log.warning("multi_relation: no dev evaluation during training; scoring the final prompts")
        trainer.validate(module, data, verbose=False)
    module.load_best()
    return {}, None
