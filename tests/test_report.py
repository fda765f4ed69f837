"""ptl-report and the analysis notebook on a hand-written sweep: exact table values, missing and
failed jobs listed, relation-set notes, valid PNGs, byte-identical reruns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from ptuning_lightning import reporting
from ptuning_lightning.cli import report as ptl_report
from ptuning_lightning.lama import report
from ptuning_lightning.launch.config import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENCODERS = {"lstm": "LSTMPromptEncoder", "mlp": "MLPPromptEncoder"}
# table1_macro.csv's seen / unseen columns for results without the split (tests/test_seen_unseen.py)
NO_SPLIT = {
    f"{part}_{what}": "" for part in ("seen", "unseen") for what in ("p1_mean", "p1_std", "n")
}


def write_job(job: Path, overrides: list[str], results: dict | None) -> None:
    """A Hydra multirun job folder: .hydra/overrides.yaml, and results.json unless None."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results, indent=2))


def result(method: str, encoder: str, seed: int, test_p1: dict[str, float]) -> dict:
    """A results.json as a LAMA job writes it (the fields the report reads)."""
    template = "[P*3] [X] [P*3] [Y] [P*3]" if method == "ptuning" else None
    return {
        "method": method,
        "backbone": "tiny-gpt2",
        "encoder": ENCODERS[encoder],
        "seed": seed,
        "relations": {r: {"dev_p1": p, "test_p1": p} for r, p in test_p1.items()},
        "config": {"prompt": {"name": method, "template": template}},
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """manual and P-Tuning (lstm) over 3 relations x 2 seeds; P-Tuning (mlp): one seed over
    2 relations, one failed job; one job (encoder=none) that never wrote results.json."""
    root = tmp_path / "sweep"
    (root / "multirun.yaml").parent.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    manual = {"P19": 0.2, "P37": 0.3, "P103": 0.4}
    jobs = [
        (["prompt=manual", "seed=1"], result("manual", "lstm", 1, manual)),
        (["prompt=manual", "seed=2"], result("manual", "lstm", 2, manual)),
        (["seed=1"], result("ptuning", "lstm", 1, {"P19": 0.5, "P37": 0.6, "P103": 0.7})),
        (["seed=2"], result("ptuning", "lstm", 2, {"P19": 0.6, "P37": 0.7, "P103": 0.8})),
        (["encoder=mlp", "seed=1"], result("ptuning", "mlp", 1, {"P19": 0.1, "P37": 0.2})),
        (
            ["encoder=mlp", "seed=2"],
            {
                **result("ptuning", "mlp", 2, {}),
                "status": "failed",
                "error": "RuntimeError: CUDA out of memory | step 3",
            },
        ),
        (["encoder=none", "seed=1"], None),
    ]
    for i, (overrides, results) in enumerate(jobs):
        write_job(root / str(i), overrides, results)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_load_runs_separates_failed_and_missing(sweep: Path):
    runs, problems = reporting.load_runs([sweep])
    assert len(runs) == 5
    assert [(Path(p.path).name, p.status) for p in problems] == [("5", "failed"), ("6", "missing")]
    assert problems[0].what == "tiny-gpt2 / ptuning (mlp) / seed 2"
    assert problems[1].what == "encoder=none seed=1"


def test_report_tables_problems_and_plots(sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    ptl_report([str(sweep), "--out", str(out)])

    macro = read_csv(out / report.MACRO_CSV)
    assert macro == [
        {
            "backbone": "tiny-gpt2",
            "method": "manual",
            "encoder": "—",
            "test_p1_mean": "30.00",
            "test_p1_std": "0.00",
            "ci95_low": "",
            "ci95_high": "",
            "seeds": "2",
            "relations": "3",
            **NO_SPLIT,
        },
        {
            "backbone": "tiny-gpt2",
            "method": "ptuning",
            "encoder": "lstm",
            "test_p1_mean": "65.00",
            "test_p1_std": "7.07",
            "ci95_low": "",
            "ci95_high": "",
            "seeds": "2",
            "relations": "3",
            **NO_SPLIT,
        },
        # the failed seed is not averaged in: one seed, no std
        {
            "backbone": "tiny-gpt2",
            "method": "ptuning",
            "encoder": "mlp",
            "test_p1_mean": "15.00",
            "test_p1_std": "",
            "ci95_low": "",
            "ci95_high": "",
            "seeds": "1",
            "relations": "2",
            **NO_SPLIT,
        },
    ]
    per_relation = read_csv(out / report.RELATIONS_CSV)
    assert list(per_relation[0]) == ["backbone", "method", "encoder", "P19", "P37", "P103"]
    assert [(r["P19"], r["P37"], r["P103"]) for r in per_relation] == [
        ("20.00", "30.00", "40.00"),
        ("55.00", "65.00", "75.00"),
        ("10.00", "20.00", ""),
    ]

    text = (out / reporting.REPORT_MD).read_text()
    assert "| tiny-gpt2 | ptuning | lstm | 65.0 ± 7.1 | n/a | n/a | 2 | 3 |" in text
    assert "| tiny-gpt2 | ptuning | mlp | 15.0 | n/a | n/a | 1 | 2 |" in text
    table2 = text.split("## Table 2")[1]  # a line per relation, a column per row
    assert (
        "| relation | tiny-gpt2 / manual | tiny-gpt2 / ptuning / lstm | tiny-gpt2 / ptuning / mlp |"
        in table2
    )
    assert "| P19 | 20.0 ± 0.0 | 55.0 ± 7.1 | 10.0 |" in table2  # mlp: one seed, no per-fact hits
    assert "| P103 | 40.0 ± 0.0 | 75.0 ± 7.1 | — |" in table2
    assert "No prior row for tiny-gpt2" in text
    assert "tiny-gpt2 / ptuning (mlp) lacks P103" in text
    problems = text.split("## Missing or failed runs")[1]
    assert f"| failed | `{sweep / '5'}` | tiny-gpt2 / ptuning (mlp) / seed 2 |" in problems
    assert "CUDA out of memory \\| step 3" in problems  # a "|" cannot break the table
    assert f"| missing | `{sweep / '6'}` | encoder=none seed=1 | no results.json |" in problems
    assert "## Table 1" in capsys.readouterr().out  # the tables are printed too

    for name in (report.RELATIONS_PNG, report.ENCODERS_PNG):
        png = (out / name).read_bytes()
        assert (
            png.startswith(PNG_MAGIC) and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")
        )
        assert f"]({name})" in text

    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == sorted(
        [
            reporting.REPORT_MD,
            report.MACRO_CSV,
            report.RELATIONS_CSV,
            report.PAIRED_CSV,
            report.COLLAPSE_CSV,
            report.RELATIONS_PNG,
            report.ENCODERS_PNG,
        ]
    )
    ptl_report([str(sweep), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_default_out_and_single_encoder(sweep: Path):
    """Default output is <DIR>/report; with one encoder there is no encoder column or plot."""
    for job in ("4", "5", "6"):
        for path in sorted((sweep / job).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    ptl_report([str(sweep)])
    out = sweep / "report"
    assert read_csv(out / report.MACRO_CSV)[1]["method"] == "ptuning"
    assert "encoder" not in read_csv(out / report.MACRO_CSV)[0]
    assert not (out / report.ENCODERS_PNG).exists()
    assert "## Missing or failed runs\n\nNone." in (out / reporting.REPORT_MD).read_text()


def test_kept_runs_rebuild_and_extend_the_report(sweep: Path, tmp_path: Path):
    """--keep-runs writes each run's results.json, gzipped, under OUT/runs/: the report rebuilt
    from them alone is byte-identical, and a new seed added to them joins its row (P-Tuning
    lstm: seeds 1 and 2 at macro 60 and 70, seed 3 at 80 -> 70.00 ± 10.00)."""
    for job in ("4", "5", "6"):  # no failed or missing job: those are not runs to keep
        for path in sorted((sweep / job).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    out = tmp_path / "out"
    ptl_report([str(sweep), "--out", str(out), "--keep-runs"])
    kept = sorted(p.relative_to(out) for p in out.rglob(reporting.KEPT_JSON))
    assert kept == [Path(f"runs/sweep/{job}/results.json.gz") for job in "0123"]
    tables = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    gzipped = {p: p.read_bytes() for p in out.rglob(reporting.KEPT_JSON)}

    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(out / reporting.KEPT_RUNS, rebuilt / reporting.KEPT_RUNS)
    ptl_report([str(rebuilt / reporting.KEPT_RUNS), "--out", str(rebuilt), "--keep-runs"])
    assert {p.name: p.read_bytes() for p in rebuilt.iterdir() if p.is_file()} == tables
    ptl_report([str(sweep), "--out", str(out), "--keep-runs"])  # a rerun: the same bytes
    assert {p: p.read_bytes() for p in out.rglob(reporting.KEPT_JSON)} == gzipped

    new = tmp_path / "seed3"
    write_job(
        new / "0", ["seed=3"], result("ptuning", "lstm", 3, {"P19": 0.7, "P37": 0.8, "P103": 0.9})
    )
    ptl_report([str(out / reporting.KEPT_RUNS), str(new), "--out", str(out), "--keep-runs"])
    assert (out / "runs/seed3/0/results.json.gz").exists()
    ptuning = read_csv(out / report.MACRO_CSV)[1]
    assert (ptuning["test_p1_mean"], ptuning["test_p1_std"], ptuning["seeds"]) == (
        "70.00",
        "10.00",
        "3",
    )

    other = tmp_path / "elsewhere" / "sweep"  # a second folder of the same name
    write_job(other / "0", ["seed=4"], result("manual", "lstm", 4, {"P19": 0.1}))
    with pytest.raises(SystemExit, match="would both be kept as"):
        ptl_report(
            [str(sweep), str(other.parent / "sweep"), "--out", str(tmp_path / "x"), "--keep-runs"]
        )


def run_notebook(sweep: Path, monkeypatch) -> tuple[str, int]:
    """Execute the notebook top to bottom on ``sweep`` (via PTL_SWEEP): its text and Markdown
    output, and how many images it drew."""
    import nbformat
    from nbclient import NotebookClient

    notebook = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    monkeypatch.setenv("PTL_SWEEP", str(sweep))
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=120,
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    client.execute()
    outputs = [out for cell in code for out in cell.outputs]
    data = [out.get("data", {}) for out in outputs]
    text = "".join(out.get("text", "") for out in outputs) + "".join(
        d.get("text/markdown", "") for d in data
    )
    return text, sum("image/png" in d for d in data)


def test_notebook_runs_on_a_sweep(sweep: Path, monkeypatch):
    """The notebook on the fixture sweep: tables, problems, the note on the missing prior row;
    results without the split or per-fact hits draw no seen / unseen plot and no pairs."""
    text, images = run_notebook(sweep, monkeypatch)
    assert "5 runs, 2 missing or failed jobs" in text
    assert "65.0 ± 7.1" in text and "| missing |" in text
    assert "No prior row for tiny-gpt2" in text and "| n/a | n/a |" in text
    assert "No run has the seen / unseen split" in text
    assert "No results with collapse rates or a prior row." in text  # the collapse section
    assert "No two rows of a backbone with per-fact results (test_hits) to pair." in text
    assert images == 2


def test_methods_side_by_side_in_the_papers_order(tmp_path):
    """One row per backbone, the paper's methods as columns in its order (MP, LPAQA,
    AutoPrompt, FT, MP+FT, P-Tuning), whatever order the jobs ran in."""
    scores = {
        "ptuning": 0.6,
        "manual_finetune": 0.5,
        "finetune": 0.4,
        "autoprompt": 0.3,
        "lpaqa_mine_top5": 0.25,
        "lpaqa_mine": 0.2,
        "manual": 0.1,
    }
    for i, (method, p1) in enumerate(scores.items()):
        write_job(tmp_path / str(i), [f"prompt={method}"], result(method, "lstm", 1, {"P19": p1}))
    runs, _ = reporting.load_runs([tmp_path])
    header, rows = report.side_by_side(report.tables(runs))
    assert header == [
        "backbone",
        "MP",
        "LPAQA",
        "LPAQA top-5",
        "AutoPrompt (searched)",
        "FT",
        "MP+FT",
        "P-Tuning",
    ]
    # no per-fact hits in these results: no intervals, and only the best is marked
    assert rows == [["tiny-gpt2", "10.0", "20.0", "25.0", "30.0", "40.0", "50.0", "60.0 (best)"]]


def job_with(tmp_path: Path, name: str, method: str, seed: int, hits: dict[str, str], **config):
    """A job whose relations carry per-fact hits, with extra config values (``prompt``,
    ``optimizer``) that may make it a setting of its own."""
    run = result(method, "lstm", seed, {r: h.count("1") / len(h) for r, h in hits.items()})
    for relation, h in hits.items():
        run["relations"][relation] |= {"test_hits": h, "epochs": 3}
    for group, values in config.items():
        run["config"].setdefault(group, {}).update(values)
    write_job(tmp_path / name, [name], run)


def test_rows_are_settings_and_only_seeds_are_averaged(tmp_path):
    """Four P-Tuning templates x 2 seeds give four rows of 2 seeds each (not one row of 8);
    manual runs that differ only in a training key (nothing trains) stay one row."""
    hits = {"P19": "1100"}
    for t, template in enumerate(["[P] [X] [P] [Y]", "[P*3] [X] [P*3] [Y]", "[P*6] [X] [Y]"]):
        for seed in (1, 2):
            prompt = {"template": template}
            job_with(tmp_path, f"t{t}s{seed}", "ptuning", seed, hits, prompt=prompt)
    for seed, lr in ((1, 0.1), (2, 0.2)):
        run = result("manual", "lstm", seed, {"P19": 0.25})
        run["config"]["optimizer"] = {"lr": lr}
        write_job(tmp_path / f"m{seed}", [f"m{seed}"], run)
    t = report.tables(reporting.load_runs([tmp_path])[0])
    rows = {row.key.label(): len(row.runs) for row in t.rows}
    assert rows == {
        "manual": 2,
        "ptuning (prompt.template=[P*3] [X] [P*3] [Y])": 2,
        "ptuning (prompt.template=[P*6] [X] [Y])": 2,
        "ptuning (prompt.template=[P] [X] [P] [Y])": 2,
    }
    header, _ = report.macro_table(t, report.Bootstrap())
    assert "setting" in header


@pytest.mark.parametrize("shorter", [False, True])
def test_a_node_turned_off_in_some_runs_is_one_setting(tmp_path, shorter):
    """``warmup=null`` against the default warmup labels its rows ``warmup=null`` and
    ``warmup=LinearLR``, not every key of the node against "—"; with a third run whose warmup
    is shorter, the runs that set it are told apart by the key in which they differ."""
    linear = {"_target_": "torch.optim.lr_scheduler.LinearLR", "start_factor": 0.01}
    configs = {"on": linear | {"total_iters": 60}, "off": None}
    if shorter:
        configs["short"] = linear | {"total_iters": 30}
    for name, warmup in configs.items():
        for seed in (1, 2):
            run = result("ptuning", "lstm", seed, {"P19": 0.5})
            run["config"]["warmup"] = warmup
            write_job(tmp_path / f"{name}{seed}", [f"{name}{seed}"], run)
    t = report.tables(reporting.load_runs([tmp_path])[0])
    rows = {row.key.label(): len(row.runs) for row in t.rows}
    if shorter:
        assert rows == {
            "ptuning (warmup=null)": 2,
            "ptuning (warmup.total_iters=30)": 2,
            "ptuning (warmup.total_iters=60)": 2,
        }
    else:
        assert rows == {"ptuning (warmup=null)": 2, "ptuning (warmup=LinearLR)": 2}


def test_bootstrap_intervals_and_paired_differences(tmp_path):
    """One seed each on one relation of 100 facts: A hits 50, B hits none, C hits exactly
    A's facts, D hits all. A's 95% interval is near the normal one, 50 ± 1.96 * 5 points;
    D's is [100, 100]; A - B is +50 beyond noise, A - C is 0 within noise."""
    facts = {"A": "1" * 50 + "0" * 50, "B": "0" * 100, "C": "1" * 50 + "0" * 50, "D": "1" * 100}
    for name, h in facts.items():
        job_with(tmp_path, name, "ptuning", 1, {"P19": h}, prompt={"template": name})
    t = report.tables(reporting.load_runs([tmp_path])[0])
    boot = report.Bootstrap()
    row = {r.key.setting[0][1]: r for r in t.rows}
    low, high = boot.interval(row["A"], ["P19"])
    assert low == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02)
    assert high == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)
    assert boot.interval(row["D"], ["P19"]) == (1.0, 1.0)
    a_b = boot.difference(row["A"], row["B"], ["P19"])
    assert a_b[0] == pytest.approx(0.5) and a_b[1] > 0.35 and not report.within_noise(a_b)
    a_c = boot.difference(row["A"], row["C"], ["P19"])
    assert a_c == (0.0, 0.0, 0.0) and report.within_noise(a_c)
    header, (cells,) = report.side_by_side(t, boot)
    side = dict(zip(header, cells, strict=True))
    assert side["P-Tuning (prompt.template=D)"] == "100.0 [100.0, 100.0] (best)"
    text = report.markdown_tables(t, boot)
    assert "| tiny-gpt2 | ptuning (prompt.template=A) | ptuning (prompt.template=B) | +50.0" in text
    assert (
        "| P19 | 50.0 [40.0, 60.0] | 0.0 [0.0, 0.0] | 50.0 [40.0, 60.0] | 100.0 [100.0, 100.0] |"
        in text
    )


def test_rows_over_different_relations_pair_on_the_common_ones(tmp_path):
    """LPAQA on a causal LM lacks P1412, so its row covers fewer relations. A covers P19
    (all 10 facts hit), P37 (5 of 10) and P36 (none); B covers P19 (none) and P37 (the same 5
    facts). Their paired macro is over P19 and P37: B - A = (-100 + 0) / 2 = -50 points, not
    the gap of their own macros (25 - 50 = -25)."""
    half = "1" * 5 + "0" * 5
    job_with(tmp_path, "a", "ptuning", 1, {"P19": "1" * 10, "P37": half, "P36": "0" * 10})
    job_with(tmp_path, "b", "lpaqa_mine", 1, {"P19": "0" * 10, "P37": half})
    t = report.tables(reporting.load_runs([tmp_path])[0])
    header, rows = report.paired_table(t, report.Bootstrap())
    by_relation = {
        row[header.index("relation")]: dict(zip(header, row, strict=True)) for row in rows
    }
    assert set(by_relation) == {"macro", "P19", "P37"}
    assert by_relation["macro"]["row_a"] == "lpaqa_mine"  # discrete prompts come first
    assert by_relation["macro"]["difference"] == pytest.approx(-0.5)
    assert by_relation["macro"]["relations"] == 2
    assert by_relation["P37"]["difference"] == 0.0 and by_relation["P37"]["relations"] == 1
    assert "| 2 common relations |" in report.markdown_tables(t, report.Bootstrap())


def test_jobs_of_one_relation_each_merge_by_seed(tmp_path):
    """A sweep over task.relation (one job per relation) x 2 seeds: one row of 2 seeds whose
    macro averages each seed's relations (P19 0.2 and P37 0.4, then 0.4 and 0.6)."""
    for seed, scores in ((1, (0.2, 0.4)), (2, (0.4, 0.6))):
        for relation, p1 in zip(("P19", "P37"), scores, strict=True):
            run = result("manual", "lstm", seed, {relation: p1})
            write_job(tmp_path / f"{relation}-{seed}", [relation], run)
    t = report.tables(reporting.load_runs([tmp_path])[0])
    (row,) = t.rows
    assert len(row.seeds) == 2 and row.macros == pytest.approx([0.3, 0.5])
    assert row.scores("P19") == pytest.approx([0.2, 0.4])
    assert report.notes(t) == []


def with_answers(job: Path, answers: dict[str, tuple[float, str]]) -> None:
    """Give a job's relations a collapse rate and most predicted word: {relation: (rate,
    word)}."""
    path = job / "results.json"
    run = json.loads(path.read_text())
    for relation, (rate, word) in answers.items():
        run["relations"][relation] |= {"collapse_rate": rate, "most_predicted": word}
    path.write_text(json.dumps(run))


def test_collapse_rates_and_the_prior_floor(tmp_path):
    """Hand-made prior, manual and P-Tuning (2 seeds) runs on P19 (40 facts, prior 50%,
    "Paris") and P37 (20 facts, prior 95%, "English"). P-Tuning seed 1 gives "A" to 95% of
    P19, seed 2 "Paris" to 92%: both collapsed, one on the prior's word. Its 100% "English" on
    P37 is not, since the prior's share there is above 0.9. P-Tuning is below the prior on
    both relations: P19 by 50 points (beyond noise), P37 by one fact (within noise). Manual
    results predate collapse rates: no rates, but the floor still counts."""
    prior = {"P19": "1" * 20 + "0" * 20, "P37": "1" * 19 + "0"}
    answers = {  # seed -> relation -> (hits, collapse rate, most predicted word)
        1: {"P19": ("0" * 40, 0.95, "A"), "P37": ("1" * 18 + "00", 1.0, "English")},
        2: {"P19": ("0" * 40, 0.92, "Paris"), "P37": ("1" * 18 + "00", 1.0, "English")},
    }
    for seed, relations in answers.items():
        hits = {relation: h for relation, (h, _, _) in relations.items()}
        job_with(tmp_path, f"p{seed}", "ptuning", seed, hits)
        with_answers(tmp_path / f"p{seed}", {r: (rate, w) for r, (_, rate, w) in relations.items()})
    job_with(tmp_path, "prior", "prior", 1, prior)
    with_answers(tmp_path / "prior", {"P19": (1.0, "Paris"), "P37": (1.0, "English")})
    job_with(tmp_path, "manual", "manual", 1, {"P19": "1" * 40, "P37": "1" * 20})
    t = report.tables(reporting.load_runs([tmp_path])[0])
    boot = report.Bootstrap()
    row = {r.key.method: r for r in t.rows}
    assert report.below_prior(t, row["ptuning"], boot) == (2, 1, 2)
    assert report.below_prior(t, row["manual"], boot) == (0, 0, 2)
    assert report.below_prior(t, row["prior"], boot) is None
    assert [(c.relation, c.seed, c.collapsed) for c in report.collapses(t)] == [
        ("P19", 1, True),
        ("P19", 2, True),
        ("P37", 1, False),
        ("P37", 2, False),
    ]
    text = report.markdown_collapse(t, boot)
    assert "| tiny-gpt2 | manual | n/a | n/a | 0 (0) of 2 | n/a |" in text
    assert (
        "| tiny-gpt2 | ptuning | 2 of 4 (1 on the prior's word) | 2 of 4 | 2 (1) of 2 | "
        '1.00 (P37, seed 1, "English") |' in text
    )
    assert '- tiny-gpt2 / ptuning, P19, seed 1: 0.95, "A"; 0.0 / 50.0' in text
    assert '- tiny-gpt2 / ptuning, P19, seed 2: 0.92, "Paris" (the prior\'s word); 0.0' in text
    assert "English" not in text.split("Collapsed runs")[1]
    out = tmp_path / "report"
    report.write_report(t, [], out)
    csv_rows = read_csv(out / report.COLLAPSE_CSV)
    assert csv_rows[0] == {
        "backbone": "tiny-gpt2",
        "method": "ptuning",
        "relation": "P19",
        "seed": "1",
        "collapse_rate": "0.950",
        "most_predicted": "A",
        "test_p1": "0.00",
        "prior_p1": "50.00",
        "prior_word": "Paris",
        "collapsed": "True",
        "below_prior": "True",
    }
    assert [row["below_prior"] for row in csv_rows] == ["True", "True", "False", "False"]
    assert "## Collapse and the prior floor" in (out / "report.md").read_text()


def test_a_run_below_the_prior_is_named_collapsed_or_not(tmp_path):
    """The prior answers 30 of P19's 40 facts (75%). P-Tuning seed 1 scatters its answers
    (rate 0.4, not collapsed) and hits none: below the prior beyond noise, which the collapse
    rate alone misses. Seed 2 misses one fact the prior hits: every resample of the facts
    gives a difference between -x/40 and 0, so the interval's top is 0 and it is within
    noise. Seed 3 hits one fact more than the prior: not below."""
    job_with(tmp_path, "prior", "prior", 1, {"P19": "1" * 30 + "0" * 10})
    with_answers(tmp_path / "prior", {"P19": (1.0, "Paris")})
    runs = {1: ("0" * 40, 0.4), 2: ("0" + "1" * 29 + "0" * 10, 0.7), 3: ("1" * 31 + "0" * 9, 0.8)}
    for seed, (hits, rate) in runs.items():
        job_with(tmp_path, f"p{seed}", "ptuning", seed, {"P19": hits})
        with_answers(tmp_path / f"p{seed}", {"P19": (rate, "Lyon")})
    t = report.tables(reporting.load_runs([tmp_path])[0])
    found = {c.seed: c for c in report.collapses(t)}
    assert [(found[s].collapsed, found[s].below_prior) for s in runs] == [
        (False, True),
        (False, False),
        (False, False),
    ]
    assert found[1].versus_prior[0] == pytest.approx(-0.75)
    assert found[2].versus_prior[0] == pytest.approx(-1 / 40)
    assert found[2].versus_prior[2] == 0.0
    text = report.markdown_collapse(t, report.Bootstrap())
    # The row's mean (50%) is below the prior, but a resample of the seeds can draw seed 3
    # alone: within noise over seeds, while seed 1 alone failed.
    assert "| tiny-gpt2 | ptuning | 0 of 3 | 1 of 3 | 1 (0) of 1 |" in text
    assert "- tiny-gpt2 / ptuning: P19, seed 1: 0.0 / 75.0\n" in text + "\n"
    assert "Collapsed runs" not in text
