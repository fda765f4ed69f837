"""ptl-report's SuperGLUE table, in the paper's shape: one row per backbone x method, one
column per task (its SuperGLUE metrics on the reported split, mean over seeds, ± the std of
the task score), and the average of the task scores. Tasks of one row may have different
numbers of seeds, so each task's count is reported (``superglue.csv``: a column per task)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ptuning_lightning.reporting import (
    REPORT_MD,
    Problem,
    markdown_problems,
    markdown_table,
    mean_std,
    percent,
    to_csv,
)

SUPERGLUE_CSV = "superglue.csv"
TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC")
METRICS = {"CB": ("acc", "f1"), "MultiRC": ("em", "f1a"), "ReCoRD": ("record_f1", "record_em")}
LABELS = {"acc": "Acc.", "f1": "F1", "em": "EM", "f1a": "F1a", "record_f1": "F1", "record_em": "EM"}


def grouped(runs: list[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(backbone, method) -> task -> the test results of its seeds."""
    rows: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: (r["backbone"], r["method"], r["task"], r["seed"])):
        rows[(run["backbone"], run["method"])][run["task"]].append(run)
    return rows


def task_cell(runs: list[dict]) -> tuple[str, float | None]:
    """ "a/b ± std" (percent) and the mean task score; "—" when the task was not run."""
    if not runs:
        return "—", None
    names = METRICS.get(runs[0]["task"], ("acc",))
    means = [mean_std([r["test"][n] for r in runs])[0] for n in names]
    score, std = mean_std([r["test"]["score"] for r in runs])
    text = "/".join(percent(m, 1) for m in means)
    return text + (f" ± {percent(std, 1)}" if std is not None else ""), score


def seeds_cell(seeds: dict[str, int]) -> str:
    """One number when every task of the row has as many seeds, else each task's count, the
    most first: "3 (CB), 2 (RTE), 1 (BoolQ)"."""
    counts = sorted(seeds.items(), key=lambda item: -item[1])
    if len(set(seeds.values())) == 1:
        return str(counts[0][1])
    return ", ".join(f"{n} ({task})" for task, n in counts)


def superglue_table(
    runs: list[dict],
) -> tuple[list[str], list[list], list[str], list[list]]:
    """(Markdown header, Markdown rows, CSV header, CSV rows: task scores as fractions and
    each task's number of seeds, empty where the task was not run)."""
    present = [t for t in TASKS if any(r["task"] == t for r in runs)]
    tasks = [f"{t} ({'/'.join(LABELS[m] for m in METRICS.get(t, ('acc',)))})" for t in present]
    header = ["backbone", "method", "seeds", *tasks, "Avg"]
    csv_header = ["backbone", "method", *tasks, "Avg", *(f"{t} seeds" for t in present)]
    md_rows, csv_rows = [], []
    for (backbone, method), by_task in grouped(runs).items():
        cells = [task_cell(by_task.get(t, [])) for t in present]
        scores = [s for _, s in cells if s is not None]
        average = sum(scores) / len(scores) if len(scores) == len(present) else None
        seeds = {t: len(by_task[t]) for t in present if by_task.get(t)}
        md_rows.append(
            [
                backbone,
                method,
                seeds_cell(seeds),
                *(c for c, _ in cells),
                percent(average, 1) or "—",
            ]
        )
        csv_rows.append(
            [backbone, method, *(s for _, s in cells), average, *(seeds.get(t) for t in present)]
        )
    return header, md_rows, csv_header, csv_rows


def superglue_markdown(runs: list[dict]) -> str:
    header, rows, _, _ = superglue_table(runs)
    splits = sorted({f"{r['task']}: {r['splits']['test']}" for r in runs})
    return "\n".join(
        [
            "## SuperGLUE (FewGLUE): test metrics (%)",
            "",
            "Per task its SuperGLUE metrics (mean over seeds) ± the sample std of the task score"
            " (no ± with one seed); Avg: the mean task score, only for rows with every task.",
            f"Reported splits: {', '.join(splits)}.",
            "",
            markdown_table(header, rows),
        ]
    )


def write_superglue(runs: list[dict], out: Path) -> str:
    """Write ``superglue.csv`` into ``out``; returns the Markdown section."""
    _, _, header, rows = superglue_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUPERGLUE_CSV).write_text(to_csv(header, rows))
    return superglue_markdown(runs)


def superglue_only_report(runs: list[dict], problems: list[Problem], out: Path) -> str:
    text = "\n".join(
        ["# P-Tuning report", "", write_superglue(runs, out), "", markdown_problems(problems), ""]
    )
    (out / REPORT_MD).write_text(text)
    return text
