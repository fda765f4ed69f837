"""Sweeps: a failing job is recorded and the others go on, reruns skip finished jobs and retry
failed ones, interrupted jobs resume from last.ckpt, the sweep summary, the experiment and
Optuna configs, and the submitit launchers (a real local sweep, a generated SLURM script).

Sweeps run through the ptl-train console script on tiny-gpt2 with one or two batches: a sweep
of two jobs, one failing, then the same sweep again on the submitit_local launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.job import run
from ptuning_lightning.launch.config import CONFIG_DIR, ROOT
from ptuning_lightning.launch.sweeps import job_subdir

PTL_TRAIN = str(Path(sys.executable).parent / "ptl-train")
LAMA = ROOT / "data" / "lama"
RELATION = "P1376"
FAST = [  # quiet, tiny and one or two batches; the tokenizer trains on one relation's text
    "backbone=tiny-gpt2",
    f"backbone.load.corpus={LAMA / 'trex' / RELATION}",
    "logger=none",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    f"task.relation={RELATION}",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``ptl-train -m`` into ``sweep_dir``; fails the test if the sweep itself fails."""
    done = subprocess.run(
        [PTL_TRAIN, "-m", f"hydra.sweep.dir={sweep_dir}", *FAST, *overrides],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def jobs(sweep_dir: Path) -> dict[str, dict]:
    """results.json of every job of the sweep, by the job's data root (its last folder)."""
    found = {}
    for path in sweep_dir.rglob("results.json"):
        results = json.loads(path.read_text())
        found[Path(results["config"]["task"]["data_root"]).name] = {**results, "dir": path.parent}
    return found


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> tuple[Path, Path]:
    """The bundled LAMA data, and a copy whose P1376 lacks test.jsonl (its job fails)."""
    roots = []
    for name, splits in (("good", ("train", "dev", "test")), ("broken", ("train", "dev"))):
        root = tmp_path_factory.mktemp("data") / name
        (root / "trex" / RELATION).mkdir(parents=True)
        for split in splits:
            file = f"{split}.jsonl"
            (root / "trex" / RELATION / file).symlink_to(LAMA / "trex" / RELATION / file)
        (root / "relations.jsonl").symlink_to(LAMA / "relations.jsonl")
        (root / "vocab").symlink_to(LAMA / "vocab")
        roots.append(root)
    return roots[0], roots[1]


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory, data_roots):
    """Two jobs (manual prompt), one on the broken data: run once; fix the data and run the same
    sweep again, this time with each job in its own process (hydra/launcher=submitit_local)."""
    good, broken = data_roots
    sweep_dir = tmp_path_factory.mktemp("sweep")
    command = [f"task.data_root={good},{broken}", "prompt=manual"]
    first = sweep(sweep_dir, *command)
    before = {name: dict(job) for name, job in jobs(sweep_dir).items()}
    summary = json.loads((sweep_dir / "summary.json").read_text())
    (broken / "trex" / RELATION / "test.jsonl").symlink_to(LAMA / "trex" / RELATION / "test.jsonl")
    second = sweep(sweep_dir, "hydra/launcher=submitit_local", *command)
    after = jobs(sweep_dir)
    summary_again = json.loads((sweep_dir / "summary.json").read_text())
    return first, before, summary, second, after, summary_again


def test_failing_job_is_recorded_and_does_not_stop_the_sweep(failing_sweep):
    first, before, summary, *_ = failing_sweep
    assert before["good"]["status"] == "done"
    assert before["good"]["relations"][RELATION]["filter"]["test"]["kept"] > 0
    failed = before["broken"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("DataError: data file not found: ")
    assert failed["error"].endswith("test.jsonl")
    assert "Traceback" in failed["traceback"]
    assert (failed["method"], failed["backbone"], failed["seed"]) == ("manual", "tiny-gpt2", 34)
    assert failed["config"]["task"]["relation"] == RELATION
    assert "Traceback" in (failed["dir"] / "train.log").read_text()  # the job's log has it too
    assert summary["counts"] == {"done": 1, "skipped": 0, "failed": 1, "missing": 0}
    assert {job["status"] for job in summary["jobs"].values()} == {"done", "failed"}
    assert "2 jobs: 1 done, 0 skipped, 1 failed, 0 missing" in first.stdout


def test_job_folders_are_named_after_their_overrides(failing_sweep):
    _, before, *_ = failing_sweep
    names = sorted(job["dir"].name for job in before.values())
    assert all("prompt=manual" in name and "relation=P1376" in name for name in names)
    assert names[0] != names[1]


def test_rerun_skips_finished_jobs_and_retries_failed_ones(failing_sweep):
    """The launcher is not part of a job's identity: a sweep started here can go on elsewhere."""
    _, before, _, second, after, summary = failing_sweep
    assert summary["counts"] == {"done": 1, "skipped": 1, "failed": 0, "missing": 0}
    assert "2 jobs: 1 done, 1 skipped, 0 failed, 0 missing" in second.stdout
    assert after["good"]["dir"] == before["good"]["dir"]
    assert after["good"]["seconds"] == before["good"]["seconds"]  # not run again
    assert json.loads((after["good"]["dir"] / "status.json").read_text())["status"] == "skipped"
    assert after["broken"]["dir"] == before["broken"]["dir"]  # same job, same folder
    assert after["broken"]["status"] == "done"  # retried, and the data is there now


def test_single_run_failure_raises_and_is_recorded(tmp_path, compose_cfg):
    """Outside a multirun the error reaches the user (ptl-train exits non-zero)."""
    with pytest.raises(DataError, match=r"unknown relation\(s\) \['P0'\]"):
        run(compose_cfg("train", tmp_path, ["backbone=tiny-gpt2", "task.relation=P0"]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["error"].startswith("DataError: task.rel")
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_interrupted_job_resumes_from_last_checkpoint(tmp_path, compose_cfg, monkeypatch):
    """A two-relation job stopped while training its second relation: the first relation is read
    back, the second resumes from its last.ckpt (trainer.fit(ckpt_path=...))."""
    import lightning

    relations = [RELATION, "P1001"]
    overrides = [
        "backbone=tiny-gpt2",
        f"task.relation=[{','.join(relations)}]",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    run(compose_cfg("train", tmp_path, [*overrides, "trainer.max_epochs=1"]))
    first = json.loads((tmp_path / "results.json").read_text())["relations"]
    for path in ("results.json", "status.json", "P1001/result.json", "P1001/prompt.pt"):
        (tmp_path / path).unlink()  # as if killed after P1001's first epoch

    calls, fit = [], lightning.Trainer.fit

    def spy(trainer, *args, ckpt_path=None, **kwargs):
        calls.append(ckpt_path)
        return fit(trainer, *args, ckpt_path=ckpt_path, **kwargs)

    monkeypatch.setattr(lightning.Trainer, "fit", spy)
    run(compose_cfg("train", tmp_path, [*overrides, "trainer.max_epochs=2"]))
    again = json.loads((tmp_path / "results.json").read_text())
    assert calls == [str(tmp_path / "P1001" / "checkpoints" / "last.ckpt")]
    assert again["relations"][RELATION] == first[RELATION]  # read back, not trained again
    assert again["relations"]["P1001"]["epochs"] == 2
    assert (tmp_path / "P1001" / "prompt.pt").exists()
    assert sorted(p.name for p in (tmp_path / "P1001" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]  # overwritten, no best-v1.ckpt


def test_job_subdir_names():
    assert job_subdir("prompt=manual,seed=1,task.relation=P19") == (
        "prompt=manual,seed=1,task.relation=P19"
    )
    assert job_subdir("") == "default"
    template = job_subdir("prompt.template='[P*3] [X] [Y]',seed=1")
    assert template.startswith("template=P_3_X_Y,seed=1-") and "/" not in template
    long = job_subdir(",".join(f"task.data_root=/data/{i}" * 3 for i in range(20)))
    assert len(long) <= 200 and "/" not in long
    assert job_subdir("a=/x/y") != job_subdir("a=/z/y")  # the hash tells them apart


# --- configs -----------------------------------------------------------------------------


def compose_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    ("experiment", "key", "values"),
    [
        (
            "lama_table",
            "prompt",
            "prior,manual,lpaqa,autoprompt_published,autoprompt,finetune,manual_finetune,ptuning",
        ),
        ("encoder_ablation", "encoder", "lstm,mlp,none"),
        (
            "template_ablation",
            "prompt.template",
            "'[P] [X] [P] [Y] [P]', '[P*3] [X] [P*3] [Y] [P*3]', '[P*6] [X] [P*6] [Y] [P*6]', "
            "'[P*9] [X] [Y]'",
        ),
    ],
)
def test_experiment_configs(experiment, key, values):
    cfg = compose_hydra(f"experiment={experiment}", "logger=wandb")
    assert dict(cfg.hydra.sweeper.params) == {key: values}
    assert cfg.task.relation == "all"
    assert cfg.logger.wandb.group == cfg.group == experiment
    assert list(cfg.logger.wandb.tags) == list(cfg.tags) and "lama" in cfg.tags
    assert cfg.hydra.sweep.dir == f"logs/{experiment}"  # fixed: reruns resume


def test_optuna_search_config():
    cfg = compose_hydra("hparams_search=lama_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.sampler.seed == 1234
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    instantiate(sweeper.sampler)  # the sampler builds
    # The search space as the sweeper reads it, and the overrides it writes for a trial.
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed
    lr = space["optimizer.lr"]
    assert type(lr).__name__ == "LogUniformDistribution" and (lr.low, lr.high) == (1e-5, 1e-2)
    trials = [f"prompt.template={choice}" for choice in space["prompt.template"].choices]
    templates = [override.value() for override in OverridesParser.create().parse_overrides(trials)]
    shapes = [f"[P*{n}] [X] [P*{n}] [Y] [P*{n}]" for n in (1, 2, 3, 6)]
    assert templates == [shape.replace("*1]", "]") for shape in shapes]


# --- launchers ---------------------------------------------------------------------------


def test_submitit_local_launcher_runs_the_jobs(failing_sweep):
    """hydra/launcher=submitit_local ran the second sweep: a process per job, both results done,
    and the summary counted the jobs of its processes (they inherit the sweep's id)."""
    *_, second, after, summary = failing_sweep
    assert [after[name]["status"] for name in ("good", "broken")] == ["done", "done"]
    sweep_dir = Path(summary["sweep_dir"])
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    assert "Submitit 'local' sweep output dir" in second.stdout + second.stderr
    assert summary["total"] == 2


class Submitted(Exception):
    pass


def test_slurm_launcher_writes_the_sbatch_script(tmp_path, monkeypatch):
    """hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml) maps to an sbatch script with the
    partition, GPUs, time, CPUs and memory; nothing is submitted."""
    cfg = compose_hydra(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90",
        f"hydra.sweep.dir={tmp_path}",
    )
    scripts = []

    def map_array(executor, fn, *iterables):
        scripts.append(executor._executor._make_submission_file_text("python -m x", "uid"))
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    (script,) = scripts
    for line in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--time=90",
        "--cpus-per-task=4",
        "--mem=32GB",
        "--ntasks-per-node=1",
    ):
        assert f"#SBATCH {line}\n" in script, script
    assert f"{tmp_path}/.submitit/" in script


def test_stability_experiment_crosses_seeds_and_modes():
    """experiment=stability: 3 seeds x (separate runs, one pass) of the demo's recipe on the
    issue's four collapsed relations and the demo's three; the prior and MP once, by
    overriding the swept keys on the command line."""
    cfg = compose_hydra("experiment=stability")
    assert dict(cfg.hydra.sweeper.params) == {"seed": "34,35,36", "multi_relation": "false,true"}
    assert list(cfg.task.relation) == ["P39", "P136", "P413", "P103", "P1376", "P37", "P108"]
    assert (cfg.prompt.name, cfg.trainer.max_epochs, cfg.optimizer.lr) == ("ptuning", 3, 3e-4)
    assert cfg.group == "stability" and cfg.hydra.sweep.dir == "logs/stability"
