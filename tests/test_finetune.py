"""The fine-tuning baselines: FT, MP+FT and P-Tuning+FT train a copy of the backbone."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from ptuning_lightning.job import run
from ptuning_lightning.lama.run import build_relation

ONE_EPOCH = ["backbone=tiny-gpt2", "task.relation=P1376", "trainer.max_epochs=1"]


def test_ptuning_finetune_has_two_parameter_groups(tmp_path, compose_cfg, gpt2):
    """The prompt trains at the optimizer's lr, the backbone copy at prompt.backbone_lr."""
    overrides = ["prompt=ptuning_finetune", "optimizer.lr=0.003", "prompt.backbone_lr=0.0002"]
    cfg = compose_cfg("train", tmp_path, [*ONE_EPOCH, *overrides])
    module, _ = build_relation(cfg, gpt2)
    (optimizer,), _ = module.configure_optimizers()
    prompt, backbone = optimizer.param_groups
    assert module.trains and module.backbone is not gpt2
    # the configured rates; the warmup starts both at 1% of them
    assert prompt["initial_lr"] == 0.003 and backbone["initial_lr"] == 0.0002
    assert prompt["lr"] == pytest.approx(0.003 * 0.01) and backbone["lr"] == pytest.approx(2e-6)
    assert {id(p) for p in prompt["params"]} == {id(p) for p in module.encoder.parameters()}
    assert {id(p) for p in backbone["params"]} == {id(p) for p in module.backbone.parameters()}
    assert all(not p.requires_grad for p in gpt2.parameters())  # the shared one stays frozen


@pytest.mark.parametrize("prompt", ["finetune", "manual_finetune", "ptuning_finetune"])
def test_finetuning_changes_the_backbone_and_checkpoints_hold_it(tmp_path, compose_cfg, prompt):
    run(compose_cfg("train", tmp_path, [*ONE_EPOCH, f"prompt={prompt}", "prompt.backbone_lr=0.01"]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == prompt
    assert results["relations"]["P1376"]["epochs"] == 1
    state = torch.load(
        tmp_path / "P1376/checkpoints/best.ckpt", map_location="cpu", weights_only=False
    )["state_dict"]
    pristine = instantiate(compose_cfg("train", tmp_path, ONE_EPOCH).backbone.load)
    original = dict(pristine.named_parameters())
    tuned = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    assert tuned.keys() == original.keys()  # every backbone weight is in the checkpoint
    changed = [k for k in tuned if not torch.equal(tuned[k], original[k])]
    assert len(changed) > len(tuned) // 2
    assert not (tmp_path / "P1376" / "prompt.pt").exists()  # only meaningful with the backbone


def test_a_trained_backbone_needs_its_learning_rate(tmp_path, compose_cfg, gpt2):
    cfg = compose_cfg("train", tmp_path, [*ONE_EPOCH, "prompt=finetune", "prompt.backbone_lr=null"])
    module, _ = build_relation(cfg, gpt2)
    with pytest.raises(ValueError, match="prompt.backbone_lr must be set"):
        module.configure_optimizers()
