"""What the benchmarks share: the config and model of a relation, the floor, our training
step, and alternating timing (every contender once per round, in shuffled order) so that
machine noise hits every contender alike."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.launch.config import CONFIG_DIR
from ptuning_lightning.prompting.backbones import Backbone

Batch = dict[str, torch.Tensor]
Step = Callable[[Batch], None]


def compose_train(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides`` (outside a Hydra run: no output folder)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=."])


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_step(backbone: Backbone) -> Step:
    """The least any P-Tuning step computes: the frozen model's forward and backward on the
    batch, the gradient flowing into the input embeddings, logits at the answer only."""

    def step(batch: Batch) -> None:
        embeds = backbone.embed(batch["input_ids"]).detach().requires_grad_(True)
        logits = backbone.logits_at(embeds, batch["attention_mask"], batch["answer_position"])
        F.cross_entropy(logits, batch["target_token"]).backward()

    return step


def our_step(module: PromptModule) -> Step:
    """One training step of ``PromptModule`` as Lightning runs it: loss, backward, Adam."""
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.log = lambda *a, **k: None  # no trainer attached: logging is a no-op here

    def step(batch: Batch) -> None:
        module.training_step(batch, 0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def alternate(
    contenders: dict[str, Step], rounds: Iterable[dict[str, Batch]], warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per step of each contender; round ``i`` runs every contender once, on its
    batch of that round, in an order shuffled afresh each round (seeded): with a fixed order
    a contender inherits its predecessor's cache and allocator state, which moved ratios by
    up to 5% here. The first ``warmup`` rounds are not counted."""
    order, shuffle = list(contenders), random.Random(0).shuffle
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i, batches in enumerate(rounds):
        shuffle(order)
        for name in order:
            seconds = timed(lambda: contenders[name](batches[name]))  # noqa: B023 (at once)
            if i >= warmup:
                times[name].append(seconds)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of ``times[i] / base[i]``: each pair ran back to back, so machine
    drift (another tenant, the CPU clock) cancels out, which a ratio of medians does not."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def peak_rss_mib() -> float:
    """The process's peak resident memory since start or ``reset_peak_rss`` (Linux)."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # KiB


def reset_peak_rss() -> None:
    """Start peak RSS afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
