"""AutoPrompt search: finds a planted trigger token, never proposes special tokens, and saves a
plain-text template that evaluates exactly like the searched prompt."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import write_jsonl
from transformers import GPT2Config, GPT2LMHeadModel

from ptuning_lightning.job import run
from ptuning_lightning.lama.autoprompt import AutoPromptModule, allowed_tokens, trigger_spacing
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.templates import Template, TemplateTokenizer

SEARCH = "[X] [P] [Y]"


def planted_world(gpt2: Backbone, tmp_path) -> tuple[Backbone, int, str]:
    """A tiny untied GPT-2 whose input embedding of one token (the planted trigger) is a large
    multiple of the answer's output embedding, so that token as the last input makes the
    model say the answer; the end-of-text token is planted twice as strongly, but it is special
    and must never be chosen. Every fact of the relation has that answer."""
    tokenizer = gpt2.tokenizer
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=1, n_head=2, tie_word_embeddings=False
    )
    model = GPT2LMHeadModel(config)
    answer, trigger = tokenizer(" Paris")["input_ids"], tokenizer(" river")["input_ids"]
    assert len(answer) == len(trigger) == 1
    with torch.no_grad():
        direction = model.lm_head.weight[answer[0]]
        model.transformer.wte.weight[trigger[0]] = 50 * direction
        model.transformer.wte.weight[tokenizer.eos_token_id] = 100 * direction
    relation = tmp_path / "trex" / "P1"
    relation.mkdir(parents=True)
    for split, names in {"train": range(16), "dev": range(16, 24), "test": range(24, 32)}.items():
        write_jsonl(
            relation / f"{split}.jsonl", [{"sub": f"Person {i}", "obj": "Paris"} for i in names]
        )
    return Backbone(model, tokenizer, "causal", "planted"), trigger[0], "Paris"


def planted_data(backbone: Backbone, root) -> LamaDataModule:
    data = LamaDataModule(
        str(root), "P1", backbone.tokenizer, "causal", SEARCH, vocab="full", batch_size=8
    )
    data.setup()
    return data


class RecordProposals(AutoPromptModule):
    def propose(self, grad: torch.Tensor, position: int) -> torch.Tensor:
        proposals = super().propose(grad, position)
        self.proposed = [*getattr(self, "proposed", []), *proposals.tolist()]
        return proposals


def search(backbone: Backbone, data: LamaDataModule, tmp_path) -> RecordProposals:
    module = RecordProposals(backbone, data.candidate_ids, data.template, candidates=5)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    return module


def test_search_finds_the_planted_token_and_never_proposes_special_ones(gpt2, tmp_path):
    backbone, trigger, _ = planted_world(gpt2, tmp_path)
    data = planted_data(backbone, tmp_path)
    start = planted_data(backbone, tmp_path)  # before the search: triggers are "the"
    module = search(backbone, data, tmp_path)
    assert module.trigger_ids.tolist() == [trigger]
    special = set(backbone.tokenizer.all_special_ids)
    assert module.proposed and not special & set(module.proposed)
    assert not module.allowed[:, sorted(special)].any()
    assert start.candidate_ids.equal(data.candidate_ids)


def test_saved_template_round_trips(gpt2, tmp_path):
    """The exported text, tokenized again, is exactly the searched token sequence: the
    subject, then the trigger, then the answer read at the last position."""
    backbone, trigger, _ = planted_world(gpt2, tmp_path)
    data = planted_data(backbone, tmp_path)
    module = search(backbone, data, tmp_path)
    embeddings, text = module.exported(SEARCH)
    assert text == "[X] river [Y]" and embeddings.numel() == 0
    expected = backbone.tokenizer("Person 3")["input_ids"] + [trigger]  # " river"
    searched = data.template_tokenizer.encode({"X": "Person 3"})
    pairs = zip(searched.input_ids, searched.prompt_index, strict=True)
    searched_ids = [trigger if k >= 0 else t for t, k in pairs]
    plain = TemplateTokenizer(Template.parse(text), backbone.tokenizer, "causal").encode(
        {"X": "Person 3"}
    )
    assert plain.input_ids == searched_ids == expected
    assert plain.answer_position == searched.answer_position == len(expected) - 1


def test_every_allowed_token_comes_back_as_itself(gpt2):
    """The filter behind the round trip, for every allowed token of the tiny vocabulary."""
    for space in (True, False):
        allowed = allowed_tokens(gpt2.tokenizer, space).nonzero().flatten().tolist()
        assert len(allowed) > 1000
        for token in allowed[::50]:
            word = gpt2.tokenizer.decode([token]).strip()
            text = " " + word if space else word
            assert gpt2.tokenizer(text, add_special_tokens=False)["input_ids"] == [token]


def test_trigger_spacing_follows_the_template():
    template = Template.parse("[P*2] [X] [P] [Y]")
    assert trigger_spacing(template) == [False, True, True]


@pytest.mark.parametrize("backbone_name", ["tiny-gpt2", "tiny-bert"])
def test_ptl_train_searches_and_exports_a_text_template(tmp_path, compose_cfg, backbone_name):
    """prompt=autoprompt on both model kinds: the saved template has no pseudo tokens left,
    and ptl-eval of the exported prompt reproduces the search's test P@1 exactly."""
    overrides = [
        f"backbone={backbone_name}",
        "prompt=autoprompt",
        "prompt.trainer.max_epochs=1",
        "prompt.template='[X] [P*2] [Y] .'",
        "prompt.candidates=3",
        "task.relation=P1376",
    ]
    run(compose_cfg("train", tmp_path / "train", overrides))
    trained = json.loads((tmp_path / "train" / "results.json").read_text())
    relation = trained["relations"]["P1376"]
    assert trained["method"] == "autoprompt" and "[P" not in relation["template"]
    assert len(relation["template"].split()) == 5  # [X], two triggers, [Y], "."
    exported = [f"backbone={backbone_name}", "task.relation=P1376", "prompt=exported"]
    exported.append(f"prompt.path={tmp_path / 'train'}")
    run(compose_cfg("eval", tmp_path / "eval", exported))
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["relations"]["P1376"]["test_p1"] == relation["test_p1"]
    assert evaluated["relations"]["P1376"]["template"] == relation["template"]


def test_autoprompt_under_ddp_is_refused_clearly(tmp_path, compose_cfg):
    overrides = ["backbone=tiny-gpt2", "prompt=autoprompt", "task.relation=P1376", "trainer=ddp"]
    with pytest.raises(ValueError, match="prompt=autoprompt runs in one process"):
        run(compose_cfg("train", tmp_path, overrides))
