"""One Hydra job of ptl-train / ptl-eval: the bookkeeping every job shares, then its task
family's run.

- ``resume: true``: a job whose folder holds finished results is skipped and returns the
  stored objective (the family's runs also read back finished relations and resume
  interrupted ones from their ``last.ckpt``);
- a job that raises writes ``results.json`` with ``"status": "failed"``: in a multirun it
  returns None (Optuna marks the trial failed) and the sweep goes on, a single run re-raises;
- ``status.json`` records what this invocation did (done, skipped, failed) for the sweep.

The family is the one whose data module the task config builds (``task._target_``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import ModuleType

from hydra.utils import get_class
from omegaconf import DictConfig

from ptuning_lightning.lama import run as lama
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.launch.results import reset_peak_memory, write_results
from ptuning_lightning.launch.sweeps import (
    RESULTS,
    error_message,
    failure,
    finished_job,
    in_multirun,
    record_status,
)
from ptuning_lightning.superglue import run as superglue
from ptuning_lightning.superglue.data import SuperGlueDataModule

log = logging.getLogger(__name__)
# Each family's run module: run_job(cfg, out, started) -> results, objective(results).
FAMILIES: dict[type, ModuleType] = {LamaDataModule: lama, SuperGlueDataModule: superglue}


def run(cfg: DictConfig) -> float | None:
    """Run the job; returns what sweepers maximise (the family's ``objective``)."""
    out = Path(cfg.paths.output_dir)
    family = task_family(cfg)
    stored = finished_job(out) if cfg.resume else None
    if stored is not None:
        log.info("Skipped: %s holds finished results (resume=false runs it again)", out)
        record_status(out, "skipped")
        return family.objective(stored)
    started = time.perf_counter()
    reset_peak_memory()
    try:
        results = family.run_job(cfg, out, started)
    except Exception as err:
        log.exception("Job failed (%s)", out)
        write_results(out / RESULTS, failure(cfg, err, time.perf_counter() - started))
        record_status(out, "failed", error_message(err))
        if not in_multirun():
            raise
        return None
    record_status(out, "done")
    return family.objective(results)


def task_family(cfg: DictConfig) -> ModuleType:
    """The run module of the family whose data module ``task._target_`` names."""
    data_class = get_class(cfg.task._target_)
    return next(run for base, run in FAMILIES.items() if issubclass(data_class, base))
