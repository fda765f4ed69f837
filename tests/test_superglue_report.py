"""ptl-report's SuperGLUE table from hand-made results.json files."""

from __future__ import annotations

import json

from ptuning_lightning.cli import report as main


def write_run(folder, task: str, method: str, seed: int, test: dict) -> None:
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
    """Three CB seeds and one RTE seed in one row: the CSV says 3 and 1, not 3 for both."""
    for seed in (1, 2, 3):
        write_run(
            tmp_path / f"cb{seed}", "CB", "ptuning", seed, {"acc": 0.5, "f1": 0.5, "score": 0.5}
        )
    write_run(tmp_path / "rte", "RTE", "ptuning", 1, {"acc": 0.5, "score": 0.5})
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    csv = (tmp_path / "report" / "superglue.csv").read_text().splitlines()
    assert csv[1] == "tiny,ptuning,50.00,50.00,50.00,3,1"
    assert "| tiny | ptuning | 3 (CB), 1 (RTE) |" in (tmp_path / "report" / "report.md").read_text()
