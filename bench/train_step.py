"""Seconds per P-Tuning training step vs the floor, evaluation throughput, peak memory.

The floor is the frozen backbone's forward+backward on the same batch with the gradient
flowing into the input embeddings and logits only at the answer position: the least any
P-Tuning implementation must compute. Contenders alternate (in shuffled order each round) in
one process so that machine noise hits both alike; medians (and the median per-round ratio)
are printed. ``peft_side_by_side.py`` adds Hugging Face PEFT's P-tuning and whole-epoch
figures.

    python bench/train_step.py [--backbone smollm2-135m] [--relation P103] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from common import (
    alternate,
    compose_train,
    floor_step,
    median,
    our_step,
    paired_ratio,
    peak_rss_mib,
)

from ptuning_lightning.lama.run import build_relation
from ptuning_lightning.launch.builders import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--relation", default="P103")
    parser.add_argument("--encoder", default="lstm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-batches", type=int, default=5)
    args = parser.parse_args()

    cfg = compose_train(
        [f"backbone={args.backbone}", f"encoder={args.encoder}", f"task.relation={args.relation}"]
    )
    backbone = load_backbone(cfg)
    module, data = build_relation(cfg, backbone)
    batch = next(iter(data.train_dataloader()))
    contenders = {"ours": our_step(module), "floor": floor_step(backbone)}
    rounds = itertools.repeat(dict.fromkeys(contenders, batch), args.steps + 1)
    runs = alternate(contenders, rounds)
    times = {k: median(v) for k, v in runs.items()}

    n_facts = 0
    start = time.perf_counter()
    with torch.inference_mode():
        prompt = module.prompt()
        for eval_batch in itertools.islice(data.test_dataloader(), args.eval_batches):
            module.scores(eval_batch, prompt, candidates=True)
            n_facts += eval_batch["input_ids"].size(0)
    eval_rate = n_facts / (time.perf_counter() - start)

    print(
        f"backbone {args.backbone}, relation {args.relation}, batch {batch['input_ids'].shape}, "
        f"encoder {args.encoder}, {torch.get_num_threads()} threads"
    )
    print(f"train step  ours  {times['ours']:.3f} s (median of {args.steps})")
    print(f"train step  floor {times['floor']:.3f} s")
    print(f"ratio ours/floor  {paired_ratio(runs['ours'], runs['floor']):.3f} (median per round)")
    print(f"evaluation  {eval_rate:.1f} facts/s (eval batch {data.eval_batch_size})")
    print(f"peak memory {peak_rss_mib():.0f} MiB (RSS)")


if __name__ == "__main__":
    main()
