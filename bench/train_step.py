"""Seconds per P-Tuning training step vs the floor, evaluation throughput, peak memory.

The floor is the frozen backbone's forward+backward on the same batch with the gradient
flowing into the input embeddings and logits only at the answer position: the least any
P-Tuning implementation must compute. Contenders alternate (A B A B ...) in one process so
that machine noise hits both alike; medians are printed.

    python bench/train_step.py [--backbone smollm2-135m] [--relation P103] [--steps 20]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ptuning_lightning.experiment import CONFIG_DIR, build_relation


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--relation", default="P103")
    parser.add_argument("--encoder", default="lstm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-batches", type=int, default=5)
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"backbone={args.backbone}",
                f"encoder={args.encoder}",
                f"task.relation={args.relation}",
                "paths.output_dir=.",
            ],
        )
    backbone = instantiate(cfg.backbone.load)
    module, data, _ = build_relation(cfg, backbone)
    optimizer = module.configure_optimizers()["optimizer"]
    batch = next(iter(data.train_dataloader()))

    def ours() -> None:
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def floor() -> None:
        embeds = backbone.embed(batch["input_ids"]).detach().requires_grad_(True)
        logits = backbone.logits_at(embeds, batch["attention_mask"], batch["answer_position"])
        F.cross_entropy(logits, batch["target_token"]).backward()

    module.log = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    ours(), floor()  # warm-up
    times: dict[str, list[float]] = {"ours": [], "floor": []}
    for _ in range(args.steps):
        times["ours"].append(timed(ours))
        times["floor"].append(timed(floor))
    median = {k: statistics.median(v) for k, v in times.items()}

    eval_loader = data.test_dataloader()
    n_facts = 0
    start = time.perf_counter()
    with torch.inference_mode():
        prompt = module.prompt()
        for i, eval_batch in enumerate(eval_loader):
            if i == args.eval_batches:
                break
            module.scores(eval_batch, prompt, candidates=True)
            n_facts += eval_batch["input_ids"].size(0)
    eval_rate = n_facts / (time.perf_counter() - start)

    print(
        f"backbone {args.backbone}, relation {args.relation}, batch {batch['input_ids'].shape}, "
        f"encoder {args.encoder}, {torch.get_num_threads()} threads"
    )
    print(f"train step  ours  {median['ours']:.3f} s (median of {args.steps})")
    print(f"train step  floor {median['floor']:.3f} s")
    print(f"ratio ours/floor  {median['ours'] / median['floor']:.3f}")
    print(f"evaluation  {eval_rate:.1f} facts/s (eval batch {data.eval_batch_size})")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (RSS)")


if __name__ == "__main__":
    main()
