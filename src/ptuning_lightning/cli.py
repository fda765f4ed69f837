"""The entry points, thin: ptl-train and ptl-eval run one Hydra job (``job.run``) with
``conf/train.yaml`` or ``conf/eval.yaml``; ptl-predict answers queries with exported prompts
(``conf/predict.yaml``); ptl-report writes the tables of finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ptuning_lightning.job import run
from ptuning_lightning.lama.predict import predict_job
from ptuning_lightning.lama.report import MACRO_CSV, PAIRED_CSV, RELATIONS_CSV, tables, write_report
from ptuning_lightning.launch.config import CONFIG_DIR
from ptuning_lightning.reporting import KEPT_RUNS, REPORT_MD, keep_runs, load_runs, task_family
from ptuning_lightning.superglue.report import (
    SUPERGLUE_COST_CSV,
    SUPERGLUE_CSV,
    SUPERGLUE_PAIRED_CSV,
    superglue_only_report,
    write_superglue,
)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """ptl-train: train (or evaluate) the configured prompt method on the task."""
    return run(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> float | None:
    """ptl-eval: score a manual template or exported prompts (prompt=exported prompt.path=RUN)."""
    return run(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def predict(cfg: DictConfig) -> None:
    """ptl-predict: answer (relation, subject) queries with exported prompts."""
    predict_job(cfg)


def report(argv: list[str] | None = None) -> None:
    """ptl-report DIR... [--out OUTDIR] [--keep-runs]: every results.json under the run or
    sweep folders -> report.md (printed) and the CSV tables and plots, in OUTDIR (default
    <first DIR>/report); with --keep-runs, the runs themselves too (``keep_runs``)."""
    parser = argparse.ArgumentParser(description="Tables and plots of finished runs.")
    parser.add_argument("dirs", nargs="+", help="run or sweep folders holding results.json")
    parser.add_argument("--out", type=Path, help="output folder (default: <first DIR>/report)")
    parser.add_argument(
        "--keep-runs",
        action="store_true",
        help=f"also write each run's results.json, gzipped, under OUTDIR/{KEPT_RUNS}/: "
        f"`ptl-report OUTDIR/{KEPT_RUNS} [NEW_DIR...] --out OUTDIR` rebuilds or extends the report",
    )
    args = parser.parse_args(argv)
    try:
        runs, problems = load_runs(args.dirs)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    if not runs and not problems:
        raise SystemExit(f"no results.json under {', '.join(args.dirs)}")
    out = args.out or Path(args.dirs[0]) / "report"
    if args.keep_runs:
        print(f"Kept {keep_runs(runs, args.dirs, out)} new runs under {out / KEPT_RUNS}/")
    glue = [r for r in runs if task_family(r) == "superglue"]
    lama = [r for r in runs if task_family(r) == "lama"]
    if glue and not lama:
        print(superglue_only_report(glue, problems, out))
        written = (REPORT_MD, SUPERGLUE_CSV, SUPERGLUE_PAIRED_CSV, SUPERGLUE_COST_CSV)
        print(f"Wrote {out}/: {', '.join(written)}")
        return
    text = write_report(tables(lama), problems, out)
    if glue:  # both kinds of runs: the SuperGLUE table follows the LAMA report
        text += "\n" + write_superglue(glue, out) + "\n"
        (out / REPORT_MD).write_text(text)
    print(text)
    print(f"Wrote {out}/: {REPORT_MD}, {MACRO_CSV}, {RELATIONS_CSV}, {PAIRED_CSV} and plots")
