"""A batch of candidate-scored examples: their sequences flattened into one padded batch,
and per candidate the (sequence, positions, token ids) to read, padded to (B, C, L)."""

from __future__ import annotations

import torch

from ptuning_lightning.data.batching import collate


def collate_candidates(examples: list[dict], pad_id: int, score: str = "sum") -> dict:
    """``score``: a candidate's log-probability is the ``sum`` or the ``mean`` over its tokens
    (carried as per-token weights, so the model needs no option of its own)."""
    sequences = [s for e in examples for s in e["views"].sequences]
    batch = collate(sequences, pad_id)
    n_cand = max(len(e["views"].candidates) for e in examples)
    n_tok = max(len(c[2]) for e in examples for c in e["views"].candidates)
    shape = (len(examples), n_cand, n_tok)
    sequence = torch.zeros(shape[:2], dtype=torch.long)
    position = torch.zeros(shape, dtype=torch.long)
    token = torch.zeros(shape, dtype=torch.long)
    weight = torch.zeros(shape)
    em, f1 = torch.zeros(shape[:2]), torch.zeros(shape[:2])
    offset = 0
    for b, example in enumerate(examples):
        views = example["views"]
        for c, (seq, positions, tokens) in enumerate(views.candidates):
            n = len(tokens)
            sequence[b, c] = offset + seq
            position[b, c, :n] = torch.tensor(positions)
            token[b, c, :n] = torch.tensor(tokens)
            weight[b, c, :n] = 1.0 / n if score == "mean" else 1.0
        em[b, : len(views.candidates)] = torch.tensor(example["candidate_em"])
        f1[b, : len(views.candidates)] = torch.tensor(example["candidate_f1"])
        offset += len(views.sequences)
    batch.update(
        candidate_sequence=sequence,
        candidate_position=position,
        candidate_token=token,
        candidate_weight=weight,
        candidate_em=em,
        candidate_f1=f1,
    )
    for key in ("label", "group", "index", "padding"):
        if key in examples[0]:
            batch[key] = torch.tensor([e[key] for e in examples])
    return batch
