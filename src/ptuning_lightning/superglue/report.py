"""ptl-report's SuperGLUE tables, in the paper's shape: one row per setting (backbone x method
x every other config value in which a task's runs differ, so that only seeds are averaged),
one column per task (its SuperGLUE metrics on the reported split, mean over seeds), and the
average of the task scores. A cell shows ± the std of the task score over seeds, or with one
seed a 95% bootstrap interval over test examples.

Paired bootstrap: every two rows of a backbone are compared per task and on the average,
resampling the test examples (MultiRC: its questions, whose answers its EM scores together),
the same draws for both rows, and each row's seeds. A cell within noise of its column's best
is marked "≈". The prior row (``prompt=prior``: the majority training label) comes first.
Time and memory per job follow, for planning a sweep. Outputs are byte-identical from run to
run (seeded resampling, sorted rows, fixed formats).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ptuning_lightning.reporting import (
    REPORT_MD,
    Problem,
    RowKey,
    interval_text,
    markdown_problems,
    markdown_table,
    mean_std,
    percent,
    settings,
    to_csv,
    within_noise,
)
from ptuning_lightning.superglue.metrics import TASK_SCORE, cluster_counts, scores_from_counts

SUPERGLUE_CSV = "superglue.csv"
SUPERGLUE_PAIRED_CSV = "superglue_paired.csv"
SUPERGLUE_COST_CSV = "superglue_cost.csv"
TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC")
METRICS = {"CB": ("acc", "f1"), "MultiRC": ("em", "f1a"), "ReCoRD": ("record_f1", "record_em")}
LABELS = {"acc": "Acc.", "f1": "F1", "em": "EM", "f1a": "F1a", "record_f1": "F1", "record_em": "EM"}
METHODS = ("prior", "manual", "ptuning", "ptuning_finetune", "finetune")  # the table's order
BOOTSTRAP_SAMPLES = 2000
AVG = "Avg"


@dataclass
class Row:
    """The runs of one row: per task, one per seed."""

    key: RowKey
    tasks: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def score(self, task: str) -> tuple[float | None, float | None]:
        """The task score (the mean of its metrics): mean and std over seeds."""
        return mean_std([r["test"][TASK_SCORE] for r in self.tasks.get(task, [])])

    def average(self, tasks: list[str]) -> float | None:
        """The mean task score over ``tasks``; None unless the row has every one."""
        scores = [self.score(t)[0] for t in tasks]
        return None if any(s is None for s in scores) else sum(scores) / len(scores)


def rows(runs: list[dict]) -> list[Row]:
    """Rows in the table's order (prior, manual, P-Tuning, ...; then other methods)."""
    setting = settings(
        runs, lambda r: (r["backbone"], r["method"], r["task"]), lambda r: bool(r.get("steps"))
    )
    found: dict[RowKey, Row] = {}
    for run in sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed"), r["path"])):
        key = RowKey(run["backbone"], run["method"], "", setting.get(run["path"], ()))
        found.setdefault(key, Row(key)).tasks[run["task"]].append(run)

    def order(key: RowKey) -> tuple:
        rank = METHODS.index(key.method) if key.method in METHODS else len(METHODS)
        return key.backbone, rank, key.method, key.setting

    return [found[key] for key in sorted(found, key=order)]


def present_tasks(runs: list[dict]) -> list[str]:
    return [t for t in TASKS if any(r["task"] == t for r in runs)]


# --- the bootstrap ---------------------------------------------------------------------------


class Bootstrap:
    """Bootstrap samples of a row's task score, cached: each sample resamples the task's test
    clusters (examples; MultiRC: questions) with draws shared by every row, so differences
    are paired, and the row's seeds, so that seed-to-seed spread counts too. Needs the runs'
    per-example records (``test_examples`` in results.json)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, np.ndarray | None] = {}

    def samples(self, row: Row, task: str) -> np.ndarray | None:
        """(BOOTSTRAP_SAMPLES,) task scores; the mean over tasks for ``AVG``; None where a
        run lacks per-example records or the seeds scored different examples."""
        key = (row.key, task)
        if key not in self.cache:
            if task == AVG:
                tasks = [t for t in TASKS if t in row.tasks]
                per_task = [self.samples(row, t) for t in tasks]
                ok = per_task and all(s is not None for s in per_task)
                self.cache[key] = np.mean(per_task, axis=0) if ok else None
            else:
                self.cache[key] = self._samples(row, task)
        return self.cache[key]

    def _samples(self, row: Row, task: str) -> np.ndarray | None:
        runs = row.tasks.get(task, [])
        if not runs or any(not test_labels(r) for r in runs):
            return None
        if len({tuple(test_labels(r)) for r in runs}) != 1:
            return None
        by_seed = np.stack([score_samples(task, run) for run in runs], axis=1)  # (S, seeds)
        rng = np.random.default_rng(zlib.crc32(f"{row.key.label()}:{task}".encode()))
        seeds = rng.integers(0, by_seed.shape[1], size=by_seed.shape)
        return np.take_along_axis(by_seed, seeds, 1).mean(1)

    def interval(self, row: Row, task: str) -> tuple[float, float] | None:
        samples = self.samples(row, task)
        return None if samples is None else tuple(np.percentile(samples, [2.5, 97.5]).tolist())

    def difference(self, a: Row, b: Row, task: str) -> tuple[float, float, float] | None:
        """(a - b, 95% interval) of the task score (``AVG``: of the average), paired over test
        examples; None when either row lacks per-example records or they differ in them."""
        tasks = [t for t in TASKS if t in a.tasks] if task == AVG else [task]
        if task == AVG and tasks != [t for t in TASKS if t in b.tasks]:
            return None
        for t in tasks:
            first, second = a.tasks.get(t), b.tasks.get(t)
            if not first or not second or test_labels(first[0]) != test_labels(second[0]):
                return None
        first, second = self.samples(a, task), self.samples(b, task)
        if first is None or second is None:
            return None
        point = (
            a.average(tasks) - b.average(tasks)
            if task == AVG
            else a.score(task)[0] - b.score(task)[0]
        )
        low, high = np.percentile(first - second, [2.5, 97.5]).tolist()
        return point, low, high


def test_labels(run: dict) -> list[int]:
    """The gold labels of the run's test examples (empty: results without the records)."""
    return (run.get("test_examples") or {}).get("label") or []


def score_samples(task: str, run: dict) -> np.ndarray:
    """(BOOTSTRAP_SAMPLES,) task scores of one run over resampled test clusters: the task's
    metrics as training computed them (``cluster_counts``, ``scores_from_counts``)."""
    examples = run["test_examples"]
    n = len(examples["label"])

    def column(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(examples.get(name, [-1 if name == "group" else 0] * n), dtype=dtype)

    names = tuple(k for k in run["test"] if k != TASK_SCORE)
    group = column("group", torch.long) if "em" in names else torch.empty(0, dtype=torch.long)
    counts = cluster_counts(
        len(run.get("labels") or []) or 2,
        column("pred", torch.long),
        column("label", torch.long),
        group,
        column("em", torch.float64),
        column("f1", torch.float64),
    )
    clusters = len(counts["n"])
    draws = torch.from_numpy(cluster_draws(task, clusters))
    totals = {key: value[draws].sum(1) for key, value in counts.items()}
    totals["clusters"] = torch.tensor(float(clusters))
    return scores_from_counts(names, totals)[TASK_SCORE].double().numpy()


def cluster_draws(task: str, clusters: int) -> np.ndarray:
    """(BOOTSTRAP_SAMPLES, clusters) resampled cluster positions: the same for every row of a
    task (seeded by the task and its size) and every report."""
    rng = np.random.default_rng(zlib.crc32(f"{task}:{clusters}".encode()))
    return rng.integers(0, clusters, size=(BOOTSTRAP_SAMPLES, clusters))


# --- the tables ------------------------------------------------------------------------------


def task_cell(row: Row, task: str, boot: Bootstrap) -> str:
    """ "a/b ± std" (percent; a task's metrics, mean over seeds), or with one seed "a/b [low,
    high]" (the task score's bootstrap interval); "—" when the task was not run."""
    runs = row.tasks.get(task, [])
    if not runs:
        return "—"
    names = METRICS.get(task, ("acc",))
    text = "/".join(percent(mean_std([r["test"][n] for r in runs])[0], 1) for n in names)
    std = row.score(task)[1]
    if std is not None:
        return f"{text} ± {percent(std, 1)}"
    interval = boot.interval(row, task)
    return f"{text} [{percent(interval[0], 1)}, {percent(interval[1], 1)}]" if interval else text


def versus_best(table: list[Row], row: Row, column: str, tasks: list[str], boot: Bootstrap) -> str:
    """ " (best)" for the backbone's highest in the column (a task, or ``AVG`` over ``tasks``:
    rows with every task), " ≈" within noise of it (paired bootstrap), "" otherwise; nothing
    when no paired comparison is possible."""

    def value(r: Row) -> float | None:
        return r.average(tasks) if column == AVG else r.score(column)[0]

    rivals = [r for r in table if r.key.backbone == row.key.backbone and value(r) is not None]
    if row not in rivals or len(rivals) < 2:
        return ""
    best = max(rivals, key=value)
    if all(boot.difference(best, r, column) is None for r in rivals if r is not best):
        return ""
    if row is best:
        return " (best)"
    diff = boot.difference(best, row, column)
    return " ≈" if diff is not None and within_noise(diff) else ""


def key_cells(row: Row, with_setting: bool) -> list[str]:
    setting = "; ".join(f"{k}={v}" for k, v in row.key.setting) or "—"
    return [row.key.backbone, row.key.method] + [setting] * with_setting


def seeds_cell(row: Row, tasks: list[str]) -> str:
    """One number when every task of the row has as many seeds, else the tasks of each count,
    the most first: "3 (BoolQ, CB), 2 (RTE)"."""
    by_count: dict[int, list[str]] = defaultdict(list)
    for task in tasks:
        if row.tasks.get(task):
            by_count[len(row.tasks[task])].append(task)
    if len(by_count) == 1:
        return str(next(iter(by_count)))
    return ", ".join(f"{n} ({', '.join(by_count[n])})" for n in sorted(by_count, reverse=True))


def superglue_table(
    table: list[Row], tasks: list[str], boot: Bootstrap
) -> tuple[list[str], list[list], list[str], list[list]]:
    """(Markdown header, Markdown rows, CSV header, CSV rows: task scores as fractions, the
    average (only for rows with every task) and each task's number of seeds)."""
    with_setting = any(row.key.setting for row in table)
    columns = [f"{t} ({'/'.join(LABELS[m] for m in METRICS.get(t, ('acc',)))})" for t in tasks]
    keys = ["backbone", "method"] + ["setting"] * with_setting
    header = [*keys, "seeds", *columns, AVG]
    csv_header = [*keys, *columns, AVG, *(f"{t} seeds" for t in tasks)]
    md_rows, csv_rows = [], []
    for row in table:
        average = row.average(tasks)
        cells = [task_cell(row, t, boot) + versus_best(table, row, t, tasks, boot) for t in tasks]
        avg_cell = percent(average, 1) or "—"
        avg_cell += versus_best(table, row, AVG, tasks, boot) if average is not None else ""
        md_rows.append([*key_cells(row, with_setting), seeds_cell(row, tasks), *cells, avg_cell])
        seeds = [len(row.tasks[t]) if row.tasks.get(t) else None for t in tasks]
        scores = [row.score(t)[0] for t in tasks]
        csv_rows.append([*key_cells(row, with_setting), *scores, average, *seeds])
    return header, md_rows, csv_header, csv_rows


def paired_rows(
    table: list[Row], tasks: list[str], boot: Bootstrap
) -> list[tuple[Row, Row, str, tuple]]:
    """Every two rows of a backbone: (a, b, task or ``AVG``, difference) where pairable; the
    average only between rows with every task (the table's Avg)."""
    out = []
    for i, a in enumerate(table):
        for b in table[i + 1 :]:
            if a.key.backbone != b.key.backbone:
                continue
            every = all(t in a.tasks and t in b.tasks for t in tasks)
            for task in [*tasks, AVG] if every else tasks:
                diff = boot.difference(a, b, task)
                out += [(a, b, task, diff)] if diff is not None else []
    return out


def paired_markdown(pairs: list[tuple[Row, Row, str, tuple]], tasks: list[str]) -> str:
    lines = [
        "## SuperGLUE: paired differences of the task score (points)",
        "",
        "a - b [95% interval], paired bootstrap over test examples (MultiRC: questions) and "
        "seeds; ≈: the interval holds 0 (within noise).",
        "",
    ]
    if not pairs:
        return "\n".join([*lines, "No two rows of a backbone with per-example results to pair."])
    columns = [*tasks, AVG]
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for a, b, task, diff in pairs:
        cells[(a.key.backbone, a.key.label(), b.key.label())][task] = interval_text(diff, mark=True)
    body = [[*pair, *(found.get(c, "—") for c in columns)] for pair, found in cells.items()]
    return "\n".join([*lines, markdown_table(["backbone", "a", "b", *columns], body)])


def cost_table(
    table: list[Row], tasks: list[str]
) -> tuple[list[str], list[list], list[str], list[list]]:
    """Time and peak memory per job, per row and task: (Markdown header and rows, CSV
    header and rows, numbers as text). Seconds: mean over seeds; memory: the largest of the
    seeds (MiB)."""
    md, csv = [], []
    for row in table:
        cells = []
        for task in tasks:
            jobs = row.tasks.get(task, [])
            seconds = mean_std([r["seconds"] for r in jobs if r.get("seconds") is not None])[0]
            host = peak(jobs, "host")
            gpu = peak(jobs, "gpu")
            numbers = [None if v is None else f"{v:.0f}" for v in (seconds, host, gpu)]
            csv.append([row.key.backbone, row.key.label(), task, len(jobs), *numbers])
            text = "—" if seconds is None else f"{seconds:.0f} s"
            text += f", {host / 1024:.1f} GiB" if host is not None else ""
            text += f", GPU {gpu / 1024:.1f} GiB" if gpu is not None else ""
            cells.append(text)
        md.append([row.key.backbone, row.key.label(), *cells])
    csv_header = ["backbone", "row", "task", "jobs", "seconds_mean", "host_mib", "gpu_mib"]
    return ["backbone", "row", *tasks], md, csv_header, csv


def peak(jobs: list[dict], where: str) -> float | None:
    values = [(r.get("peak_memory_mib") or {}).get(where) for r in jobs]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def notes(runs: list[dict], table: list[Row]) -> list[str]:
    """The reported splits, a split that also selected the checkpoint, a missing prior row."""
    splits = sorted({f"{r['task']}: {r['splits']['test']}" for r in runs})
    lines = [f"Reported splits: {', '.join(splits)}."]
    selected_on_test = sorted(
        {r["task"] for r in runs if r["splits"].get("dev") == r["splits"]["test"]}
    )
    if selected_on_test:
        lines.append(
            f"{', '.join(selected_on_test)}: tested on the split that also selected the "
            "checkpoint (FewGLUE ships no other), which flatters methods that train."
        )
    if not any(row.key.method == "prior" for row in table):
        lines.append(
            "No prior row: add `prior` to the sweep's prompts (the majority training label; "
            "tasks with fixed labels) to show what answering without the input scores."
        )
    return lines


def write_superglue(runs: list[dict], out: Path) -> str:
    """Write ``superglue.csv``, ``superglue_paired.csv`` and ``superglue_cost.csv`` into
    ``out``; returns the Markdown sections."""
    table, tasks, boot = rows(runs), present_tasks(runs), Bootstrap()
    header, md_rows, csv_header, csv_rows = superglue_table(table, tasks, boot)
    pairs = paired_rows(table, tasks, boot)
    cost_header, cost_rows, cost_csv_header, cost_csv = cost_table(table, tasks)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUPERGLUE_CSV).write_text(to_csv(csv_header, csv_rows))
    paired = [
        [a.key.backbone, a.key.label(), b.key.label(), task, *diff, within_noise(diff)]
        for a, b, task, diff in pairs
    ]
    paired_header = ["backbone", "row_a", "row_b", "task", "difference", "ci95_low", "ci95_high"]
    (out / SUPERGLUE_PAIRED_CSV).write_text(to_csv([*paired_header, "within_noise"], paired))
    (out / SUPERGLUE_COST_CSV).write_text(to_csv(cost_csv_header, cost_csv))
    return "\n".join(
        [
            "## SuperGLUE (FewGLUE): test metrics (%)",
            "",
            "Per task its SuperGLUE metrics, mean over seeds, ± the sample std of the task "
            "score (the mean of its metrics); one seed: [95% bootstrap interval of the task "
            "score over test examples]. (best): the backbone's highest in the column; ≈: within "
            "noise of it (paired bootstrap, 95% interval of the difference holds 0). Avg: the "
            "mean task score, only for rows with every task.",
            *notes(runs, table),
            "",
            markdown_table(header, md_rows),
            "",
            paired_markdown(pairs, tasks),
            "",
            "## SuperGLUE: time and peak memory per job",
            "",
            "Wall seconds of the whole job (mean over seeds) and its peak host memory (resident "
            "set; GPU: allocated by torch), the largest over seeds.",
            "",
            markdown_table(cost_header, cost_rows),
        ]
    )


def superglue_only_report(runs: list[dict], problems: list[Problem], out: Path) -> str:
    text = "\n".join(
        ["# P-Tuning report", "", write_superglue(runs, out), "", markdown_problems(problems), ""]
    )
    (out / REPORT_MD).write_text(text)
    return text
