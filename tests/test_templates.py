"""Templates: parsing, validation, token placement per model kind, truncation, place_prompt."""

from __future__ import annotations

import pytest
import torch

from ptuning_lightning.prompting.templates import (
    Part,
    Template,
    TemplateError,
    TemplateTokenizer,
    place_prompt,
)

PAPER = "[P*3] [X] [P*3] [Y] [P*3]"
# Two pseudo tokens, the subject, anchor text, one pseudo token, the answer, three more, a period.
MIXED = "[P*2] [X] is the capital of [P] [Y] [P*3] ."


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bind(backbone, source: str = MIXED, **kw) -> TemplateTokenizer:
    return TemplateTokenizer(Template.parse(source), backbone.tokenizer, backbone.kind, **kw)


# --- parsing -----------------------------------------------------------------------------


def test_parse_paper_shape():
    """The paper's (3, 3, 3) template: three prompt blocks around the subject and answer."""
    t = Template.parse(PAPER)
    assert t.parts == (
        Part("prompt", count=3),
        Part("slot", value="X", space=True),
        Part("prompt", count=3, space=True),
        Part("answer", space=True),
        Part("prompt", count=3, space=True),
    )
    assert t.n_prompt == 9
    assert t.answer_space


def test_parse_manual_template_keeps_anchor_text():
    """Literal words become anchor parts; whitespace before a part gives it a leading space."""
    t = Template.parse("[X] was born in [Y] .")
    assert t.parts == (
        Part("slot", value="X"),
        Part("text", value="was born in", space=True),
        Part("answer", space=True),
        Part("text", value=".", space=True),
    )
    assert t.n_prompt == 0


def test_parse_glued_parts_have_no_leading_space():
    """Text glued to a bracket ("[X]'s", "([Y])") is tokenized without a leading space."""
    t = Template.parse("[X]'s capital is ([Y]).")
    assert [(p.kind, p.value, p.space) for p in t.parts] == [
        ("slot", "X", False),
        ("text", "'s capital is (", False),
        ("answer", "", False),
        ("text", ").", False),
    ]
    assert not t.answer_space


def test_parse_single_pseudo_token_and_custom_slots():
    """[P] is one pseudo token; templates may name several input slots."""
    t = Template.parse("[A] [P] [B] [Y]", slots=("A", "B"))
    assert [p.kind for p in t.parts] == ["slot", "prompt", "slot", "answer"]
    assert t.n_prompt == 1
    assert t.slots == ("A", "B")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("[X] is the capital.", "exactly one answer slot [Y]"),
        ("[X] [Y] and [Y]", "exactly one answer slot [Y]"),
        ("The capital is [Y].", "no input slot [X]"),
        ("[X] [FOO] [Y]", "unknown part [FOO]"),
        ("[X] [P*0] [Y]", "[P*0] needs at least one token"),
    ],
)
def test_invalid_template_names_template_and_problem(source, problem):
    """A broken template fails at parse time with the template and the problem in the message."""
    with pytest.raises(TemplateError) as err:
        Template.parse(source)
    assert repr(source) in str(err.value)
    assert problem in str(err.value)


@pytest.mark.parametrize("source", ["[Y] is the capital of [X] .", " [Y] [X]"])
def test_causal_template_needs_context_before_answer(gpt2, bert, source):
    """A causal LM reads the answer after the context, so [Y] cannot come first; masked LMs can."""
    with pytest.raises(TemplateError, match="context before"):
        bind(gpt2, source)
    assert bind(bert, source).encode({"X": "Paris"}).answer_position == 1


def test_causal_template_refuses_input_after_answer(gpt2, bert):
    """A causal LM drops everything after [Y]: an [X] there would vanish, so the template is
    refused, naming it and why; a masked LM reads [X] after the mask."""
    source = "[P*3] [Y] [X]"
    with pytest.raises(TemplateError, match=r"'\[P\*3\] \[Y\] \[X\]': \[X\] after \[Y\]"):
        Template.parse(source).for_causal()
    with pytest.raises(TemplateError, match="causal LM"):
        bind(gpt2, source)
    encoded = bind(bert, source).encode({"X": "Paris"})
    assert encoded.prompt_index[1:4] == [0, 1, 2]  # [CLS] [P*3] [MASK] Paris [SEP]
    assert encoded.answer_position == 4
    record = "[passage] [query] [Y] [rest]"  # ReCoRD: the query's rest is context after [Y]
    with pytest.raises(TemplateError, match=r"\[rest\] after \[Y\]"):
        Template.parse(record, ("passage", "query", "rest")).for_causal()
    causal = Template.parse(record, ("passage", "query", "rest"), ("rest",)).for_causal()
    assert [p.value for p in causal.parts if p.kind == "slot"] == ["passage", "query"]


def test_model_kind_is_validated(gpt2):
    """Only ``causal`` and ``masked`` exist; a masked LM needs a tokenizer with a mask token."""
    with pytest.raises(ValueError, match="'causal' or 'masked'"):
        TemplateTokenizer(Template.parse(MIXED), gpt2.tokenizer, "seq2seq")
    with pytest.raises(TemplateError, match="mask token"):
        TemplateTokenizer(Template.parse(MIXED), gpt2.tokenizer, "masked")


# --- placement ---------------------------------------------------------------------------


def test_causal_placement(gpt2):
    """GPT-style: no special tokens, text after [Y] dropped, answer read at the last position."""
    tok, pad = gpt2.tokenizer, gpt2.tokenizer.pad_token_id
    enc = bind(gpt2).encode({"X": "Paris"})
    expected = [pad, pad, *ids(tok, " Paris"), *ids(tok, " is the capital of"), pad]
    assert enc.input_ids == expected
    assert enc.prompt_index == [0, 1] + [-1] * (len(expected) - 3) + [2]
    assert enc.answer_position == len(expected) - 1
    assert not enc.truncated


def test_masked_placement(bert):
    """BERT-style: [CLS] ... [MASK] ... [SEP], pseudo tokens after [Y] kept and numbered on."""
    tok, pad = bert.tokenizer, bert.tokenizer.pad_token_id
    enc = bind(bert).encode({"X": "Paris"})
    body = [*ids(tok, "Paris"), *ids(tok, "is the capital of")]
    expected = [
        tok.cls_token_id,
        pad,
        pad,
        *body,
        pad,
        tok.mask_token_id,
        pad,
        pad,
        pad,
        *ids(tok, "."),
        tok.sep_token_id,
    ]
    assert enc.input_ids == expected
    answer = 3 + len(body) + 1
    assert enc.answer_position == answer
    assert enc.input_ids[answer] == tok.mask_token_id
    assert enc.prompt_index == ([-1, 0, 1] + [-1] * len(body) + [2, -1, 3, 4, 5, -1, -1])


def test_prompt_index_numbers_every_pseudo_token_once(backbone):
    """Pseudo tokens are numbered 0..n-1 in reading order; n_prompt counts what the model sees."""
    tt = bind(backbone, PAPER)
    enc = tt.encode({"X": "Paris"})
    numbered = [k for k in enc.prompt_index if k >= 0]
    assert numbered == list(range(tt.template.n_prompt))
    assert tt.template.n_prompt == (6 if backbone.kind == "causal" else 9)
    assert len(enc.prompt_index) == len(enc.input_ids)


def test_answer_ids_follow_the_answer_slot_spacing(gpt2):
    """Byte-level BPE: the answer carries a leading space only if [Y] follows whitespace."""
    tok = gpt2.tokenizer
    assert bind(gpt2).answer_ids("Paris") == ids(tok, " Paris")
    assert bind(gpt2, "[X] ([Y]").answer_ids("Paris") == ids(tok, "Paris")
    assert ids(tok, " Paris") != ids(tok, "Paris")


# --- truncation --------------------------------------------------------------------------


LONG_SUBJECT = "Lazarevac Michel Delving Lazarevac"


def test_long_subject_is_cut_inside_the_slot_only(backbone):
    """An over-long input loses its last tokens; template, pseudo tokens and [Y] stay intact."""
    subject = ids(backbone.tokenizer, " " + LONG_SUBJECT)  # [X] follows whitespace in MIXED
    keep = 3
    assert len(subject) > keep
    tt = bind(backbone)
    tt = bind(backbone, max_length=tt.fixed_length + keep)
    short, cut = tt.encode({"X": "Paris"}), tt.encode({"X": LONG_SUBJECT})  # "Paris": one token
    x = short.prompt_index.index(1) + 1  # the slot comes right after [P*2]
    assert cut.truncated and not short.truncated
    assert len(cut.input_ids) == tt.max_length
    assert cut.input_ids == short.input_ids[:x] + subject[:keep] + short.input_ids[x + 1 :]
    assert cut.prompt_index == short.prompt_index[:x] + [-1] * keep + short.prompt_index[x + 1 :]
    assert cut.answer_position == short.answer_position + keep - 1


def test_input_that_just_fits_is_not_truncated(backbone):
    """At exactly max_length nothing is cut and the flag stays off."""
    n = len(bind(backbone).encode({"X": LONG_SUBJECT}).input_ids)
    enc = bind(backbone, max_length=n).encode({"X": LONG_SUBJECT})
    assert len(enc.input_ids) == n
    assert not enc.truncated


def test_max_length_below_template_size_is_an_error(backbone):
    """A limit that leaves no room for the input is refused with the template named."""
    tt = bind(backbone)
    tt = bind(backbone, max_length=tt.fixed_length)
    with pytest.raises(TemplateError, match="max_length") as err:
        tt.encode({"X": "Paris"})
    assert repr(MIXED) in str(err.value)


# --- place_prompt ------------------------------------------------------------------------


PROMPT_INDEX = torch.tensor([[-1, 0, -1, 1, -1], [2, -1, -1, 0, 1]])


def test_place_prompt_shared_prompt():
    """A (n_prompt, H) prompt lands at its numbered positions; all other rows are untouched."""
    embeds, prompt = torch.randn(2, 5, 4), torch.randn(3, 4)
    out = place_prompt(embeds, PROMPT_INDEX, prompt)
    for b, t in zip(*torch.nonzero(PROMPT_INDEX >= 0, as_tuple=True), strict=True):
        assert torch.equal(out[b, t], prompt[PROMPT_INDEX[b, t]])
    keep = PROMPT_INDEX < 0
    assert torch.equal(out[keep], embeds[keep])


def test_place_prompt_per_example_prompt():
    """A (B, n_prompt, H) prompt gives each example its own pseudo-token embeddings."""
    embeds, prompt = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    out = place_prompt(embeds, PROMPT_INDEX, prompt)
    for b, t in zip(*torch.nonzero(PROMPT_INDEX >= 0, as_tuple=True), strict=True):
        assert torch.equal(out[b, t], prompt[b, PROMPT_INDEX[b, t]])
    keep = PROMPT_INDEX < 0
    assert torch.equal(out[keep], embeds[keep])


def test_place_prompt_gradient_reaches_prompt_only():
    """Gradients flow into the prompt (what P-Tuning trains), one contribution per use."""
    embeds = torch.randn(2, 5, 4, requires_grad=True)
    prompt = torch.randn(3, 4, requires_grad=True)
    place_prompt(embeds, PROMPT_INDEX, prompt).sum().backward()
    assert torch.equal(prompt.grad, torch.tensor([2.0, 2.0, 1.0]).unsqueeze(1).expand(3, 4))
    assert torch.equal(embeds.grad, (PROMPT_INDEX < 0).float().unsqueeze(-1).expand(2, 5, 4))


def test_place_prompt_without_pseudo_tokens_is_identity():
    """Manual templates (no pseudo tokens) pass the token embeddings through unchanged."""
    embeds = torch.randn(2, 5, 4)
    out = place_prompt(embeds, torch.full((2, 5), -1), torch.empty(0, 4))
    assert out is embeds
