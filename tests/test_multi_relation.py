"""multi_relation=true: many relations in one pass give the per-relation results of separate
runs (evaluation: exactly; training: the same metrics and epochs, prompts within 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch

from ptuning_lightning.job import run
from ptuning_lightning.lama.one_pass import OnePassModule

RELATIONS = "task.relation=[P1376,P36,P37]"


def results(tmp_path, compose_cfg, name: str, overrides: list[str]) -> dict:
    run(compose_cfg("train", tmp_path / name, overrides))
    return json.loads((tmp_path / name / "results.json").read_text())["relations"]


def both_ways(
    tmp_path, compose_cfg, overrides: list[str], one_pass_only: tuple[str, ...] = ()
) -> tuple[dict, dict]:
    separate = results(tmp_path, compose_cfg, "separate", overrides)
    one_pass = results(
        tmp_path, compose_cfg, "one_pass", [*overrides, "multi_relation=true", *one_pass_only]
    )
    return separate, one_pass


@pytest.mark.parametrize("backbone_name", ["tiny-gpt2", "tiny-bert"])
def test_evaluation_in_one_pass_is_exactly_separate_evaluation(
    tmp_path, compose_cfg, backbone_name
):
    """Manual templates (a different one per relation) scored in mixed batches."""
    overrides = [f"backbone={backbone_name}", RELATIONS, "prompt=manual"]
    separate, one_pass = both_ways(tmp_path, compose_cfg, overrides)
    for relation, alone in separate.items():
        for key in ("dev_p1", "dev_n", "test_p1", "test_n", "template", "filter"):
            assert one_pass[relation][key] == alone[key], (relation, key)


@pytest.mark.parametrize("execution", [(), ("execution.length_buckets=3",)], ids=["", "buckets"])
def test_training_in_one_pass_follows_separate_runs(tmp_path, compose_cfg, execution):
    """Every relation sees the batches and gradients of its own run, is selected on its own
    dev P@1 and stops after its own patience: on the tiny GPT-2 the metrics and epochs are
    equal and the exported prompts differ by less than 1e-5 (float summation order), also
    when the one pass runs its mixed steps in length buckets."""
    overrides = [
        "backbone=tiny-gpt2",
        RELATIONS,
        "encoder=lstm",  # (the MLP at lr 0.003 puts one P1376 dev fact on a float near-tie:
        "optimizer.lr=0.003",  # it flips, and that relation stops an epoch apart)
        "trainer.max_epochs=4",
        "callbacks.early_stopping.patience=1",
        "ties_improve=false",  # (with ties improving, no relation stops early here)
        "warmup.total_iters=20",  # longer than an epoch of the smaller relation
    ]
    separate, one_pass = both_ways(tmp_path, compose_cfg, overrides, execution)
    assert {r["epochs"] for r in separate.values()} != {4}  # some relation stopped early
    for relation, alone in separate.items():
        for key in ("dev_p1", "dev_n", "test_p1", "test_n", "epochs", "steps"):
            assert one_pass[relation][key] == pytest.approx(alone[key]), (relation, key)
        prompts = [
            torch.load(tmp_path / way / relation / "prompt.pt")["embeddings"]
            for way in ("separate", "one_pass")
        ]
        torch.testing.assert_close(*prompts, atol=1e-5, rtol=0)


def test_prompts_with_their_own_backbone_are_refused(tmp_path, compose_cfg):
    overrides = ["backbone=tiny-gpt2", RELATIONS, "prompt=finetune", "multi_relation=true"]
    with pytest.raises(ValueError, match="multi_relation: prompt=finetune .* not supported"):
        run(compose_cfg("train", tmp_path, overrides))


def test_interrupted_one_pass_resumes_exactly(tmp_path, compose_cfg, monkeypatch):
    """One epoch, then the job run again for two (resume: true picks up one_pass/last.ckpt
    with every relation's best prompt, patience and activity): it trains only the second
    epoch and ends where two epochs in one go end."""
    steps = []
    step = OnePassModule.training_step
    monkeypatch.setattr(OnePassModule, "training_step", lambda *a: steps.append(1) or step(*a))
    overrides = ["backbone=tiny-gpt2", RELATIONS, "encoder=mlp", "optimizer.lr=0.003"]
    overrides.append("multi_relation=true")
    straight = results(tmp_path, compose_cfg, "straight", [*overrides, "trainer.max_epochs=2"])
    two_epochs = len(steps)
    results(tmp_path, compose_cfg, "resumed", [*overrides, "trainer.max_epochs=1"])
    for finished in (tmp_path / "resumed").rglob("result*.json"):
        finished.unlink()  # as if the job had stopped after its first epoch
    steps.clear()
    resumed = results(tmp_path, compose_cfg, "resumed", [*overrides, "trainer.max_epochs=2"])
    assert 2 * len(steps) == two_epochs  # the second epoch only
    for relation, expected in straight.items():
        for key in ("dev_p1", "test_p1", "epochs"):
            assert resumed[relation][key] == pytest.approx(expected[key]), (relation, key)
        prompts = [
            torch.load(tmp_path / way / relation / "prompt.pt")["embeddings"]
            for way in ("straight", "resumed")
        ]
        torch.testing.assert_close(*prompts, atol=1e-6, rtol=0)
