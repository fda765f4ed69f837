"""Recall or prior: test P@1 split by whether the fact's object occurs among the relation's
training objects (``object_split`` in results.json), on hand-made facts with exact counts, for
the prior, a manual prompt and P-Tuning in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from ptuning_lightning.job import run
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
        "test_seen_p1": 2 / 3,  # Paris hit, Paris missed, Oslo hit
        "test_seen_n": 3,
        "test_unseen_p1": 0.5,  # Rome missed, Rome hit
        "test_unseen_n": 2,
    }
    empty = object_split(["Rome"], "1", set())
    assert empty == {
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
