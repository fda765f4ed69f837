"""LAMA-UHN (``task.subset=uhn``): the string-match and person-name filters on hand-made facts,
the backbone's name probe against a plain forward pass, the drop counts of a run in
results.json, and the refusal of an unknown subset."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUIET
from hydra.errors import InstantiationException
from test_lama_data import make_lama

from ptuning_lightning.cli import train as train_main
from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.job import run
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.uhn import NameProbe, string_match, uhn_filter


def facts(*pairs: tuple[str, str]) -> list[dict]:
    return [{"sub": s, "obj": o} for s, o in pairs]


class FakeProbe:
    """Top words chosen by hand: ``top[(part, noun)]``, empty for any other part; records
    every call."""

    name = "fake"

    def __init__(self, top: dict[tuple[str, str], set[str]]) -> None:
        self.top, self.calls = top, []

    def __call__(self, parts: list[str], noun: str) -> dict[str, set[str]]:
        self.calls.append((list(parts), noun))
        return {p: self.top.get((p, noun), set()) for p in parts}


def test_string_match_is_a_case_insensitive_substring():
    """Dropped: the object inside the subject's name, whatever the case and even inside a
    longer word; kept: anything else (a subject inside the object does not count)."""
    pairs = [
        ("Apple Watch", "Apple"),  # dropped
        ("apple pie", "Apple"),  # dropped: case
        ("ROME Airport", "Rome"),  # dropped: case
        ("Iranian Airways", "Iran"),  # dropped: inside a longer word
        ("Pineapple Express", "Apple"),  # dropped: inside a longer word
        ("Paris Hilton", "France"),
        ("Rome", "Romania"),
        ("Saint Helena", "Helen Island"),
    ]
    assert [string_match(s, o) for s, o in pairs] == [True] * 5 + [False] * 3
    kept, counts = uhn_filter(facts(*pairs), "P36", top_words=None)  # no person-name filter
    assert [f["sub"] for f in kept] == ["Paris Hilton", "Rome", "Saint Helena"]
    assert counts == {"string_match": 5, "person_name": 0, "probe": None}


def test_person_name_filter_drops_objects_among_any_name_parts_top_words():
    """P27 (country): "Jean Marais" goes (France among Jean's top words), "Hans Zimmer" goes by
    its second part, "Jean Smith" stays (Ireland is no part's top word), "Li Wei" stays (the
    comparison is case-sensitive, as the script's with a cased BERT). "Tom France" goes by the
    string match first and is never probed. Each part is asked once, with the noun "country"."""
    probe = FakeProbe(
        {
            ("Jean", "country"): {"France", "Canada", "Belgium"},
            ("Zimmer", "country"): {"Germany", "Austria", "Switzerland"},
            ("Smith", "country"): {"England", "Scotland", "Wales"},
            ("Wei", "country"): {"China", "Taiwan", "Singapore"},
        }
    )
    pairs = [
        ("Jean Marais", "France"),
        ("Hans Zimmer", "Germany"),
        ("Jean Smith", "Ireland"),
        ("Li Wei", "china"),
        ("Tom France", "France"),
    ]
    kept, counts = uhn_filter(facts(*pairs), "P27", probe)
    assert [f["sub"] for f in kept] == ["Jean Smith", "Li Wei"]
    assert counts == {"string_match": 1, "person_name": 2, "probe": "fake"}
    assert probe.calls == [(["Hans", "Jean", "Li", "Marais", "Smith", "Wei", "Zimmer"], "country")]


@pytest.mark.parametrize(("relation", "noun"), [("P19", "city"), ("P1412", "language")])
def test_person_name_filter_asks_the_relations_noun(relation, noun):
    probe = FakeProbe({("Marais", noun): {"Paris", "French"}})
    kept, counts = uhn_filter(
        facts(("Jean Marais", "Paris"), ("Jean Marais", "Lyon")), relation, probe
    )
    assert [f["obj"] for f in kept] == ["Lyon"]
    assert counts["person_name"] == 1 and probe.calls[0][1] == noun


def test_other_relations_are_never_probed():
    probe = FakeProbe({("Jean", "country"): {"France"}})
    kept, counts = uhn_filter(facts(("Jean Marais", "France")), "P37", probe)
    assert len(kept) == 1 and probe.calls == []
    assert counts == {"string_match": 0, "person_name": 0, "probe": None}


def reference_top_words(backbone, part: str, noun: str) -> set[str]:
    """The top 3 words written out by hand: the whole model on the plain sentence, no padding
    or batching; the causal LM's next token after the colon, the masked LM's mask."""
    sentence = f"{part} is a common name in the following {noun}:"
    if backbone.kind == "masked":
        sentence += f" {backbone.tokenizer.mask_token} ."
    ids = backbone.tokenizer(sentence)["input_ids"]
    position = -1 if backbone.kind == "causal" else ids.index(backbone.tokenizer.mask_token_id)
    with torch.no_grad():
        logits = backbone.model(input_ids=torch.tensor([ids])).logits[0, position]
    return {backbone.tokenizer.decode([i]).strip() for i in logits.topk(3).indices.tolist()}


def test_name_probe_reads_the_backbones_top_three_once_per_part(backbone, monkeypatch):
    """Batched and padded (batch of 2 over parts of different lengths) it gives each part the
    top 3 words of the plain forward pass; a part asked again is not scored again."""
    parts = ["Jean", "Marais", "Novak", "Djokovic", "Alexandria"]
    scored = []
    logits_at = backbone.logits_at

    def counting(embeds, mask, positions, token_ids=None):
        scored.append(embeds.size(0))
        return logits_at(embeds, mask, positions, token_ids)

    monkeypatch.setattr(backbone, "logits_at", counting)
    probe = NameProbe(backbone, batch_size=2)
    top = probe(parts, "country")
    assert top == {p: reference_top_words(backbone, p, "country") for p in parts}
    assert all(len(words) <= 3 for words in top.values())
    assert probe(["Jean", "Zed"], "country")["Jean"] == top["Jean"]
    assert scored == [2, 2, 1, 1]  # five parts in batches of two, then "Zed" alone
    assert probe.name == backbone.name


# --- the data module and a run ------------------------------------------------------------

# P27 in the tiny tokenizers: " Paris", " France", " Serbia" are one token, " Gondor" several,
# "Tokyo" is not in the word list. The fake probe ranks France first for "Jean".
UHN_FACTS = {
    "train": [("Paris Hilton", "Paris"), ("Jean Marais", "France"), ("Novak Djokovic", "Serbia")],
    "dev": [("Paris Hilton", "Paris"), ("Luc Besson", "France")],
    "test": [
        ("Jean Marais", "France"),  # person name
        ("Paris Hilton", "Paris"),  # string match
        ("Serbian Orthodox Church", "Serbia"),  # string match, inside a word
        ("Novak Djokovic", "Serbia"),
        ("Luc Besson", "France"),
        ("Gandalf", "Gondor"),  # several tokens
        ("Alpha", "Tokyo"),  # not in the word list
    ],
}
TEST_STATS = {
    "facts": 7,
    "dropped_not_in_vocab": 1,
    "dropped_multi_token": 1,
    "uhn": {"string_match": 2, "person_name": 1, "probe": "fake"},
    "kept": 2,
}
JEAN = {("Jean", "country"): {"France"}}


def test_ptl_train_subset_uhn_writes_the_drop_counts(tmp_path, monkeypatch):
    """``task.subset=uhn`` on a hand-made P27 (tiny-gpt2, the manual prompt): the test split
    loses the UHN facts, counted under filter.test.uhn; train and dev stay whole."""
    root = make_lama(tmp_path / "lama", facts=UHN_FACTS, relation="P27")
    monkeypatch.setattr("ptuning_lightning.lama.run.NameProbe", lambda backbone: FakeProbe(JEAN))
    out = tmp_path / "run"
    overrides = [
        "backbone=tiny-gpt2",
        "prompt=manual",
        f"task.data_root={root}",
        "task.relation=P27",
        "task.subset=uhn",
        *QUIET,
    ]
    monkeypatch.setattr("sys.argv", ["ptl-train", *overrides, f"hydra.run.dir={out}"])
    train_main()
    result = json.loads((out / "results.json").read_text())["relations"]["P27"]
    assert result["filter"]["test"] == TEST_STATS
    assert result["test_n"] == 2 == len(result["test_hits"])
    assert result["filter"]["train"] == {
        "facts": 3,
        "dropped_not_in_vocab": 0,
        "dropped_multi_token": 0,
        "kept": 3,
    }
    assert result["filter"]["dev"]["kept"] == 2 and "uhn" not in result["filter"]["dev"]


def test_uhn_scores_the_prompt_that_subset_null_trains(tmp_path, monkeypatch):
    """P-Tuning on P27 (tiny-gpt2, the backbone's own name probe): training and dev selection
    are those of ``subset=null`` (the probe draws no random numbers), only the test facts
    differ, by the counted drops."""
    results = {}
    for subset in ("null", "uhn"):
        out = tmp_path / subset
        overrides = [
            "backbone=tiny-gpt2",
            "task.relation=P27",
            f"task.subset={subset}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            *QUIET,
        ]
        monkeypatch.setattr("sys.argv", ["ptl-train", *overrides, f"hydra.run.dir={out}"])
        train_main()
        results[subset] = json.loads((out / "results.json").read_text())["relations"]["P27"]
    full, uhn = results["null"], results["uhn"]
    assert uhn["train_loss"] == full["train_loss"] and uhn["dev_p1"] == full["dev_p1"]
    assert uhn["filter"]["train"] == full["filter"]["train"]
    drops = uhn["filter"]["test"]["uhn"]
    assert drops["probe"] == "tiny-gpt2" and drops["string_match"] > 0
    assert uhn["test_n"] == full["test_n"] - drops["string_match"] - drops["person_name"]


def test_subset_null_keeps_every_test_fact(tmp_path, gpt2):
    root = make_lama(tmp_path, facts=UHN_FACTS, relation="P27")
    data = LamaDataModule(str(root), "P27", gpt2.tokenizer, "causal", vocab_key="gpt2-xl")
    data.setup()
    assert data.stats["test"]["kept"] == 5 and "uhn" not in data.stats["test"]
    assert [e["sub"] for e in data.datasets["test"]][:2] == ["Jean Marais", "Paris Hilton"]


# --- bad input ----------------------------------------------------------------------------


def test_unknown_subset_is_refused_before_training(tmp_path, compose_cfg):
    cfg = compose_cfg("train", tmp_path, ["backbone=tiny-gpt2", "task.relation=P1376"])
    cfg.task.subset = "lama-uhn"
    with pytest.raises(
        InstantiationException,
        match=r"task\.subset: unknown subset 'lama-uhn'; choose from null \(all facts\) or uhn",
    ):
        run(cfg)
    assert not (tmp_path / "P1376").exists()  # no relation run started


def test_a_test_split_emptied_by_uhn_names_the_filter(tmp_path, gpt2):
    root = make_lama(tmp_path, facts=UHN_FACTS | {"test": [("Paris Hilton", "Paris")]})
    data = LamaDataModule(
        str(root), "P99", gpt2.tokenizer, "causal", vocab_key="gpt2-xl", subset="uhn"
    )
    with pytest.raises(DataError, match=r"test\.jsonl: no facts left after the LAMA-UHN filter"):
        data.setup()
