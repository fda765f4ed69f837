"""LPAQA's top-k ensemble: weighted mean of the templates' candidate probabilities."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.job import run
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.discrete import published_templates
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.launch.config import ROOT

LAMA = ROOT / "data" / "lama"
TEMPLATES = ["[X] is the capital of [Y] .", "[X] , capital of [Y] .", "The capital [X] of [Y] ."]


def test_top_k_templates_come_with_their_weights_best_first():
    templates, weights = published_templates(LAMA, "lpaqa_mine", "P103", causal=True, top_k=3)
    rows = [json.loads(line) for line in (LAMA / "prompts/lpaqa_mine/P103.jsonl").open()]
    by_template = {r["template"]: r["weight"] for r in rows}
    assert len(templates) == 3 and weights == [by_template[t] for t in templates]
    assert weights == sorted(weights, reverse=True)
    assert all(not t.startswith("[Y]") for t in templates)  # a causal LM reads [Y] last


def test_only_lpaqa_has_an_ensemble():
    with pytest.raises(DataError, match="prompt.top_k=2.*autoprompt_bert publishes one"):
        published_templates(LAMA, "autoprompt_bert", "P103", top_k=2)


def test_ensemble_is_the_log_of_the_weighted_mean_probability():
    """Two examples x two templates, weights 1/4 and 3/4, hand-computed."""
    module = PromptModule.__new__(PromptModule)
    torch.nn.Module.__init__(module)
    module.template_weights = torch.tensor([0.25, 0.75])
    p = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.5, 0.5]])
    combined = module.ensemble(p.log()).exp()
    expected = torch.tensor([[0.525, 0.475], [0.425, 0.575]])
    torch.testing.assert_close(combined, expected)


def evaluate(backbone, templates, weights) -> float:
    data = LamaDataModule(
        str(LAMA), "P1376", backbone.tokenizer, backbone.kind, templates, weights, vocab="full"
    )
    data.setup()
    module = PromptModule(backbone, data.candidate_ids, template_weights=data.template_weights)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(module, data, verbose=False)[0]["test/P@1"]


def test_zero_weights_leave_the_first_template_exactly(backbone):
    """An ensemble whose other templates weigh nothing scores exactly like its first one,
    and one of equal templates too; the tiny random model's scores are only compared."""
    alone = evaluate(backbone, TEMPLATES[0], None)
    assert evaluate(backbone, TEMPLATES, [1.0, 0.0, 0.0]) == alone
    assert evaluate(backbone, [TEMPLATES[0]] * 2, [0.3, 0.7]) == pytest.approx(alone)


def test_ensemble_batches_hold_one_row_per_template(gpt2):
    data = LamaDataModule(str(LAMA), "P1376", gpt2.tokenizer, "causal", TEMPLATES, [3, 1, 0])
    data.setup()
    batch = next(iter(data.test_dataloader()))
    b = batch["target_index"].numel()
    assert batch["input_ids"].shape[0] == batch["answer_position"].numel() == 3 * b
    assert data.template_weights == [0.75, 0.25, 0.0]
    assert math.isclose(sum(data.template_weights), 1.0)


def test_templates_must_space_their_answer_alike(gpt2):
    with pytest.raises(DataError, match="spaces its answer slot unlike"):
        LamaDataModule(str(LAMA), "P1376", gpt2.tokenizer, "causal", [TEMPLATES[0], "[X]:[Y]"])


def test_ptl_train_runs_the_lpaqa_ensemble(tmp_path, compose_cfg):
    overrides = ["backbone=tiny-gpt2", "prompt=discrete", "prompt.top_k=3", "task.relation=P1376"]
    run(compose_cfg("train", tmp_path, overrides))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "lpaqa_mine_top3"
    relation = results["relations"]["P1376"]
    assert relation["test_n"] == relation["filter"]["test"]["kept"]  # each fact scored once
