"""LAMA data: the paper's vocabulary and single-token filters, encoding, batching, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptuning_lightning.data.batching import EpochShuffleSampler, collate
from ptuning_lightning.lama.data import LamaDataModule

# In the tiny tokenizers " Paris", " France", " Serbia" are one token, " Shire" and " Gondor"
# several; "Tokyo", "Rome" and "Zzyzx" are not in the word list. Glued to a bracket ("(Paris"),
# the byte-level BPE tokenizer splits "Paris" in two.
WORDS = ["Paris", "France", "Serbia", "Shire", "Gondor"]
FACTS = {
    "train": [
        ("Alpha", "Paris"),
        ("Beta", "France"),
        ("Gamma", "Shire"),
        ("Delta", "Tokyo"),
        ("Epsilon", "Serbia"),
        ("Zeta", "Gondor"),
        ("Eta", "Rome"),
    ],
    "dev": [("Alpha", "France"), ("Beta", "Zzyzx")],
    "test": [("Alpha", "Serbia"), ("Beta", "Paris"), ("Gamma", "Shire")],
}
TEMPLATE = "[X] is located in [Y] ."
STATS = {  # (facts, dropped_not_in_vocab, dropped_multi_token, kept)
    "train": (7, 2, 2, 3),
    "dev": (2, 1, 0, 1),
    "test": (3, 0, 1, 2),
}


def fact_lines(facts) -> str:
    return "".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in facts)


def make_lama(root: Path, facts=FACTS, words=WORDS, template=TEMPLATE, relation="P99") -> Path:
    """A LAMA data root: trex/<relation>/{train,dev,test}.jsonl, relations.jsonl, vocab/."""
    folder = root / "trex" / relation
    folder.mkdir(parents=True)
    for split, rows in facts.items():
        (folder / f"{split}.jsonl").write_text(rows if isinstance(rows, str) else fact_lines(rows))
    (root / "relations.jsonl").write_text(json.dumps({"relation": relation, "template": template}))
    (root / "vocab").mkdir()
    lists = {"bert-base-cased": words, "gpt2-xl": ["Ġ" + w for w in words]}
    (root / "vocab" / "29k-vocab.json").write_text(json.dumps(lists))
    return root


def data_module(root: Path, backbone, **kw) -> LamaDataModule:
    kw.setdefault("vocab_key", "gpt2-xl" if backbone.kind == "causal" else "bert-base-cased")
    data = LamaDataModule(str(root), "P99", backbone.tokenizer, backbone.kind, **kw)
    data.setup()
    return data


def stats(counts: tuple[int, int, int, int]) -> dict[str, int]:
    keys = ("facts", "dropped_not_in_vocab", "dropped_multi_token", "kept")
    return dict(zip(keys, counts, strict=True))


@pytest.fixture
def lama(tmp_path) -> Path:
    return make_lama(tmp_path)


def test_filter_stats(lama, backbone):
    """Facts are dropped when the object is outside the word list or not a single token."""
    data = data_module(lama, backbone)
    assert data.stats == {split: stats(c) for split, c in STATS.items()}
    assert data.template_source == TEMPLATE  # the relation's manual template by default
    assert [e["obj"] for e in data.datasets["train"]] == ["Paris", "France", "Serbia"]


def test_single_token_filter_uses_the_answer_slot_spacing(tmp_path, gpt2):
    """With [Y] glued to "(", GPT-2 sees "Paris" without a space: two tokens, dropped."""
    data = data_module(make_lama(tmp_path, template="[X] is located in ([Y])."), gpt2)
    assert data.stats["train"] == stats((7, 2, 3, 2))
    assert data.stats["test"] == stats((3, 0, 2, 1))


def answer_token(backbone, word: str) -> int:
    """The id of ``word`` as the answer slot holds it, spelled by hand: GPT-2's byte-level BPE
    marks the leading space with "Ġ"; BERT's WordPiece has no space marker."""
    token = "Ġ" + word if backbone.kind == "causal" else word
    assert token in backbone.tokenizer.get_vocab(), token  # one token of the tiny tokenizer
    return backbone.tokenizer.convert_tokens_to_ids(token)


def test_candidates_are_single_token_words(lama, backbone):
    """Candidates: every single-token word of the list, in list order, each once."""
    data = data_module(lama, backbone)
    expected = [answer_token(backbone, w) for w in ["Paris", "France", "Serbia"]]
    assert data.candidate_ids.tolist() == expected


def test_examples_point_at_their_gold_candidate(lama, backbone):
    """target_index indexes candidate_ids, target_token is the object's token, and the input
    is the template's text with the subject, tokenized as plain text: a causal LM reads up to
    the answer slot (its last token), a masked LM gets the mask token there."""
    data = data_module(lama, backbone)
    for split, examples in data.datasets.items():
        assert [e["index"] for e in examples] == list(range(len(examples))), split
        for e in examples:
            assert e["target_token"] == answer_token(backbone, e["obj"])
            assert data.candidate_ids[e["target_index"]].item() == e["target_token"]
            if backbone.kind == "causal":
                text, answer = f"{e['sub']} is located in", -1
            else:
                text = f"{e['sub']} is located in {backbone.tokenizer.mask_token} ."
                answer = -3  # [MASK] . [SEP]
            assert e["input_ids"] == backbone.tokenizer(text)["input_ids"]
            assert e["answer_position"] == len(e["input_ids"]) + answer


def test_full_vocabulary_keeps_every_single_token_object(lama, backbone):
    """``vocab=full``: every token is a candidate and no fact is dropped for the word list."""
    data = data_module(lama, backbone, vocab="full")
    assert torch.equal(data.candidate_ids, torch.arange(len(backbone.tokenizer)))
    assert data.stats["train"]["dropped_not_in_vocab"] == 0
    for e in data.datasets["train"]:
        assert data.candidate_ids[e["target_index"]].item() == e["target_token"]


def test_template_counts_the_pseudo_tokens_the_model_sees(lama, backbone):
    """``data.template`` is what the model sees, so the prompt encoder is sized to match: a
    causal LM drops the [P*3] after [Y] (6 pseudo tokens), a masked LM keeps all 9."""
    data = data_module(lama, backbone, template="[P*3] [X] [P*3] [Y] [P*3]")
    n = 6 if backbone.kind == "causal" else 9
    assert data.template.n_prompt == n
    for e in data.datasets["train"]:
        assert [k for k in e["prompt_index"] if k >= 0] == list(range(n))


# --- bad input: tests/test_bad_input.py ---------------------------------------------------


# --- batching ----------------------------------------------------------------------------


def test_collate_pads_right():
    """Ids pad with pad_id, prompt_index with -1; the mask marks real tokens; ints stack."""
    batch = collate(
        [
            {"input_ids": [5, 6, 7], "prompt_index": [0, -1, -1], "target_index": 2, "sub": "A"},
            {"input_ids": [8], "prompt_index": [0], "target_index": 0, "sub": "B"},
        ],
        pad_id=1,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["prompt_index"].tolist() == [[0, -1, -1], [0, -1, -1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["target_index"].tolist() == [2, 0]
    assert "sub" not in batch


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    """A resumed run at epoch k draws the same order as an uninterrupted one."""
    first, again = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        orders.append(list(first))
        assert sorted(orders[-1]) == list(range(50))
    again.set_epoch(2)
    assert list(again) == orders[2]
    assert orders[0] != orders[1] != orders[2]
    assert list(EpochShuffleSampler(50, seed=0)) != orders[0]
    assert len(first) == 50
