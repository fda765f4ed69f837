"""Seconds per training step with the backbone's body compiled (``execution.compile=true``)
vs eager, and how long compiling takes.

Two copies of the backbone, one compiled, train the same prompt encoder setup on the same
batches; after the compiled one's first steps (timed: that is the compilation) the two
alternate in shuffled order each round and the median per-round ratio is printed.

    python bench/compile_step.py [--relation P103] [--steps 30] [--override K=V ...]
"""

from __future__ import annotations

import argparse
import itertools
import time

from common import alternate, compose_train, median, our_step, paired_ratio

from ptuning_lightning.lama.run import build_relation
from ptuning_lightning.launch.builders import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relation", default="P103")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile-steps", type=int, default=6, help="timed first steps")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override")
    args = parser.parse_args()

    overrides = [f"task.relation={args.relation}", *args.override]
    steps, data = {}, None
    for name, compiled in (("eager", "false"), ("compiled", "true")):
        cfg = compose_train([*overrides, f"execution.compile={compiled}"])
        module, data = build_relation(cfg, load_backbone(cfg))
        steps[name] = our_step(module)
    batches = list(data.train_dataloader())

    start = time.perf_counter()
    for batch in batches[: args.compile_steps]:
        steps["compiled"](batch)
    compiling = time.perf_counter() - start

    rounds = (dict.fromkeys(steps, batches[i % len(batches)]) for i in itertools.count())
    times = alternate(steps, itertools.islice(rounds, args.steps + 1))
    print(f"first {args.compile_steps} compiled steps (compiling): {compiling:.1f} s")
    for name, t in times.items():
        print(f"train step {name:8s} {median(t):.3f} s (median of {args.steps})")
    ratio = paired_ratio(times["compiled"], times["eager"])
    saved = median(times["eager"]) - median(times["compiled"])
    print(f"compiled / eager {ratio:.3f} (median per round)")
    if saved > 0:
        print(f"compiling pays off after about {compiling / saved:.0f} steps")


if __name__ == "__main__":
    main()
