"""Sweeps that survive failures and restarts.

- A job that raises writes ``results.json`` with ``"status": "failed"`` and its error; in a
  multirun it returns NaN so that the other jobs go on (a single run re-raises).
- Each job records what happened to it in ``status.json`` (done, failed or skipped), tagged
  with the id of the sweep invocation that ran it.
- ``SweepSummary``, a Hydra callback (``conf/hydra/default.yaml``), counts the jobs of the
  sweep when it ends, prints the counts and writes ``<sweep dir>/summary.json``.
- ``${ptl_subdir:...}`` names a job's folder after its overrides, so that running the same
  command again over the same sweep folder finds each job's earlier results.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ptuning_lightning.launch.distributed import launched_by_multirun
from ptuning_lightning.launch.results import write_results

RESULTS = "results.json"  # the job's results (ptl-report reads these)
RELATION_RESULT = "result.json"  # <relation>/result.json: one finished relation of a job
STATUS = "status.json"  # what the last invocation did with the job
SUMMARY = "summary.json"  # <sweep dir>/summary.json
SWEEP_ID = "PTL_SWEEP_ID"  # environment: the running sweep's id (jobs inherit it)
STATUSES = ("done", "skipped", "failed", "missing")
MAX_SUBDIR = 200  # characters of a job folder's name (file systems allow 255 bytes)


# --- job folders ---------------------------------------------------------------------------


def job_subdir(override_dirname: str) -> str:
    """A job's folder, named after its overrides (``hydra.job.override_dirname``, e.g.
    ``prompt=manual,seed=1,task.relation=P19``).

    When that is no good as a file name (``/``, spaces, brackets or quotes in a value) or is
    long, it is shortened (keys to their last part, paths to their last folder, other
    characters to ``_``) and a hash of the full overrides keeps the names distinct."""
    if not override_dirname:
        return "default"
    if safe(override_dirname) == override_dirname and len(override_dirname) <= MAX_SUBDIR:
        return override_dirname
    items = re.split(r",(?=[+~]*[\w.@-]+(?:=|,|$))", override_dirname)  # not commas in values
    name = ",".join(shorten(item) for item in items)[: MAX_SUBDIR - 60]
    return f"{name}-{hashlib.sha1(override_dirname.encode()).hexdigest()[:8]}"


def safe(text: str) -> str:
    return re.sub(r"[^\w.,=+~@-]+", "_", text)


def shorten(item: str) -> str:
    """``trainer.max_epochs=1`` -> ``max_epochs=1``; ``task.data_root=/a/b`` -> ``data_root=b``;
    ``prompt.template='[P*3] [X] [Y]'`` -> ``template=P_3_X_Y``."""
    key, equals, value = item.partition("=")
    key = key.lstrip("+~").rsplit(".", 1)[-1]
    if "/" in value:
        value = value.strip("'\"").rstrip("/").rsplit("/", 1)[-1]
    return f"{safe(key)}={safe(value).strip('_')}" if equals else safe(key)


OmegaConf.register_new_resolver("ptl_subdir", job_subdir, replace=True)


# --- one job -------------------------------------------------------------------------------


def in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun (``-m``, or ``hydra.mode=MULTIRUN``); under
    ``trainer=ddp`` also in ranks > 0, which are single Hydra runs of a multirun's job."""
    if launched_by_multirun():
        return True
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_job(out: Path) -> dict | None:
    """``results.json`` of a job that finished (None when there is none, or it failed)."""
    results = read_json(out / RESULTS)
    finished = results and (results.get("relations") or results.get("task"))
    if finished and results.get("status", "done") == "done":
        return results
    return None


def finished_relation(out: Path, relation: str) -> dict | None:
    """``<relation>/result.json``: a relation that an earlier run of this job finished."""
    result = read_json(out / relation / RELATION_RESULT)
    return result if result and "test_p1" in result and "dev_p1" in result else None


def last_checkpoint(cfg: DictConfig) -> str | None:
    """The run's ``last.ckpt`` to resume training from (``resume: true``), if any.

    ``cfg`` is the config of one run; the folder is ``callbacks.model_checkpoint``'s, or
    ``<run_dir>/checkpoints`` where that callback is not configured."""
    if not cfg.resume:
        return None
    default = str(Path(cfg.run_dir) / "checkpoints")
    folder = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=default)
    last = Path(folder) / "last.ckpt"
    return str(last) if last.is_file() else None


def error_message(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def record_status(out: Path, status: str, error: str | None = None) -> None:
    """Write ``status.json``: what this invocation did with the job, for the sweep summary."""
    record = {"status": status, "error": error, "sweep": os.environ.get(SWEEP_ID)}
    write_results(out / STATUS, {**record, "time": time.time()})


def failure(cfg: DictConfig, err: BaseException, seconds: float) -> dict:
    """``results.json`` of a failed job: the error, what the job was, and its config."""

    def select(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)

    encoder = select("encoder._target_")
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - the config itself may be what failed
        config = OmegaConf.to_container(cfg, resolve=False)
    return {
        "status": "failed",
        "error": error_message(err),
        "method": select("prompt.name"),
        "backbone": select("backbone.name"),
        "encoder": str(encoder).rsplit(".", 1)[-1] if encoder else None,
        "seed": select("seed"),
        "seconds": seconds,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        "config": config,
    }


# --- the sweep -----------------------------------------------------------------------------


def summarize_sweep(sweep_dir: Path, sweep_id: str | None, started: float) -> dict:
    """The jobs that the sweep ``sweep_id`` ran under ``sweep_dir`` and what became of them.

    A job counts when its ``status.json`` carries the sweep's id. A job folder that Hydra set
    up during the sweep (``.hydra/`` written after ``started``) without one is ``missing``:
    the job was killed, or crashed outside ``run()``."""
    jobs: dict[str, dict] = {}
    for path in sorted(sweep_dir.rglob(STATUS)):
        record = read_json(path)
        if record and sweep_id and record.get("sweep") == sweep_id:
            name = path.parent.relative_to(sweep_dir).as_posix()
            jobs[name] = {"status": record.get("status"), "error": record.get("error")}
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        job = hydra_dir.parent
        name = job.relative_to(sweep_dir).as_posix()
        overrides = hydra_dir / "overrides.yaml"
        if name not in jobs and overrides.is_file() and overrides.stat().st_mtime >= started - 1:
            jobs[name] = {"status": "missing", "error": "no status.json: killed or crashed"}
    counts = {status: 0 for status in STATUSES}
    for job in jobs.values():
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return {"sweep_dir": str(sweep_dir), "total": len(jobs), "counts": counts, "jobs": jobs}


def format_summary(summary: dict) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items())
    lines = [f"Sweep {summary['sweep_dir']}: {summary['total']} jobs: {counts}"]
    for name, job in summary["jobs"].items():
        if job["status"] in ("failed", "missing"):
            error = str(job["error"])
            error = error if len(error) <= 300 else error[:299] + "…"  # whole in summary.json
            lines.append(f"  {job['status']}: {name}: {error}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """At the end of a multirun: count its done / skipped / failed / missing jobs, print the
    counts (and the failures) and write them to ``<sweep dir>/summary.json``."""

    def __init__(self, filename: str = SUMMARY) -> None:
        self.filename = filename
        self.sweep_id: str | None = None
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_id, self.started = uuid.uuid4().hex, time.time()
        os.environ[SWEEP_ID] = self.sweep_id  # local, submitit and SLURM jobs inherit it

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = summarize_sweep(sweep_dir, self.sweep_id, self.started)
        if sweep_dir.is_dir():
            write_results(sweep_dir / self.filename, summary)
        print(format_summary(summary), flush=True)
        os.environ.pop(SWEEP_ID, None)
