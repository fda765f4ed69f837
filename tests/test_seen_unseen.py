"""Recall or prior: test P@1 split by whether the fact's object occurs among the relation's
training objects (``object_split`` in results.json), on hand-made facts with exact counts, for
the prior, a manual prompt and P-Tuning in one pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_report import read_csv, result, run_notebook, write_job

from ptuning_lightning import reporting
from ptuning_lightning.cli import report as ptl_report
from ptuning_lightning.job import run
from ptuning_lightning.lama import report
from ptuning_lightning.lama.run import object_split, split_macro

# In the tiny tokenizers " Paris", " France", " Serbia" are one token and " Shire" several;
# "Tokyo" is not in the word list (tests/test_lama_data.py). Kept training objects: Paris
# twice, France once (the prior: Paris). Kept test facts, in order: Paris (seen), Serbia
# (unseen), France (seen), Paris (seen); the prior hits the first and the last.
WORDS = ["Paris", "France", "Serbia", "Shire"]
FACTS = {
    "P98": {
        "train": ["Paris", "Paris", "France", "Shire", "Tokyo"],
        "dev": ["France"],
        "test": ["Paris", "Serbia", "France", "Paris", "Shire"],
    },
    # Every test object unseen: the seen part is empty (P@1 None, count 0).
    "P99": {"train": ["Serbia"], "dev": ["Serbia"], "test": ["Paris", "France"]},
}
KEYS = ("test_seen_p1", "test_seen_n", "test_unseen_p1", "test_unseen_n")
SEEN = {"P98": [True, False, True, True], "P99": [False, False]}  # per kept test fact


def make_root(root: Path) -> Path:
    """A LAMA data root with FACTS (subjects "S0", "S1", ...), one template for both."""
    for relation, splits in FACTS.items():
        for split, objects in splits.items():
            rows = [{"sub": f"S{i}", "obj": obj} for i, obj in enumerate(objects)]
            write_jsonl(root / "trex" / relation / f"{split}.jsonl", rows)
    write_jsonl(
        root / "relations.jsonl",
        [{"relation": r, "template": "[X] is located in [Y] ."} for r in FACTS],
    )
    lists = {"bert-base-cased": WORDS, "gpt2-xl": ["Ġ" + w for w in WORDS]}
    (root / "vocab").mkdir()
    (root / "vocab" / "29k-vocab.json").write_text(json.dumps(lists))
    return root


def expected(hits: str, seen: list[bool]) -> dict:
    """The split counted by hand from the hits and the facts' seen flags."""
    out = {}
    for part, flag in (("seen", True), ("unseen", False)):
        part_hits = [h for h, s in zip(hits, seen, strict=True) if s == flag]
        out[f"test_{part}_n"] = len(part_hits)
        out[f"test_{part}_p1"] = part_hits.count("1") / len(part_hits) if part_hits else None
    return out


def test_object_split_on_hand_made_facts():
    objects = ["Paris", "Rome", "Paris", "Oslo", "Rome"]
    split = object_split(objects, "10011", {"Paris", "Oslo"})
    assert split == {
        "test_seen": "10110",  # per fact, in the hits' order
        "test_seen_p1": 2 / 3,  # Paris hit, Paris missed, Oslo hit
        "test_seen_n": 3,
        "test_unseen_p1": 0.5,  # Rome missed, Rome hit
        "test_unseen_n": 2,
    }
    empty = object_split(["Rome"], "1", set())
    assert empty == {
        "test_seen": "0",
        "test_seen_p1": None,
        "test_seen_n": 0,
        "test_unseen_p1": 1.0,
        "test_unseen_n": 1,
    }


def test_split_macro_averages_relations_that_have_the_part():
    relations = {
        "A": {"test_seen_p1": 0.5, "test_seen_n": 4, "test_unseen_p1": 0.0, "test_unseen_n": 2},
        "B": {"test_seen_p1": None, "test_seen_n": 0, "test_unseen_p1": 0.25, "test_unseen_n": 8},
    }
    assert split_macro(relations) == {
        "test_seen_p1": 0.5,  # B has no seen facts: not averaged in
        "test_seen_n": 4,
        "test_unseen_p1": 0.125,
        "test_unseen_n": 10,
    }
    assert split_macro({**relations, "C": {"test_p1": 0.1}}) == {}  # C lacks the split


def job(tmp_path: Path, compose_cfg, name: str, overrides: list[str]) -> dict:
    root = tmp_path / "lama"
    if not root.exists():
        make_root(root)
    out = tmp_path / name
    cfg = compose_cfg(
        "train",
        out,
        ["backbone=tiny-gpt2", f"task.data_root={root}", "task.relation=[P98,P99]", *overrides],
    )
    run(cfg)
    return json.loads((out / "results.json").read_text())


def test_prior_split_on_hand_made_relations(tmp_path, compose_cfg):
    """The prior (Paris) on P98: 2 of 3 seen facts, 0 of 1 unseen; on P99 it answers Serbia,
    and no test object is seen."""
    results = job(tmp_path, compose_cfg, "prior", ["prompt=prior"])
    p98, p99 = results["relations"]["P98"], results["relations"]["P99"]
    assert p98["test_hits"] == "1001" and p99["test_hits"] == "00"
    assert {k: p98[k] for k in KEYS} == {
        "test_seen_p1": 2 / 3,
        "test_seen_n": 3,
        "test_unseen_p1": 0.0,
        "test_unseen_n": 1,
    }
    assert {k: p99[k] for k in KEYS} == {
        "test_seen_p1": None,
        "test_seen_n": 0,
        "test_unseen_p1": 0.0,
        "test_unseen_n": 2,
    }
    assert {k: results["macro"][k] for k in KEYS} == {
        "test_seen_p1": 2 / 3,  # P99 has no seen facts
        "test_seen_n": 3,
        "test_unseen_p1": 0.0,
        "test_unseen_n": 3,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        ["prompt=manual"],
        ["prompt=ptuning", "multi_relation=true", "trainer.max_epochs=1"],
    ],
    ids=["manual", "one_pass"],
)
def test_split_follows_the_hits(tmp_path, compose_cfg, overrides):
    """Whatever the prompt predicts, separately or in one pass, the split is its hits counted
    on the seen and the unseen facts."""
    results = job(tmp_path, compose_cfg, "run", overrides)
    for relation, seen in SEEN.items():
        result = results["relations"][relation]
        assert len(result["test_hits"]) == len(seen)
        split = expected(result["test_hits"], seen)
        assert {k: result[k] for k in split} == split, relation


# --- ptl-report ------------------------------------------------------------------------------


def relation(seen: str, unseen: str) -> dict:
    """A relation's results.json entry from the hits of its seen and of its unseen test facts
    (seen facts first), the P@1 counted here."""

    def p1(hits: str) -> float | None:
        return hits.count("1") / len(hits) if hits else None

    return {
        "dev_p1": p1(seen + unseen),
        "test_p1": p1(seen + unseen),
        "test_hits": seen + unseen,
        "test_seen": "1" * len(seen) + "0" * len(unseen),
        "test_seen_p1": p1(seen),
        "test_seen_n": len(seen),
        "test_unseen_p1": p1(unseen),
        "test_unseen_n": len(unseen),
    }


def split_job(root: Path, name: str, method: str, seed: int, relations: dict, **config) -> None:
    """A job folder whose results.json has ``relations`` (and extra ``config`` groups)."""
    run = result(method, "lstm", seed, {})
    run["relations"] = relations
    for group, values in config.items():
        run["config"].setdefault(group, {}).update(values)
    write_job(root / name, [name], run)


@pytest.fixture
def controls(tmp_path: Path) -> Path:
    """P19 has 4 seen and 2 unseen test facts, P37 8 seen and none unseen. The prior: seen
    0.5 and 0.25 (macro 0.375), unseen 0. MP, two seeds: seen macros 0.375 and 0.625, unseen
    (P19 only) 0.5 and 1.0. P-Tuning on the backbone (seen 1.0 and 0.875) and on its Rand E
    control (0.5 and 0.625), one seed each: rows that differ only in backbone.control."""
    root = tmp_path / "sweep"
    prior = {"P19": relation("1100", "00"), "P37": relation("11000000", "")}
    split_job(root, "prior", "prior", 34, prior)
    for seed, (seen, unseen) in ((1, ("1000", "10")), (2, ("1110", "11"))):
        relations = {"P19": relation(seen, unseen), "P37": relation("11110000", "")}
        split_job(root, f"manual{seed}", "manual", seed, relations)
    for control, seen19, seen37 in (("none", "1111", "11111110"), ("rand_e", "1100", "11111000")):
        relations = {"P19": relation(seen19, "00"), "P37": relation(seen37, "")}
        split_job(root, control, "ptuning", 34, relations, backbone={"control": control})
    return root


def line(text: str, start: str) -> str:
    """The one line of ``text`` that starts with ``start``."""
    (found,) = [row for row in text.splitlines() if row.startswith(start)]
    return found


def test_report_shows_the_split_with_the_prior_first(controls: Path, tmp_path: Path):
    out = tmp_path / "out"
    ptl_report([str(controls), "--out", str(out)])
    macro = {(r["method"], r["setting"]): r for r in read_csv(out / report.MACRO_CSV)}
    assert list(macro) == [
        ("prior", "—"),
        ("manual", "—"),
        ("ptuning", "backbone.control=none"),
        ("ptuning", "backbone.control=rand_e"),
    ]
    split = ("seen_p1_mean", "seen_p1_std", "seen_n", "unseen_p1_mean", "unseen_p1_std", "unseen_n")
    assert [tuple(row[k] for k in split) for row in macro.values()] == [
        ("37.50", "", "12", "0.00", "", "2"),
        ("50.00", "17.68", "12", "75.00", "35.36", "2"),  # std of 37.5 and 62.5; of 50 and 100
        ("93.75", "", "12", "0.00", "", "2"),
        ("56.25", "", "12", "0.00", "", "2"),
    ]
    text = (out / reporting.REPORT_MD).read_text()
    prior = line(text, "| tiny-gpt2 | prior | — | 29.2 [")  # (2/6 + 2/8) / 2, one seed
    assert prior.endswith("] | 37.5 (12) | 0.0 (2) | 1 | 2 |")
    # test P@1: seeds (2/6 + 4/8) / 2 and (5/6 + 4/8) / 2
    manual = "| tiny-gpt2 | manual | — | 54.2 ± 17.7 | 50.0 ± 17.7 (12) | 75.0 ± 35.4 (2) | 2 | 2 |"
    assert manual in text
    assert "| backbone | Prior | MP | P-Tuning (backbone.control=none) |" in text
    assert "No prior row" not in text
    assert f"]({report.SEEN_UNSEEN_PNG})" in text
    assert (out / report.SEEN_UNSEEN_PNG).read_bytes().startswith(b"\x89PNG")


def test_paired_differences_on_seen_and_unseen_objects(controls: Path, tmp_path: Path):
    """The paired bootstrap split by the per-fact seen flags. Prior minus MP on seen objects:
    macro 0.375 - (P19 (0.25 + 0.75) / 2 + P37 0.5) / 2 = -12.5 points; on unseen objects
    (P19 only): 0 - (0.5 + 1.0) / 2 = -75 points."""
    out = tmp_path / "out"
    ptl_report([str(controls), "--out", str(out)])
    text = (out / reporting.REPORT_MD).read_text()
    assert "| a - b [95% interval] | better | seen objects: a - b | unseen objects: a - b |" in text
    row = line(text, "| tiny-gpt2 | prior | manual |").split(" | ")
    assert row[5].startswith("-12.5 [") and row[6].startswith("-75.0 [")
    paired = {(r["row_a"], r["row_b"], r["relation"]): r for r in read_csv(out / report.PAIRED_CSV)}
    assert paired[("prior", "manual", "macro:unseen")]["difference"] == "-75.00"
    assert paired[("prior", "manual", "macro:seen")]["difference"] == "-12.50"


def test_seen_unseen_plot_has_a_pair_of_bars_per_row(controls: Path):
    """Four rows (the two P-Tuning rows differ only in backbone.control): eight bars, seen
    then unseen, in the rows' order; the prior's seen P@1 as the dashed reference."""
    t = report.tables(reporting.load_runs([controls])[0])
    (ax,) = report.plot_seen_unseen(t).axes
    heights = [round(bar.get_height(), 6) for bar in ax.patches]
    assert heights == [37.5, 50.0, 93.75, 56.25, 0.0, 75.0, 0.0, 0.0]  # seen bars, then unseen
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == [
        "Prior\nn=12 / 2",
        "MP\nn=12 / 2",
        "P-Tuning\n(backbone.control=none)\nn=12 / 2",
        "P-Tuning\n(backbone.control=rand_e)\nn=12 / 2",
    ]
    (reference,) = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert list(reference.get_ydata()) == [37.5, 37.5]


def test_a_table_without_prior_says_how_to_add_it(controls: Path):
    shutil.rmtree(controls / "prior")
    t = report.tables(reporting.load_runs([controls])[0])
    text = report.markdown_tables(t)
    note = (
        "> No prior row for tiny-gpt2: the table cannot tell recall from the training prior. "
        "Add `prior` to the sweep's prompts, or run `ptl-train prompt=prior backbone=tiny-gpt2 "
        "task.relation=[P19,P37] hydra.run.dir=DIR/prior`"
    )
    assert note in text
    ax = report.plot_seen_unseen(t).axes[0]
    assert not [line for line in ax.lines if line.get_linestyle() == "--"]  # no reference


def test_results_before_the_split_still_report(tmp_path: Path):
    """results.json without the split (the committed docs/ reports): "n/a" and empty CSV
    cells, no seen/unseen plot."""
    write_job(tmp_path / "old" / "0", ["old"], result("manual", "lstm", 1, {"P19": 0.2}))
    out = tmp_path / "out"
    ptl_report([str(tmp_path / "old"), "--out", str(out)])
    (row,) = read_csv(out / report.MACRO_CSV)
    assert row["test_p1_mean"] == "20.00" and row["seen_p1_mean"] == row["unseen_n"] == ""
    text = (out / reporting.REPORT_MD).read_text()
    assert "| tiny-gpt2 | manual | 20.0 | n/a | n/a | 1 | 1 |" in text
    assert not (out / report.SEEN_UNSEEN_PNG).exists()


def test_notebook_shows_the_split_and_the_plot(controls: Path, monkeypatch):
    """The notebook on the controls: seen / unseen cells, the per-relation plot and the seen vs
    unseen plot (one encoder: no ablation plot)."""
    text, images = run_notebook(controls, monkeypatch)
    assert line(text, "| tiny-gpt2 | prior | — | 29.2 [").endswith(
        "| 37.5 (12) | 0.0 (2) | 1 | 2 |"
    )
    assert "No prior row" not in text
    # the paired differences per relation: the prior's P19 hits minus MP's, 2/6 - 7/12 points
    assert line(text, "| tiny-gpt2 | prior | manual | P19 | -25.0 |")
    assert images == 2
