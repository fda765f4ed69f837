"""ptl-report's SuperGLUE table from hand-made results.json files."""

from __future__ import annotations

import json

import numpy as np

from ptuning_lightning.cli import report as main
from ptuning_lightning.superglue.report import score_samples


def write_run(folder, task: str, method: str, seed: int, test: dict, **extra) -> None:
    """A finished job's results.json with the given test metrics (and ``extra`` keys)."""
    folder.mkdir(parents=True)
    run = {
        "status": "done",
        "task": task,
        "method": method,
        "backbone": "tiny",
        "seed": seed,
        "splits": {"test": "val"},
        "dev": test,
        "test": test,
        **extra,
    }
    (folder / "results.json").write_text(json.dumps(run))


def test_superglue_table_with_seeds_and_average(tmp_path, capsys):
    write_run(tmp_path / "a", "CB", "ptuning", 1, {"acc": 0.8, "f1": 0.6, "score": 0.7})
    write_run(tmp_path / "b", "CB", "ptuning", 2, {"acc": 0.6, "f1": 0.4, "score": 0.5})
    write_run(tmp_path / "c", "RTE", "ptuning", 1, {"acc": 0.5, "score": 0.5})
    write_run(tmp_path / "d", "RTE", "manual", 1, {"acc": 0.55, "score": 0.55})
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| backbone | method | seeds | CB (Acc./F1) | RTE (Acc.) | Avg |" in text
    assert "| tiny | ptuning | 2 (CB), 1 (RTE) | 70.0/50.0 ± 14.1 | 50.0 | 55.0 |" in text
    assert "| tiny | manual | 1 | — | 55.0 | — |" in text  # no CB run: no average
    csv = (tmp_path / "report" / "superglue.csv").read_text().splitlines()
    assert csv[0] == "backbone,method,CB (Acc./F1),RTE (Acc.),Avg,CB seeds,RTE seeds"
    assert csv[1] == "tiny,manual,,55.00,,,1"


def test_superglue_csv_counts_seeds_per_task(tmp_path):
    """Three CB seeds and one each of BoolQ and RTE in one row: the CSV says 1, 3 and 1,
    not 3 for all; the table groups the tasks of each count."""
    for seed in (1, 2, 3):
        write_run(
            tmp_path / f"cb{seed}", "CB", "ptuning", seed, {"acc": 0.5, "f1": 0.5, "score": 0.5}
        )
    write_run(tmp_path / "rte", "RTE", "ptuning", 1, {"acc": 0.5, "score": 0.5})
    write_run(tmp_path / "boolq", "BoolQ", "ptuning", 1, {"acc": 0.5, "score": 0.5})
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    csv = (tmp_path / "report" / "superglue.csv").read_text().splitlines()
    assert csv[1] == "tiny,ptuning,50.00,50.00,50.00,50.00,1,3,1"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny | ptuning | 3 (CB), 1 (BoolQ, RTE) |" in text


def write_examples(folder, task, method, seed, labels, preds, **extra) -> None:
    """A results.json with per-example test records, its metrics computed here by hand."""
    n = len(labels)
    acc = sum(p == g for p, g in zip(preds, labels, strict=True)) / n
    f1s = []
    for c in range(3):
        tp = sum(p == g == c for p, g in zip(preds, labels, strict=True))
        f1s.append(2 * tp / max(preds.count(c) + labels.count(c), 1))
    test = {"acc": acc, "f1": sum(f1s) / 3, "score": (acc + sum(f1s) / 3) / 2}
    examples = {"index": list(range(n)), "pred": preds, "label": labels}
    cb_labels = ["entailment", "contradiction", "neutral"]
    write_run(folder, task, method, seed, test, labels=cb_labels, test_examples=examples, **extra)


CB_GOLD = [0] * 20 + [1] * 15 + [2] * 5


def test_paired_bootstrap_marks_best_and_noise(tmp_path):
    """Manual gets all 40 right, P-Tuning's two seeds miss one each (within noise of it), the
    prior answers label 0 everywhere: acc 0.5, F1 (2*20/60)/3, score 0.3611 (far below)."""
    write_examples(tmp_path / "m", "CB", "manual", 34, CB_GOLD, list(CB_GOLD))
    for seed, miss in ((1, 0), (2, 30)):
        preds = list(CB_GOLD)
        preds[miss] = 2
        write_examples(tmp_path / f"p{seed}", "CB", "ptuning", seed, CB_GOLD, preds)
    write_examples(tmp_path / "prior", "CB", "prior", 34, CB_GOLD, [0] * 40)
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| tiny |")]
    assert [line.split(" | ")[1] for line in table[:3]] == ["prior", "manual", "ptuning"]
    assert table[0].startswith("| tiny | prior | 1 | 50.0/22.2 [")  # one seed: an interval
    assert "| tiny | manual | 1 | 100.0/100.0 [100.0, 100.0] (best) |" in text
    assert "ptuning | 2 | 97.5/" in table[2] and "≈" in table[2]
    paired = (tmp_path / "report" / "superglue_paired.csv").read_text().splitlines()
    prior_manual = next(line for line in paired if line.startswith("tiny,prior,manual,CB,"))
    assert prior_manual.split(",")[4] == f"{100 * (0.5 + 2 / 9) / 2 - 100:.2f}"  # -63.89
    assert prior_manual.endswith(",False")
    assert next(line for line in paired if "manual,ptuning,CB" in line).endswith(",True")


def test_rows_split_by_setting_and_cost_table(tmp_path):
    """Two P-Tuning templates are two rows, labelled by the setting, not two seeds; the cost
    table gives each job's seconds and peak memory."""
    for template in (0, 1):
        write_examples(
            tmp_path / f"t{template}",
            "CB",
            "ptuning",
            34,
            CB_GOLD,
            list(CB_GOLD),
            steps=16,
            seconds=12.4,
            peak_memory_mib={"host": 2048.0, "gpu": None},
            config={"seed": 34, "task": {"template_id": template}},
        )
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny | ptuning | task.template_id=0 | 1 |" in text
    assert "| tiny | ptuning | task.template_id=1 | 1 |" in text
    assert "| tiny | ptuning (task.template_id=1) | 12 s, 2.0 GiB |" in text
    cost = (tmp_path / "report" / "superglue_cost.csv").read_text().splitlines()
    assert cost[1] == "tiny,ptuning (task.template_id=0),CB,1,12,2048,"


def test_multirc_bootstrap_resamples_questions():
    """MultiRC's EM is per question, so its bootstrap draws questions: 4 questions of 3
    options, 2 all right, give EM samples in quarters only (options drawn singly would not)."""
    labels = [1, 0, 0] * 4
    preds = [1, 0, 0] * 2 + [0, 0, 0] * 2
    groups = [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    run = {
        "test": {"em": 0.5, "score": 0.5},
        "labels": ["false", "true"],
        "test_examples": {"pred": preds, "label": labels, "group": groups},
    }
    samples = score_samples("MultiRC", run)
    assert set(np.round(samples * 4, 6)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert len(set(samples.tolist())) > 1 and abs(samples.mean() - 0.5) < 0.05
