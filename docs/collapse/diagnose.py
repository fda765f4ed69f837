"""Diagnose P-Tuning's collapse on one relation without Lightning: train STEPS steps with the
project's module and data, and every 50 steps print the mean loss, the prompt's mean row norm
(pn), dev P@1, the share of dev facts given the most predicted word (col) and that word.

    python docs/collapse/diagnose.py RELATION STEPS "OVERRIDES" ["OVERRIDES" ...]

Each quoted argument is one configuration (Hydra overrides, space-separated; "" = the
defaults), run from the same seed at lr 3e-4 with no scheduler and no warmup unless given:
WARM=n adds a linear warmup from 1% over n steps, CLIP=x gradient-norm clipping.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import torch
from hydra import compose, initialize_config_dir

from ptuning_lightning.lama.run import build_relation
from ptuning_lightning.launch.builders import load_backbone
from ptuning_lightning.launch.config import CONFIG_DIR

EVERY = 50


def config(relation: str, overrides: list[str]):
    base = [f"task.relation={relation}", "logger=none", "optimizer.lr=3e-4"]
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        return compose("train", overrides=[*base, "~scheduler", "warmup=null", *overrides])


def evaluate(module, data, backbone) -> tuple[float, float, str]:
    """Dev P@1, the most predicted word's share of dev facts, and that word."""
    dev, tops = data.datasets["dev"], []
    module.eval()
    with torch.no_grad():
        for start in range(0, len(dev), 64):
            batch = data.collate_fn()(dev[start : start + 64])
            tops += module.scores(batch, module.prompt(), True).argmax(-1).tolist()
    module.train()
    p1 = sum(t == e["target_index"] for t, e in zip(tops, dev, strict=True)) / len(dev)
    top, count = Counter(tops).most_common(1)[0]
    return p1, count / len(dev), backbone.tokenizer.decode([int(data.candidate_ids[top])])


def diagnose(relation: str, steps: int, extra: list[str], backbone) -> str:
    options = dict(e.split("=", 1) for e in extra if e.split("=")[0] in ("WARM", "CLIP"))
    overrides = [e for e in extra if e.split("=")[0] not in options]
    module, data = build_relation(config(relation, overrides), backbone)
    optimizer = module.configure_optimizers()
    warmup = None
    if "WARM" in options:
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, int(options["WARM"]))
    started, step, losses, lines = time.time(), 0, [], []
    module.train()
    while step < steps:
        for batch in data.train_dataloader():
            loss = module.loss(batch, module.prompt())
            optimizer.zero_grad()
            loss.backward()
            if "CLIP" in options:
                torch.nn.utils.clip_grad_norm_(module.encoder.parameters(), float(options["CLIP"]))
            optimizer.step()
            if warmup is not None:
                warmup.step()
            losses.append(loss.item())
            step += 1
            if step % EVERY == 0 or step == steps:
                with torch.no_grad():
                    norm = module.prompt().norm(dim=-1).mean().item()
                p1, share, word = evaluate(module, data, backbone)
                loss = sum(losses[-EVERY:]) / len(losses[-EVERY:])
                lines.append(
                    f"s{step} loss {loss:.2f} pn {norm:.2f} dev {p1:.3f} col {share:.2f} {word!r}"
                )
            if step >= steps:
                break
    name = " ".join(extra) or "defaults"
    return f"{name} ({time.time() - started:.0f}s): " + " | ".join(lines)


def main() -> None:
    relation, steps = sys.argv[1], int(sys.argv[2])
    backbone = load_backbone(config(relation, []))
    for extra in sys.argv[3:]:
        print(diagnose(relation, steps, extra.split(), backbone), flush=True)


if __name__ == "__main__":
    main()
