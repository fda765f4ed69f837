"""``trainer=ddp``: Lightning's DDP, with ranks that re-run this Hydra *job*.

Lightning's subprocess launcher starts ranks 1..N-1 by re-running the command line. Under
Hydra it appends ``hydra.run.dir=<run dir>``. That works for a single run but not for a
multirun: the command line still holds ``-m`` and the sweep's lists, so each rank would run
the whole sweep again, in sweep folders of its own. ``HydraDDPStrategy`` starts each rank as
a single Hydra run of the parent's job instead:

- the job's own overrides (``hydra.overrides.task``: one value per swept key);
- the job's output folder as ``hydra.run.dir``, so every rank has the same
  ``paths.output_dir`` and checkpoint folder;
- ``hydra.output_subdir=null``: no ``.hydra/`` of its own. Rank k logs to
  ``<job name>_rank<k>.log`` in the job's folder.

So each job has one folder. Only rank zero writes into it: Lightning saves checkpoints and
logs on rank zero, ``results.write_results`` is rank-zero-only and ``run_relation`` exports
the prompt on rank zero.

A multirun runs its jobs one after another in one process. A job's ranks live as long as the
job, and its later relations reuse them. Before the next job builds a trainer,
``end_finished_job`` waits for them and takes the process group down, so that the next job
starts its own ranks.

Failures: as with Lightning's own launcher, a rank that exits with an error makes the job's
other ranks (rank zero too) exit, so that none waits forever in a collective. Ranks > 0 are
single Hydra runs; ``launched_by_multirun()`` tells them that their job belongs to a multirun.

Why not ``strategy=ddp_spawn``: it starts new processes for every fit, validate and test, and
pickles the frozen backbone into each of them. It also does not bring ModelCheckpoint's best
score or the epoch count back to the main process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd, to_absolute_path
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Set for ranks > 0 when the parent job is part of a multirun (the rank itself is a single
# Hydra run): failure handling should treat the job as a multirun job, as rank zero does.
MULTIRUN_ENV = "PTL_DDP_MULTIRUN"
# How long a finished job's ranks may take to exit before the next job kills them.
GRACE_SECONDS = 120
ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
CONFIG_OPTIONS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# Hydra overrides that ranks must not inherit: they run one job, in the job's folder.
NOT_INHERITED = (
    "hydra.run.dir", "hydra.sweep", "hydra.mode", "hydra.output_subdir", "hydra.job.name",
    "hydra.job.id", "hydra.job.num", "hydra/launcher", "hydra.launcher", "hydra/sweeper",
)  # fmt: skip

_job: dict[str, Any] | None = None  # the ranks that this process started, and for which job


def launched_by_multirun() -> bool:
    """Whether this process is a rank > 0 of a job of a multirun."""
    return os.environ.get(MULTIRUN_ENV) == "1"


def _hydra_job() -> tuple[str, str | None] | None:
    """(output folder, job id) of the running Hydra job; None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return str(hydra.runtime.output_dir), OmegaConf.select(hydra, "job.id", default=None)


def _config_options(argv: list[str]) -> list[str]:
    """``--config-name X``, ``--config-dir=Y``... of the command line (not its overrides)."""
    options, args = [], iter(argv)
    for arg in args:
        if arg.split("=", 1)[0] in CONFIG_OPTIONS:
            options += [arg] if "=" in arg else [arg, next(args, "")]
    return options


def rank_command(local_rank: int) -> list[str]:
    """The command that runs rank ``local_rank`` of the running Hydra job."""
    import __main__  # here, as Lightning does (its issue 15218)

    hydra = HydraConfig.get()
    if __main__.__spec__ is None:  # a script or console entry point (ptl-train)
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:  # python -m ...
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _config_options(sys.argv[1:])
    command += list(hydra.overrides.task)
    inherited = [o for o in hydra.overrides.hydra if not o.lstrip("+~").startswith(NOT_INHERITED)]
    command += inherited
    command += [
        f'hydra.run.dir="{hydra.runtime.output_dir}"',
        "hydra.output_subdir=null",
        f"hydra.job.name={hydra.job.name}_rank{local_rank}",
        f"hydra.mode={RunMode.RUN.name}",
    ]
    for key in ("id", "num"):  # ${hydra:job.num} and the like resolve as on rank zero
        value = OmegaConf.select(hydra.job, key, default=None)
        if value is not None:
            command.append(f"hydra.job.{key}={value}")
    return command


class _HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher, with ``rank_command`` for the ranks under Hydra."""

    def launch(self, function, *args: Any, trainer=None, **kwargs: Any) -> Any:
        if _hydra_job() is None:  # a plain script: Lightning re-runs its command line
            return super().launch(function, *args, trainer=trainer, **kwargs)
        self.cluster_environment.validate_settings(
            num_devices=self.num_processes, num_nodes=self.num_nodes
        )
        if not self.cluster_environment.creates_processes_externally:
            self._start_ranks()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _start_ranks(self) -> None:
        global _job
        self._check_can_spawn_children()
        launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default=""))
        if not launcher.endswith(".BasicLauncher"):  # the job runs in a worker (submitit...)
            raise RuntimeError(
                f"trainer=ddp starts ranks by re-running ptl-train's command line, but this job "
                f"runs inside {launcher}. With hydra/launcher=slurm let SLURM start one task "
                f"per device: hydra.launcher.tasks_per_node=N hydra.launcher.gpus_per_node=N "
                f"trainer.devices=N"
            )
        saved = {key: os.environ.get(key) for key in ENV_KEYS}
        environment = self.cluster_environment
        os.environ["MASTER_ADDR"] = environment.main_address
        os.environ["MASTER_PORT"] = str(environment.main_port)
        os.environ["NODE_RANK"] = str(environment.node_rank())
        os.environ["LOCAL_RANK"] = str(environment.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        self.procs = []
        for local_rank in range(1, self.num_processes):
            env = {**os.environ, "LOCAL_RANK": str(local_rank), MULTIRUN_ENV: str(int(multirun))}
            command = rank_command(local_rank)
            log.info("Starting rank %d: %s", local_rank, " ".join(command))
            self.procs.append(subprocess.Popen(command, env=env, cwd=get_original_cwd()))
        observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=self.procs)
        observer.start()  # a rank that fails ends the job's other ranks, as in Lightning
        _job = {"key": _hydra_job(), "procs": self.procs, "observer": observer, "env": saved}


class HydraDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose ranks re-run the Hydra job, not the command line (see above)."""

    def _configure_launcher(self) -> None:
        if self._start_method != "popen":
            return super()._configure_launcher()
        assert self.cluster_environment is not None
        self._launcher = _HydraJobLauncher(
            self.cluster_environment, self.num_processes, self.num_nodes
        )


def _wait_for_ranks() -> None:
    """Wait (up to ``GRACE_SECONDS``) for the ranks started by this process, then kill any
    that are left."""
    global _job
    job, _job = _job, None
    if job is None:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    late = []
    for proc in job["procs"]:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late.append(proc)
    if late:
        log.warning("Killing %d rank(s) of %s still running after the job", len(late), job["key"])
        job["observer"]._child_processes = []  # killing them is not a failure of the next job
        for proc in late:
            proc.kill()
            proc.wait()
    for key, value in job["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def end_finished_job() -> None:
    """Before a trainer is built: if this process started ranks for an earlier Hydra job (the
    previous job of a multirun), wait for them and take down their process group, so that
    this job starts its own (or runs on one process without a stale group)."""
    if _job is None or _job["key"] == _hydra_job():
        return
    _wait_for_ranks()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
