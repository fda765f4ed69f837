"""The machine-readable result of a job (``results.json``) and its printed table."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from pathlib import Path

import lightning
import torch
import transformers
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

import ptuning_lightning


def summarize(cfg: DictConfig, per_relation: dict[str, dict], seconds: float) -> dict:
    """Per-relation metrics plus their macro average, the resolved config and versions."""
    macro = {
        key: sum(r[key] for r in per_relation.values()) / len(per_relation)
        for key in ("dev_p1", "test_p1")
    }
    return envelope(cfg, seconds) | {"relations": per_relation, "macro": macro}


def fact_results(examples: list[dict], top: dict[int, int], words: dict[int, str]) -> dict:
    """Per test fact, in the split's order: the predicted word (``test_predictions``) and
    whether it is the gold object (``test_hits``, a string of 0/1, what ``ptl-report``'s
    bootstrap resamples); and the share of facts given the single most predicted word
    (``collapse_rate``: near 1 when a prompt answers the same word whatever the subject).
    ``top`` maps each example's index to its top candidate, ``words`` a candidate to its word;
    examples that were not scored (``trainer.limit_test_batches``) are left out."""
    scored = [e for e in examples if e["index"] in top]  # all, unless limit_test_batches
    if not scored:
        return {}
    predicted = [words[top[e["index"]]] for e in scored]
    hits = "".join("1" if top[e["index"]] == e["target_index"] else "0" for e in scored)
    most, count = Counter(predicted).most_common(1)[0]
    return {
        "collapse_rate": count / len(predicted),
        "most_predicted": most,
        "test_predictions": predicted,
        "test_hits": hits,
    }


def prompt_norms(prompt: torch.Tensor, embeddings: torch.Tensor) -> dict:
    """Mean L2 norm of the prompt's rows beside that of the backbone's token embeddings: a
    prompt far off the embeddings' scale is what the collapse diagnosis looks for."""
    return {
        "prompt_norm": float(prompt.detach().float().norm(dim=-1).mean()),
        "embedding_norm": float(embeddings.detach().float().norm(dim=-1).mean()),
    }


def envelope(cfg: DictConfig, seconds: float) -> dict:
    """What every ``results.json`` holds: the method, backbone, seed, config and versions."""
    return {
        "status": "done",  # a failed job's results.json says "failed" (sweeps.failure)
        "method": method_name(cfg.prompt),
        "backbone": cfg.backbone.name,
        "encoder": cfg.encoder._target_.rsplit(".", 1)[-1] if "encoder" in cfg else None,
        "seed": cfg.seed,
        "seconds": seconds,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": {
            "ptuning_lightning": ptuning_lightning.__version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


def method_name(prompt: DictConfig) -> str:
    """A run's row in the tables: the prompt config's name; for published discrete prompts
    the source (``lpaqa_mine``), with ``_top<k>`` for an ensemble."""
    if prompt.name != "discrete":
        return prompt.name
    k = prompt.get("top_k", 1)
    return f"{prompt.source}_top{k}" if k > 1 else prompt.source


@rank_zero_only  # trainer=ddp: every rank runs the job, rank zero writes its files
def write_results(path: Path, results: dict) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=2))
    os.replace(partial, path)


@rank_zero_only
def print_table(results: dict) -> None:
    table = Table(title=f"{results['method']} on {results['backbone']} (P@1, %)")
    for column in ("relation", "n test", "dev P@1", "test P@1"):
        table.add_column(column, justify="left" if column == "relation" else "right")
    for relation, r in results["relations"].items():
        n = r["filter"]["test"]["kept"]
        table.add_row(relation, str(n), f"{100 * r['dev_p1']:.1f}", f"{100 * r['test_p1']:.1f}")
    macro = results["macro"]
    table.add_row(
        "macro", "", f"{100 * macro['dev_p1']:.1f}", f"{100 * macro['test_p1']:.1f}", style="bold"
    )
    Console().print(table)
