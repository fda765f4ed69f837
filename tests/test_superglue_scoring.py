"""Verbalizer scoring with multi-token label words, and the methods end to end (tiny LMs)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from ptuning_lightning.job import run
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.superglue.collate import collate_candidates
from ptuning_lightning.superglue.module import CandidateModule
from ptuning_lightning.superglue.tasks.copa import COPADataModule
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


@pytest.mark.parametrize(("task", "folder"), [("cb", "CB"), ("multirc", "MultiRC")])
def test_prior_answers_the_majority_training_label(tmp_path, compose_cfg, task, folder):
    """prompt=prior: every test answer is the label most frequent in train.jsonl (counted
    here from the files), and test accuracy is that label's share of the test examples."""

    def labels(split: str) -> list[str]:
        rows = [json.loads(line) for line in (FEWGLUE / folder / f"{split}.jsonl").open()]
        if folder == "MultiRC":  # one decision per answer option
            return [
                str(answer["label"]).lower()
                for row in rows[:3]
                for question in row["passage"]["questions"]
                for answer in question["answers"]
            ]
        return [str(row["label"]).lower() for row in rows[:8]]

    cfg = compose_cfg(
        "train",
        tmp_path,
        [
            "backbone=tiny-gpt2",
            "prompt=prior",
            f"task={task}",
            f"task.test_limit={3 if folder == 'MultiRC' else 8}",
        ],
    )
    run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    train = [json.loads(line) for line in (FEWGLUE / folder / "train.jsonl").open()]
    if folder == "MultiRC":
        counts = Counter(
            str(a["label"]).lower()
            for row in train
            for q in row["passage"]["questions"]
            for a in q["answers"]
        )
    else:
        counts = Counter(str(row["label"]).lower() for row in train)
    top = max(counts.values())
    majority = next(label for label in results["labels"] if counts[label] == top)
    test = labels("val")
    predicted = {results["labels"][p] for p in results["test_examples"]["pred"]}
    assert predicted == {majority} and results["steps"] == 0
    assert len(results["test_examples"]["label"]) == len(test)
    if folder == "CB":
        assert results["test"]["acc"] == pytest.approx(test.count(majority) / len(test))
    else:  # most options are wrong (label 0); F1a's positive class is 1, so it is 0
        assert results["labels"].index(majority) == 0 and results["test"]["f1a"] == 0.0


def test_prior_refuses_a_task_without_fixed_labels(tmp_path, compose_cfg):
    cfg = compose_cfg(
        "train",
        tmp_path,
        ["backbone=tiny-gpt2", "prompt=prior", "task=record", "task.test_limit=2"],
    )
    with pytest.raises(ValueError, match="prompt=prior needs a task with fixed labels.*ReCoRD"):
        run(cfg)


def test_choice_head_reads_each_candidate_written_into_the_input(backbone):
    """Fine-tuning's multiple-choice head (COPA): an alternative's score is the classifier on
    a plain forward's last hidden state of the text with the alternative in [Y]'s place, read
    at its last token (causal LM) or at the first token (masked LM)."""
    data = COPADataModule(backbone.tokenizer, backbone.kind, str(FEWGLUE), manual=True, head=True)
    path = FEWGLUE / "COPA" / "train.jsonl"
    examples = data.encode_file(path, "train", limit=3)
    batch = collate_candidates(examples, backbone.tokenizer.pad_token_id)
    module = CandidateModule(backbone, ("acc",), 2, head="choices")
    with torch.no_grad():
        scores = module.scores(batch)
    assert scores.shape == (3, 2)
    for b, line in enumerate(path.read_text().splitlines()[:3]):
        (item,) = data.items(json.loads(line), "test")
        tokens = [data.template_tokenizer.answer_ids(c) for c in item.candidates]
        reserve = max(map(len, tokens)) - (backbone.kind == "masked")
        encoded = data.template_tokenizer.encode(item.inputs, reserve=reserve)
        ids, at = encoded.input_ids, encoded.answer_position
        for c, cand in enumerate(tokens):
            if backbone.kind == "causal":
                sequence, read = ids + cand, len(ids) + len(cand) - 1
            else:
                sequence, read = ids[:at] + cand + ids[at + 1 :], 0
            with torch.no_grad():
                out = backbone.model(input_ids=torch.tensor([sequence]), output_hidden_states=True)
                expected = module.classifier(out.hidden_states[-1][0, read]).item()
            assert scores[b, c].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("task", "records"), [("copa", 8), ("record", 2)])
def test_finetune_on_choice_tasks(tmp_path, compose_cfg, task, records):
    """COPA and ReCoRD have no label words: fine-tuning trains the backbone and a
    multiple-choice head, and scores like any method."""
    cfg = compose_cfg(
        "train",
        tmp_path,
        [
            "backbone=tiny-gpt2",
            "prompt=finetune",
            f"task={task}",
            f"task.test_limit={records}",
            "task.train.max_steps=2",
            "task.train.eval_every=1",
        ],
    )
    run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "finetune" and results["steps"] == 2
    assert 0.0 <= results["test"]["score"] <= 1.0
    saved = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert {k.split(".")[0] for k in saved["state_dict"]} == {"backbone", "classifier"}
    assert saved["state_dict"]["classifier.weight"].shape[0] == 1  # one score per candidate


def test_fewglue_sweeps_keep_only_the_selected_weights(tmp_path, compose_cfg):
    """experiment=fewglue: a backbone-tuning job keeps best.ckpt without optimizer state and
    no last.ckpt (disk: 0.5 GB per tuned SmolLM2 job instead of 3.2 GB)."""
    cfg = compose_cfg(
        "train",
        tmp_path,
        [
            "experiment=fewglue",
            "backbone=tiny-gpt2",
            "logger=none",
            "prompt=finetune",
            "task=cb",
            "task.test_limit=8",
            "task.train.max_steps=2",
            "task.train.eval_every=1",
        ],
    )
    run(cfg)
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 2
    (saved,) = (tmp_path / "checkpoints").iterdir()
    assert saved.name == "best.ckpt"
    assert "optimizer_states" not in torch.load(saved, weights_only=False)
