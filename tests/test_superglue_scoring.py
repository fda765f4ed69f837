"""Verbalizer scoring with multi-token label words, and the methods end to end (tiny LMs)."""

from __future__ import annotations

import json

import pytest
import torch

from ptuning_lightning.job import run
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.superglue.collate import collate_candidates
from ptuning_lightning.superglue.module import CandidateModule
from ptuning_lightning.superglue.tasks.rte import RTEDataModule

FEWGLUE = ROOT / "data" / "fewglue"
WORDS = {"entailment": "certainly the case", "not_entailment": "No"}


def reference_logp(backbone, inputs: dict[str, str], word: str, data: RTEDataModule) -> float:
    """log p(word) from the full model's logits, token by token, without the module."""
    longest = max(len(data.template_tokenizer.answer_ids(w)) for w in WORDS.values())
    encoded = data.template_tokenizer.encode(inputs, reserve=longest - (backbone.kind == "masked"))
    ids, at = encoded.input_ids, encoded.answer_position
    tokens = data.template_tokenizer.answer_ids(word)
    if backbone.kind == "causal":
        sequence = ids + tokens[:-1]
    else:
        sequence = ids[:at] + [backbone.tokenizer.mask_token_id] * len(tokens) + ids[at + 1 :]
    with torch.no_grad():
        logits = backbone.model(input_ids=torch.tensor([sequence])).logits[0].log_softmax(-1)
    return sum(logits[at + i, t].item() for i, t in enumerate(tokens))


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_multi_token_label_words(backbone, score):
    data = RTEDataModule(
        backbone.tokenizer, backbone.kind, str(FEWGLUE), manual=True, verbalizer=WORDS
    )
    lengths = [len(data.template_tokenizer.answer_ids(w)) for w in WORDS.values()]
    assert lengths[0] >= 3 and lengths[0] != lengths[1]  # a real multi-token case
    examples = data.encode_file(FEWGLUE / "RTE" / "train.jsonl", "train", limit=2)
    batch = collate_candidates(examples, backbone.tokenizer.pad_token_id, score)
    module = CandidateModule(backbone, ("acc",), 2)
    with torch.no_grad():
        scores = module.scores(batch)
    for b in range(len(examples)):
        record = json.loads((FEWGLUE / "RTE" / "train.jsonl").read_text().splitlines()[b])
        (item,) = data.items(record, "test")
        for c, word in enumerate(WORDS.values()):
            expected = reference_logp(backbone, item.inputs, word, data)
            expected /= lengths[c] if score == "mean" else 1
            assert scores[b, c].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("method", ["manual", "ptuning", "ptuning_finetune", "finetune"])
def test_methods_end_to_end(tmp_path, compose_cfg, method):
    cfg = compose_cfg(
        "train",
        tmp_path,
        [
            "backbone=tiny-gpt2",
            f"prompt={method}",
            "task=cb",
            "task.test_limit=8",
            "task.train.max_steps=2",
            "task.train.eval_every=1",
        ],
    )
    score = run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "CB" and results["method"] == method
    assert score == results["dev"]["score"]
    assert set(results["test"]) == {"acc", "f1", "score"}
    assert results["stats"]["test"]["records"] == 8
    assert sum(map(sum, results["confusion"]["test"])) == 8  # gold x predicted counts
    if method != "manual":
        saved = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
        trained = {k.split(".")[0] for k in saved["state_dict"]}
        expected = {"ptuning": {"encoder"}, "ptuning_finetune": {"encoder", "backbone"}}
        assert trained == expected.get(method, {"classifier", "backbone"})


@pytest.mark.parametrize("experiment", ["fewglue", "fewglue_cpu"])
def test_experiment_configs_compose(tmp_path, compose_cfg, experiment):
    cfg = compose_cfg("train", tmp_path, [f"experiment={experiment}", "task=cb"])
    assert cfg.task.train.max_steps > 0 and cfg.task.train.eval_every > 0
    assert cfg.group == experiment
