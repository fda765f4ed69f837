"""Dynamic padding, a shuffle that a resumed run reproduces, and the DDP shards of both;
optionally length-grouped training batches and length-sorted evaluation batches (less
padding, the same examples)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch; ``prompt_index`` pads with -1.

    An example with ``views`` (one encoding per template of an ensemble) gives one model row
    per view, example-major: B examples with k views make B * k rows of ``input_ids``,
    ``prompt_index``, ``attention_mask`` and ``answer_position``; the other fields stay B."""
    rows = [view for e in examples for view in e.get("views", [e])]
    longest = max(len(r["input_ids"]) for r in rows)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([r[key] + [value] * (longest - len(r[key])) for r in rows])

    batch = {
        "input_ids": padded("input_ids", pad_id),
        "prompt_index": padded("prompt_index", -1),
        "attention_mask": torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in rows]
        ),
    }
    for key in examples[0]:
        if key not in batch and isinstance(examples[0][key], int):
            source = rows if key == "answer_position" else examples  # per row or per example
            batch[key] = torch.tensor([e[key] for e in source])
    return batch


class EpochShuffleSampler(DistributedSampler):
    """A permutation drawn from (seed, epoch), so a run resumed at epoch k sees the same
    order as an uninterrupted one (Lightning calls ``set_epoch`` every epoch).

    Under DDP (``world_size`` > 1) rank ``r`` takes items r, r + W, r + 2W, ... of that same
    permutation, padded with its first items to a multiple of W as torch's
    ``DistributedSampler`` pads, so that every rank runs the same number of steps. With a
    per-rank batch of B / W, step t of all ranks together is then step t of a single process
    with batch B (only a last, partial global batch may hold up to W - 1 repeated examples).
    It is a ``DistributedSampler``, so Lightning keeps it rather than wrapping it in one that
    would shuffle again."""

    def __init__(
        self,
        size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: list[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        """``lengths`` (one per example) groups the permutation into global batches of
        ``batch_size`` examples of similar length (see ``group_by_length``)."""
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.size, self.lengths, self.batch_size = size, lengths, batch_size

    def __iter__(self) -> Iterator[int]:
        # distinct streams per (seed, epoch): seed 34 epoch 1 must not replay seed 35 epoch 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.batch_size, generator)
        padded = (order * -(-self.total_size // max(self.size, 1)))[: self.total_size]
        return iter(padded[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def group_by_length(
    order: list[int], lengths: list[int], batch_size: int, generator: torch.Generator
) -> list[int]:
    """``order`` rearranged so that consecutive runs of ``batch_size`` hold similar lengths.

    Windows of ``GROUP_BATCHES`` batches of the random order are each sorted by length and cut
    into batches; then the batches of the whole epoch are shuffled. Every example still comes
    exactly once per epoch and batches stay random in which lengths (and examples) they hold,
    but a batch pads to about its own length instead of the longest of eight random ones."""
    window = batch_size * GROUP_BATCHES
    grouped = []
    for start in range(0, len(order), window):
        grouped += sorted(order[start : start + window], key=lambda i: lengths[i])
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    # the one short batch (if any) stays last, as without grouping
    full = len(batches) - (1 if len(order) % batch_size else 0)
    shuffled = [batches[i] for i in torch.randperm(full, generator=generator).tolist()]
    return [i for batch in shuffled + batches[full:] for i in batch]


GROUP_BATCHES = 32


class EvalShardSampler(DistributedSampler):
    """Evaluation under DDP: rank ``r`` scores positions r, r + W, ... of the split padded to
    a multiple of W. Positions past the split are padding copies that ``PaddedSplit`` marks
    (``padding`` = 1) and P@1 leaves out: every example counts exactly once, as in a single
    process, while every rank runs the same number of batches. One process: the split in
    order, no padding. With ``lengths`` each rank scores its positions longest first, so that
    batches pad little (P@1 is a sum over examples: the order does not change it)."""

    def __init__(
        self, size: int, rank: int = 0, world_size: int = 1, lengths: list[int] | None = None
    ) -> None:
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=False)
        self.size, self.lengths = size, lengths

    def __iter__(self) -> Iterator[int]:
        positions = range(self.rank, self.total_size, self.num_replicas)
        if self.lengths is None:
            return iter(positions)
        return iter(sorted(positions, key=lambda p: -self.lengths[p % self.size]))

    def __len__(self) -> int:
        return self.num_samples


class PaddedSplit(Dataset):
    """A split's examples, each with ``padding`` = 0; positions from ``len(examples)`` on are
    copies of the first examples with ``padding`` = 1 (``EvalShardSampler``'s padding)."""

    def __init__(self, examples: list[dict]) -> None:
        self.examples = examples

    def __getitem__(self, position: int) -> dict:
        n = len(self.examples)
        return {**self.examples[position % n], "padding": int(position >= n)}

    def __len__(self) -> int:
        return len(self.examples)


class SplitLoaders:
    """DataModule mixin: loaders over ``self.datasets[split]`` (lists of encoded examples,
    split ``train``, ``dev`` or ``test``) with the shuffle and DDP shards above;
    ``collate_fn`` says how a batch is built."""

    datasets: dict[str, list[dict]]
    batch_size: int
    eval_batch_size: int
    num_workers: int
    seed: int
    pad_id: int
    group_by_length: bool = False  # training batches of similar lengths (see EpochShuffleSampler)
    sort_eval_by_length: bool = False  # dev/test longest first (EvalShardSampler)

    def collate_fn(self) -> Callable[[list[dict]], dict]:
        return functools.partial(collate, pad_id=self.pad_id)

    def _world(self) -> tuple[int, int]:
        """(world size, this process's rank); (1, 0) without a trainer."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """``batch_size`` and ``eval_batch_size`` are global: under DDP each of the W processes
        takes 1/W of each batch (its shard of the same permutation, see ``batching``)."""
        data, (world, rank) = self.datasets[split], self._world()
        if shuffle:
            if self.batch_size % world:
                raise ValueError(
                    f"task.batch_size={self.batch_size} is the global batch and must be divisible "
                    f"by the world size {world} (trainer.devices x trainer.num_nodes)"
                )
            batch_size = self.batch_size // world
            by_length = [len(e["input_ids"]) for e in data] if self.group_by_length else None
            sampler = EpochShuffleSampler(
                len(data), self.seed, rank, world, by_length, self.batch_size
            )
        else:
            batch_size = -(-self.eval_batch_size // world)  # rounded up: P@1 does not change
            by_length = [len(e["input_ids"]) for e in data] if self.sort_eval_by_length else None
            sampler, data = EvalShardSampler(len(data), rank, world, by_length), PaddedSplit(data)
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn(),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
