"""What both reports share (``lama.report``, ``superglue.report``): reading the
``results.json`` of run and sweep folders, with every failed or missing job kept as a
``Problem``; which task family a run belongs to; and the table helpers (percent, CSV,
Markdown)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

import yaml

REPORT_MD = "report.md"
RESULTS_JSON = "results.json"
# ptl-report --keep-runs: each run's results.json, gzipped, under OUT/runs/, so that a committed
# report can be rebuilt, and extended with new seeds, from committed files alone.
KEPT_RUNS, KEPT_JSON = "runs", "results.json.gz"

# Config keys that never make two runs different settings: the seed, where files go, how the
# job is run and logged, and which relations it covered (rows over different relation sets
# are flagged in the notes instead).
NOT_A_SETTING = (
    "seed",
    "task.seed",
    "task.relation",
    "task_name",
    "group",
    "tags",
    "resume",
    "run_name",
    "run_dir",
    "paths.",
    "hydra.",
    "logger",
    "execution.",
    "encoder._target_",  # the encoder column
    "prompt._target_",  # the method's class: the method column (older runs lack the key)
    "callbacks.progress_bar",
    "callbacks.model_checkpoint.save_",  # which checkpoints are kept, not what is selected
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "task.eval_batch_size",
    "task.num_workers",
    "task.sort_eval_by_length",
)
# What does not matter for a method that trains nothing (manual, discrete, prior, exported).
TRAINING_ONLY = (
    "encoder.",
    "optimizer.",
    "scheduler.",
    "trainer.",
    "callbacks.",
    "ties_improve",
    "task.batch_size",
    "task.group_by_length",
    "multi_relation",
)


# Encoder class name (results.json "encoder") -> its conf/encoder/ name.
ENCODER_NAMES = {"LSTMPromptEncoder": "lstm", "MLPPromptEncoder": "mlp", "PromptEncoder": "none"}


@dataclass(frozen=True)
class Problem:
    """A job that has no usable result: it must show up in the report, not vanish from it."""

    path: str
    status: str  # "failed" (results.json says so) or "missing" (a job folder without one)
    what: str  # backbone / method / seed, or the job's Hydra overrides
    error: str


@dataclass(frozen=True, order=True)
class RowKey:
    backbone: str
    method: str
    encoder: str = ""  # "" unless the table is split by encoder and the method uses one
    setting: tuple[tuple[str, str], ...] = ()  # config values in which this row's runs differ

    def details(self) -> str:
        return "; ".join(
            [self.encoder] * bool(self.encoder) + [f"{k}={v}" for k, v in self.setting]
        )

    def label(self) -> str:
        return f"{self.method} ({self.details()})" if self.details() else self.method


def flat_config(run: dict, trains: bool) -> dict[str, str]:
    """The run's resolved config as dotted keys -> values (as text), less what never makes a
    setting (``NOT_A_SETTING``), and less training keys for a run that trains nothing."""
    flat: dict[str, str] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            # text as it is, the rest as the config spells it (null, true, 0.0003, [a, b])
            flat[prefix[:-1]] = node if isinstance(node, str) else json.dumps(node)

    walk(run.get("config") or {}, "")
    skip = NOT_A_SETTING + (() if trains else TRAINING_ONLY)
    return {
        k: v
        for k, v in flat.items()
        if not k.endswith(".dirpath")  # where checkpoints go: a path per job
        and not any(k == s or k.startswith(s) for s in skip)
    }


def settings(
    runs: list[dict], group_of: Callable[[dict], tuple], trains: Callable[[dict], bool]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each run's (path's) setting: the config values in which the runs of its group differ
    (LAMA: backbone and method; SuperGLUE: also the task, whose own settings differ from
    task to task), so that runs of one row differ in the seed only. ``trains``: whether a
    run trained anything (training settings do not split runs that did not)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_of(run), []).append(run)
    out = {}
    for group in groups.values():
        flats = {run["path"]: flat_config(run, trains(run)) for run in group}
        keys = sorted({k for flat in flats.values() for k in flat})
        differing = [k for k in keys if len({flat.get(k) for flat in flats.values()}) > 1]
        out |= {path: setting(flat, differing, flats.values()) for path, flat in flats.items()}
    return out


def setting(
    flat: dict[str, str], differing: list[str], group: Iterable[dict[str, str]]
) -> tuple[tuple[str, str], ...]:
    """One run's values of the keys in which its ``group`` differs (``differing``). A node
    that is null in some runs (``warmup=null``) and set in others is one key: ``warmup=null``
    there, and where it is set, its own keys that differ among the runs that set it, or else
    its ``_target_`` class (``warmup=LinearLR``); not every key of the node against "—"."""
    nodes = [k for k in differing if any(d.startswith(f"{k}.") for d in differing)]
    values = []
    for key in differing:
        if any(key.startswith(f"{node}.") for node in nodes):
            continue  # told under its node
        if key not in nodes or not sets(flat, key):
            values.append((key, flat.get(key, "—")))
            continue
        setters = [run for run in group if sets(run, key)]
        inner = [
            k
            for k in differing
            if k.startswith(f"{key}.") and len({run.get(k) for run in setters}) > 1
        ]
        target = flat.get(f"{key}._target_", "set").rsplit(".", 1)[-1]
        values += [(k, flat.get(k, "—")) for k in inner] or [(key, target)]
    return tuple(values)


def sets(flat: dict[str, str], node: str) -> bool:
    """Whether the flat config has keys under ``node`` (it is a node there, not a leaf)."""
    return any(k.startswith(f"{node}.") for k in flat)


def load_runs(dirs: list[str | Path]) -> tuple[list[dict], list[Problem]]:
    """The successful runs under the given run or sweep folders (or kept runs, ``KEPT_RUNS``),
    and every failed or missing job.

    A job folder is one with ``.hydra/`` (Hydra writes it first); without ``results.json`` the job
    is missing (crashed, killed or still running). Each run gets its folder as ``"path"``."""
    runs, problems = [], []
    for folder in map(Path, dirs):
        if not folder.exists():
            raise FileNotFoundError(f"no such run folder: {folder}")
        for path in result_files(folder):
            run, problem = read_result(path)
            runs += [run] if run else []
            problems += [problem] if problem else []
        for job in sorted(p.parent for p in folder.rglob(".hydra") if p.is_dir()):
            if not (job / RESULTS_JSON).exists():
                problems.append(Problem(str(job), "missing", overrides(job), "no results.json"))
    return runs, sorted(problems, key=lambda p: natural(p.path))


def result_files(folder: Path) -> list[Path]:
    """Every results.json under ``folder``, and every kept one (``KEPT_JSON``) that has no
    plain results.json beside it."""
    plain = sorted(folder.rglob(RESULTS_JSON))
    kept = [p for p in sorted(folder.rglob(KEPT_JSON)) if not (p.parent / RESULTS_JSON).exists()]
    return plain + kept


def read_result(path: Path) -> tuple[dict | None, Problem | None]:
    """One results.json (or kept ``results.json.gz``) as (run, None), or (None, problem) when
    it is unreadable or failed."""
    job = str(path.parent)
    try:
        raw = path.read_bytes()
        run = json.loads(gzip.decompress(raw) if path.name == KEPT_JSON else raw)
    except (OSError, ValueError, EOFError) as err:
        return None, Problem(job, "failed", overrides(path.parent), f"unreadable: {err}")
    if run.get("status") == "failed":
        return None, Problem(job, "failed", describe(run), str(run.get("error") or "no message"))
    if not run.get("relations") and not run.get("task"):
        return None, Problem(job, "failed", describe(run), "results.json has no relations")
    return {**run, "path": job}, None


def keep_runs(runs: list[dict], dirs: list[str | Path], out: Path) -> int:
    """Write each run's results.json, gzipped, to ``OUT/runs/<its DIR's name>/<its job folder
    under DIR>/results.json.gz`` (the bytes do not depend on when: a rerun rewrites the same
    files). Runs read from ``OUT/runs`` itself stay as they are. Returns how many were
    written."""
    kept_root = (out / KEPT_RUNS).resolve()
    folders = [Path(d).resolve() for d in dirs]
    targets: dict[Path, dict] = {}
    for run in runs:
        job = Path(run["path"]).resolve()
        if job.is_relative_to(kept_root):
            continue
        folder = next(f for f in folders if job.is_relative_to(f))
        target = kept_root / folder.name / job.relative_to(folder) / KEPT_JSON
        if target in targets:  # refused before anything is written
            raise SystemExit(
                f"--keep-runs: {run['path']} and {targets[target]['path']} would both be kept "
                f"as {target}; give the run folders different names"
            )
        targets[target] = run
    for target, run in targets.items():
        text = json.dumps({k: v for k, v in run.items() if k != "path"}, indent=1)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(text.encode(), mtime=0))
    return len(targets)


def describe(run: dict) -> str:
    """backbone / method (encoder) / seed, as far as a (possibly failed) run says."""
    parts = [str(run[key]) for key in ("backbone", "method") if run.get(key)]
    if parts and uses_encoder(run):
        parts[-1] += f" ({encoder_name(run)})"
    if run.get("seed") is not None:
        parts.append(f"seed {run['seed']}")
    return " / ".join(parts)


def overrides(job: Path) -> str:
    """The job's Hydra overrides (``.hydra/overrides.yaml``): what a missing job was to run."""
    try:
        return " ".join(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError, TypeError):
        return ""


def encoder_name(run: dict) -> str:
    """The conf/encoder/ name (lstm, mlp, none) of the run's encoder class."""
    name = run.get("encoder") or "none"
    return ENCODER_NAMES.get(name, name)


def uses_encoder(run: dict) -> bool:
    """Only prompts with pseudo tokens train an encoder; results.json names one for every run
    (the config always has an encoder group), so manual baselines must not be split by it."""
    if run.get("method") == "exported":
        return False
    template = ((run.get("config") or {}).get("prompt") or {}).get("template")
    return "[P" in template if template else run.get("method") == "ptuning"


def natural(text: str) -> list:
    """Sort key that orders digits by value: P19 < P103."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (None with fewer than two values: one seed has no spread)."""
    if not values:
        return None, None
    return mean(values), stdev(values) if len(values) > 1 else None


def percent(value: float | None, digits: int) -> str:
    """A fraction as a percentage with fixed digits; empty for no value."""
    return "" if value is None else f"{100 * value:.{digits}f}"


def to_csv(header: list[str], rows: list[list], digits: int = 2) -> str:
    """CSV with scores in percent (fixed digits), Unix line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [percent(c, digits) if isinstance(c, float) or c is None else c for c in row]
        )
    return buffer.getvalue()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_problems(problems: list[Problem]) -> str:
    """The "Missing or failed runs" section: every job that has no result."""
    lines = ["## Missing or failed runs", ""]
    if not problems:
        return "\n".join([*lines, "None."])
    rows = [[p.status, f"`{p.path}`", cell(p.what), cell(p.error)] for p in problems]
    return "\n".join([*lines, markdown_table(["status", "job", "run", "error"], rows)])


def cell(text: str, limit: int = 200) -> str:
    """One line of text that cannot break a Markdown table."""
    line = " ".join(text.split())
    line = line if len(line) <= limit else line[: limit - 1] + "…"
    return line.replace("|", "\\|") or "—"


def task_family(run: dict) -> str:
    """``lama`` (per-relation results) or ``superglue`` (one task's)."""
    return "superglue" if "task" in run and "relations" not in run else "lama"


def within_noise(difference: tuple[float, float, float]) -> bool:
    """A difference whose 95% interval holds zero."""
    return difference[1] <= 0 <= difference[2]


def plus_minus(mean_: float | None, std: float | None) -> str:
    return percent(mean_, 1) + (f" ± {percent(std, 1)}" if std is not None else "")


def interval_text(diff: tuple[float, float, float] | None, mark: bool = False) -> str:
    """ "+1.2 [-0.3, +2.8]" (points; with ``mark``, "≈" appended within noise); "—" for
    no difference."""
    if diff is None:
        return "—"
    text = f"{100 * diff[0]:+.1f} [{100 * diff[1]:+.1f}, {100 * diff[2]:+.1f}]"
    return text + (" ≈" if mark and within_noise(diff) else "")
