"""prompt=discrete: the published AutoPrompt and LPAQA prompts of each relation, evaluated."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl

from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.job import run
from ptuning_lightning.lama.data import lama_relations
from ptuning_lightning.lama.discrete import SOURCES, published_template, published_templates
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.prompting.templates import Part, Template

LAMA = ROOT / "data" / "lama"
# Relations of the 41 in data/lama/trex that each source covers (as bundled).
COVERED = {
    "autoprompt_bert": 41,
    "autoprompt_roberta": 41,
    "lpaqa_mine": 41,
    "lpaqa_paraphrase": 41,
}


@pytest.mark.parametrize("source", SOURCES)
def test_every_covered_relation_loads_and_parses(source):
    relations = lama_relations(LAMA)
    assert len(relations) == 41
    covered = 0
    for relation in relations:
        try:
            template = published_template(LAMA, source, relation)
        except DataError:
            continue
        parsed = Template.parse(template)
        assert [p.kind for p in parsed.parts].count("slot") == 1
        assert parsed.n_prompt == 0  # nothing to train: evaluated like a manual prompt
        covered += 1
    assert covered == COVERED[source]


def test_autoprompt_template_with_text_glued_to_slots():
    """AutoPrompt glues trigger tokens to [X] and ends with "[Y]."."""
    template = published_template(LAMA, "autoprompt_bert", "P1001")
    assert template == "[X]vik nationwide disabilities policing within [Y]."
    assert Template.parse(template).parts == (
        Part("slot", "X"),
        Part("text", "vik nationwide disabilities policing within"),
        Part("answer", space=True),
        Part("text", "."),
    )
    glued = Template.parse("[X]PA communerug speaks proper[Y].")
    assert [(p.kind, p.value, p.space) for p in glued.parts] == [
        ("slot", "X", False),
        ("text", "PA communerug speaks proper", False),
        ("answer", "", False),
        ("text", ".", False),
    ]


def test_lpaqa_picks_the_top_weighted_template(tmp_path):
    rows = [
        {"template": "[X] low [Y] .", "weight": 0.1},
        {"template": "[X] top [Y] .", "weight": 0.7},
        {"template": "[X] mid [Y] .", "weight": 0.2},
        {"template": "[X] tied later [Y] .", "weight": 0.7},
    ]
    write_jsonl(tmp_path / "prompts" / "lpaqa_mine" / "P19.jsonl", rows)
    assert published_template(tmp_path, "lpaqa_mine", "P19") == "[X] top [Y] ."


def test_bundled_lpaqa_choice_is_the_max_weight():
    rows = [json.loads(x) for x in (LAMA / "prompts" / "lpaqa_mine" / "P1376.jsonl").open()]
    best = max(r["weight"] for r in rows)
    template = published_template(LAMA, "lpaqa_mine", "P1376")
    assert template == "[X] is the county seat of [Y] ."
    assert [r["template"] for r in rows if r["weight"] == best] == [template]


@pytest.mark.parametrize("source", SOURCES)
def test_missing_relation_names_relation_and_source(tmp_path, source):
    other = {"template": "[X] is in [Y] .", "weight": 1.0, "relation": "P19"}
    for name in ("bert", "roberta"):
        write_jsonl(tmp_path / "prompts" / "autoprompt" / f"{name}.jsonl", [other])
    for name in ("lpaqa_mine", "lpaqa_paraphrase"):
        write_jsonl(tmp_path / "prompts" / name / "P19.jsonl", [other])
    assert published_template(tmp_path, source, "P19") == "[X] is in [Y] ."
    with pytest.raises(DataError, match=rf"prompt.source={source} .*relation P36\b") as err:
        published_template(tmp_path, source, "P36")
    assert str(tmp_path / "prompts") in str(err.value)  # and the file


def test_empty_lpaqa_file_is_a_missing_relation(tmp_path):
    write_jsonl(tmp_path / "prompts" / "lpaqa_paraphrase" / "P36.jsonl", [])
    with pytest.raises(DataError, match="lpaqa_paraphrase .*relation P36"):
        published_template(tmp_path, "lpaqa_paraphrase", "P36")


def test_unknown_source_lists_valid_ones():
    with pytest.raises(DataError, match="unknown source 'lpaqa'.*autoprompt_bert.*lpaqa_mine"):
        published_template(LAMA, "lpaqa", "P19")


# P1376 objects that are one token of the tiny GPT-2 tokenizer: with these 11 candidates the
# random model gets a test fact right (1 of 15; 0 of 7 on dev), so its P@1 is not only zeros.
FEW_WORDS = ["Japan", "Taiwan", "Santiago", "Victoria", "Alabama", "Greece", "Georgia"]
FEW_WORDS += ["Indonesia", "Serbia", "Punjab", "Venezuela"]


def few_words_lama(root):
    """The bundled P1376 data and prompts with the 29k word list replaced by FEW_WORDS."""
    (root / "trex").mkdir(parents=True)
    (root / "prompts").symlink_to(LAMA / "prompts")
    (root / "trex" / "P1376").symlink_to(LAMA / "trex" / "P1376")
    (root / "relations.jsonl").symlink_to(LAMA / "relations.jsonl")
    (root / "vocab").mkdir()
    lists = {"bert-base-cased": FEW_WORDS, "gpt2-xl": ["Ġ" + w for w in FEW_WORDS]}
    (root / "vocab" / "29k-vocab.json").write_text(json.dumps(lists))
    return root


def plain_p1(gpt2, split: str, template: str) -> tuple[int, int]:
    """(correct, n) of ``template`` on P1376's split, by a plain transformers forward of each
    fact's text up to [Y]: the argmax over the candidate words at the last position."""
    vocab = gpt2.tokenizer.get_vocab()
    candidates = [vocab["Ġ" + w] for w in FEW_WORDS]  # each one token, with its space
    facts = [json.loads(line) for line in (LAMA / "trex" / "P1376" / f"{split}.jsonl").open()]
    kept = [f for f in facts if f["obj"] in FEW_WORDS]
    correct = 0
    for fact in kept:
        text = template.split(" [Y]")[0].replace("[X]", fact["sub"])
        ids = torch.tensor([gpt2.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logits = gpt2.model(ids).logits[0, -1, candidates]
        correct += FEW_WORDS[int(logits.argmax())] == fact["obj"]
    return correct, len(kept)


def test_discrete_prompt_is_evaluated_not_trained(tmp_path, compose_cfg, gpt2):
    """ptl-train prompt=discrete scores the LPAQA template (dev and test), trains nothing, and
    its P@1 is that of the plain model reading each fact's text."""
    overrides = [
        "backbone=tiny-gpt2",
        "prompt=discrete",
        "prompt.source=lpaqa_mine",
        "task.relation=P1376",
        f"task.data_root={few_words_lama(tmp_path / 'lama')}",
    ]
    run(compose_cfg("train", tmp_path, overrides))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "lpaqa_mine"
    relation = results["relations"]["P1376"]
    assert relation["template"] == "[X] is the county seat of [Y] ."
    assert "epochs" not in relation
    counts = {split: plain_p1(gpt2, split, relation["template"]) for split in ("dev", "test")}
    assert counts["test"][0] > 0
    for split, (correct, n) in counts.items():
        assert relation[f"{split}_n"] == n
        assert relation[f"{split}_p1"] == pytest.approx(correct / n, abs=1e-6)
    assert not list(tmp_path.rglob("checkpoints"))
    assert not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "P1376" / "prompt.pt").exists()


@pytest.mark.parametrize(
    ("source", "relation"), [("lpaqa_mine", "P103"), ("lpaqa_paraphrase", "P136")]
)
def test_causal_lms_get_the_best_template_with_context_before_the_answer(source, relation):
    """LPAQA's top template starts with [Y] here: a causal LM cannot read that out, so it
    gets the highest-weighted template that has context before [Y]."""
    best = published_template(LAMA, source, relation)
    causal = published_template(LAMA, source, relation, causal=True)
    assert best.startswith("[Y]")
    assert causal != best and not causal.startswith("[Y]")
    Template.parse(causal).for_causal()


def test_relation_without_any_causal_template_says_so():
    """Every lpaqa_mine prompt of P1412 starts with [Y]."""
    with pytest.raises(
        DataError, match="P1412 starts with \\[Y\\] or puts \\[X\\] after.*causal LM"
    ):
        published_template(LAMA, "lpaqa_mine", "P1412", causal=True)


def test_causal_ensemble_skips_templates_with_the_input_after_the_answer(tmp_path, compose_cfg):
    """LPAQA's paraphrases of P136 rank "artists [Y] [X]." and "Artists [Y] [X]." in the
    top 5 with context before [Y]; a causal LM drops what follows [Y], so they are skipped like
    templates that start with [Y], and the top-5 ensemble runs."""
    rows = [
        json.loads(line)
        for line in (LAMA / "prompts" / "lpaqa_paraphrase" / "P136.jsonl").read_text().splitlines()
    ]
    ranked = sorted(rows, key=lambda r: -r["weight"])  # stable, as the source ranks them
    with_y_first = [r["template"] for r in ranked if r["template"].index("[Y]") > 0][:5]
    assert "artists [Y] [X]." in with_y_first  # what a check for a leading [Y] alone keeps
    readable = [r for r in ranked if r["template"].index("[X]") < r["template"].index("[Y]")]
    templates, weights = published_templates(LAMA, "lpaqa_paraphrase", "P136", True, 5)
    assert templates == [r["template"] for r in readable[:5]]
    assert weights == [r["weight"] for r in readable[:5]]

    overrides = [
        "backbone=tiny-gpt2",
        "prompt=lpaqa",
        "prompt.source=lpaqa_paraphrase",
        "prompt.top_k=5",
        "task.relation=P136",
    ]
    run(compose_cfg("train", tmp_path, overrides))
    result = json.loads((tmp_path / "results.json").read_text())["relations"]["P136"]
    assert result["template"] == "[X] artists [Y]."
