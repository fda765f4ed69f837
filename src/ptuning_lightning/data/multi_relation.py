"""Many LAMA relations in one pass (``multi_relation: true``): one backbone, mixed batches.

Step t of an epoch concatenates batch t of every relation that is still training, where a
relation's batches are exactly those of its separate run (the same ``EpochShuffleSampler``
permutation, the same batch size). Each relation's prompt therefore sees the batches, and
with a per-relation mean loss the gradients, of its own run; an epoch ends when the relation
with the most batches is through, so epochs, dev evaluation and the learning-rate schedule stay
per relation as in separate runs. Examples carry ``relation``, their relation's index.
"""

from __future__ import annotations

from collections.abc import Iterator

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from ptuning_lightning.data.batching import EpochShuffleSampler, SplitLoaders
from ptuning_lightning.data.lama import SPLITS, LamaDataModule


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


class MultiRelationData(SplitLoaders, LightningDataModule):
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
