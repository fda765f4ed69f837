"""Dynamic padding and a shuffle that a resumed run reproduces."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch; ``prompt_index`` pads with -1."""
    longest = max(len(e["input_ids"]) for e in examples)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([e[key] + [value] * (longest - len(e[key])) for e in examples])

    batch = {
        "input_ids": padded("input_ids", pad_id),
        "prompt_index": padded("prompt_index", -1),
        "attention_mask": torch.tensor(
            [[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"])) for e in examples]
        ),
    }
    for key in examples[0]:
        if key not in batch and isinstance(examples[0][key], int):
            batch[key] = torch.tensor([e[key] for e in examples])
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch), so a run resumed at epoch k sees the same
    order as an uninterrupted one (Lightning calls ``set_epoch`` every epoch)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # distinct streams per (seed, epoch): seed 34 epoch 1 must not replay seed 35 epoch 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
