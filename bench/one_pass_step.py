"""A one pass's mixed training step (``multi_relation=true``) with and without length buckets
(``execution.length_buckets``): seconds per step of the frozen backbone's forward and backward
(the floor, ``common.floor_step``, where the padding is paid), and the tokens each way runs.

Each round takes the next real step of epoch 0 (one batch of every relation, as the one pass
serves them) and runs it both ways, in shuffled order. Activation memory grows with the tokens.

    python bench/one_pass_step.py [--backbone smollm2-135m] [--relations all] [--buckets 4 ...]
        [--steps 8]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from common import alternate, compose_train, floor_step, median, paired_ratio

from ptuning_lightning.lama.data import resolve_relations
from ptuning_lightning.lama.one_pass import OnePassData
from ptuning_lightning.lama.run import build_relation, for_relation
from ptuning_lightning.launch.builders import build_method, load_backbone


def tokens(mask: torch.Tensor, buckets: int) -> int:
    """Tokens the body runs: rows sorted by length, cut into ``buckets`` groups, each padded
    to its longest row (as ``Backbone.hidden`` does)."""
    lengths = mask.sum(1).sort().values
    return sum(len(g) * int(g.max()) for g in lengths.tensor_split(min(buckets, len(lengths))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--relations", default="all")
    parser.add_argument("--buckets", type=int, nargs="+", default=[4], help="against 1")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    cfg = compose_train(
        [f"backbone={args.backbone}", f"task.relation={args.relations}", "multi_relation=true"]
    )
    backbone, method = load_backbone(cfg), build_method(cfg)
    relations = resolve_relations(cfg.task.relation, cfg.task.data_root)
    data = OnePassData(
        {r: build_relation(for_relation(cfg, r), backbone, method)[1] for r in relations}
    )
    data.setup()
    steps = list(itertools.islice(data.train_dataloader(), args.steps + 1))
    settings = [1, *args.buckets]

    def with_buckets(k: int):
        step = floor_step(backbone)

        def run(batch: dict) -> None:
            backbone.length_buckets = k
            step(batch)

        return run

    contenders = {k: with_buckets(k) for k in settings}
    runs = alternate(contenders, ({k: batch for k in settings} for batch in steps))
    masks = [batch["attention_mask"] for batch in steps[1:]]
    print(
        f"{len(relations)} relations, steps of {masks[0].size(0)} examples, "
        f"{torch.get_num_threads()} threads, {args.steps} steps (after one warm-up)"
    )
    for k in settings:
        ran = sum(tokens(m, k) for m in masks)
        print(f"buckets {k}: {median(runs[k]):.2f} s/step (median), {ran} tokens in all")
    for k in args.buckets:
        print(f"ratio {k} buckets / 1: {paired_ratio(runs[k], runs[1]):.3f} (median per step)")


if __name__ == "__main__":
    main()
