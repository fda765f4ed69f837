"""Mixed templates: pseudo tokens around the manual template's words, optionally started
from those words' embeddings."""

from __future__ import annotations

import pytest
import torch

from ptuning_lightning.lama.run import build_relation
from ptuning_lightning.prompting.templates import (
    Template,
    TemplateError,
    fill_relation,
    manual_start,
    relation_words,
)

MIXED = ["backbone=tiny-gpt2", "prompt=mixed", "task.relation=P1376"]


def test_relation_words_sit_between_input_and_answer():
    assert relation_words("[X] was born in [Y] .") == "was born in"
    assert relation_words("The official language of [X] is [Y] .") == "is"
    assert relation_words("[Y] is the capital of [X] .") == "is the capital of"
    with pytest.raises(TemplateError, match="no words between"):
        relation_words("[X] [Y] .")


def test_manual_start_puts_the_words_where_they_stand():
    """Each block of pseudo tokens starts at the manual words in its place, the ones nearest
    the next slot kept, cycled when too few; a place without words takes the relation words."""
    shape = Template.parse("[P*3] [X] [P*3] [Y]")
    assert manual_start(shape, "The capital of [X] is [Y] .") == [
        *("The", "capital", "of"),
        *("is", "is", "is"),
    ]
    assert manual_start(shape, "The official language of [X] is [Y] .") == [
        *("official", "language", "of"),
        *("is", "is", "is"),
    ]
    assert manual_start(shape, "[X] was born in [Y] .") == ["was", "born", "in"] * 2
    assert manual_start(shape, "[X] has the position of [Y] .") == ["the", "position", "of"] * 2
    # the words between the two slots, whichever comes first
    assert manual_start(shape, "[Y] is the capital of [X] .") == ["the", "capital", "of"] * 2
    short = Template.parse("[P*2] [X] [P] [Y]")
    assert manual_start(short, "The capital of [X] is [Y] .") == ["capital", "of", "is"]
    assert manual_start(short, "[X] was born in [Y] .") == ["born", "in", "in"]
    with pytest.raises(TemplateError, match="no words between"):
        manual_start(shape, "[X] [Y] .")


def test_aligned_start_reaches_the_prompt(tmp_path, compose_cfg, gpt2):
    """encoder.init_words=manual_aligned on P1376 ("[X] is the capital of [Y] ."): nothing
    stands before [X], so both blocks start at the last three relation words."""
    overrides = ["backbone=tiny-gpt2", "prompt=ptuning", "task.relation=P1376", "encoder=none"]
    cfg = compose_cfg("train", tmp_path, [*overrides, "encoder.init_words=manual_aligned"])
    module, data = build_relation(cfg, gpt2)
    assert data.template_source == "[P*3] [X] [P*3] [Y] [P*3]"  # a causal LM drops the last
    expected = gpt2.word_vectors(["the", "capital", "of"] * 2)
    torch.testing.assert_close(module.prompt().detach(), expected)


def test_fill_relation_places_the_manual_words():
    manual = "[X] was born in [Y] ."
    assert fill_relation("[P*3] [X] {relation} [P*3] [Y]", manual) == (
        "[P*3] [X] was born in [P*3] [Y]"
    )
    assert fill_relation("[P*2] {manual}", manual) == "[P*2] [X] was born in [Y] ."
    assert fill_relation("[P] [X] [P] [Y]", manual) == "[P] [X] [P] [Y]"


def test_mixed_prompt_starts_from_the_manual_words(tmp_path, compose_cfg, gpt2):
    """P1376's manual template is "[X] is the capital of [Y] .": its four relation words,
    cycled, start the six pseudo tokens, each as the mean embedding of its tokens."""
    cfg = compose_cfg("train", tmp_path, [*MIXED, "encoder=none", "encoder.init_words=manual"])
    module, data = build_relation(cfg, gpt2)
    assert data.template_source == "[P*3] [X] is the capital of [P*3] [Y]"
    assert module.trains and data.template.n_prompt == 6
    # each word's tokens in the tiny GPT-2 tokenizer, spelled by hand ("Ġ" is the space)
    pieces = {"is": ["Ġ", "is"], "the": ["Ġthe"], "capital": ["Ġc", "ap", "ital"], "of": ["Ġof"]}
    table = gpt2.model.get_input_embeddings().weight.detach()
    rows = {w: table[gpt2.tokenizer.convert_tokens_to_ids(t)].mean(0) for w, t in pieces.items()}
    expected = torch.stack([rows[w] for w in ["is", "the", "capital", "of", "is", "the"]])
    torch.testing.assert_close(module.prompt().detach(), expected)


def test_lstm_mixed_prompt_starts_at_the_manual_words(tmp_path, compose_cfg, gpt2):
    """With the paper's LSTM encoder too, the pseudo tokens the backbone sees start at the
    relation words (not just the LSTM's input)."""
    cfg = compose_cfg("train", tmp_path, [*MIXED, "encoder=lstm", "encoder.init_words=manual"])
    module, _ = build_relation(cfg, gpt2)
    expected = gpt2.word_vectors(["is", "the", "capital", "of", "is", "the"])
    torch.testing.assert_close(module.eval().prompt().detach(), expected)
