"""What every ``results.json`` holds (``envelope``), and writing it so that no reader ever
sees half a file. Each task family adds its own metrics (``lama.run``, ``superglue.run``)."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import lightning
import torch
import transformers
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

import ptuning_lightning
from ptuning_lightning.prompting.methods import PromptMethod


def envelope(cfg: DictConfig, method: PromptMethod, seconds: float) -> dict:
    """The method, backbone, encoder, seed, resolved config and versions."""
    return {
        "status": "done",  # a failed job's results.json says "failed" (sweeps.failure)
        "method": method.label,
        "backbone": cfg.backbone.name,
        "encoder": cfg.encoder._target_.rsplit(".", 1)[-1] if "encoder" in cfg else None,
        "seed": cfg.seed,
        "seconds": seconds,
        "peak_memory_mib": peak_memory(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": {
            "ptuning_lightning": ptuning_lightning.__version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


# Linux: writing "5" to clear_refs restarts the process's peak resident set (VmHWM).
CLEAR_REFS, PROC_STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def reset_peak_memory() -> None:
    """Start counting this job's peak memory: the jobs of a multirun share one process, whose
    lifetime peak would mix them up."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or not allowed: peak_memory then reports no host figure
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float | None]:
    """Peak memory since ``reset_peak_memory`` (MiB): ``host``, the process's resident set
    (None where /proc cannot say), and ``gpu``, what torch allocated on the current CUDA
    device (None without one). What a user plans a sweep's machines from."""
    host = None
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", PROC_STATUS.read_text())
        host = int(found.group(1)) / 1024 if found else None
    except OSError:
        pass
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"host": host, "gpu": gpu}


def prompt_norms(prompt: torch.Tensor, embeddings: torch.Tensor) -> dict:
    """Mean L2 norm of the prompt's rows beside that of the backbone's token embeddings: a
    prompt far off the embeddings' scale is what the collapse diagnosis looks for."""
    return {
        "prompt_norm": float(prompt.detach().float().norm(dim=-1).mean()),
        "embedding_norm": float(embeddings.detach().float().norm(dim=-1).mean()),
    }


@rank_zero_only  # trainer=ddp: every rank runs the job, rank zero writes its files
def write_results(path: Path, results: dict) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=2))
    os.replace(partial, path)
