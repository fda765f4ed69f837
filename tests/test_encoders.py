"""Prompt encoders: shapes, initialisation, export/import of the trained prompt."""

from __future__ import annotations

import pytest
import torch

from ptuning_lightning.encoders import (
    FixedPrompt,
    LSTMPromptEncoder,
    MLPPromptEncoder,
    PromptEncoder,
    export_prompt,
    load_prompt,
)

ENCODERS = [PromptEncoder, MLPPromptEncoder, LSTMPromptEncoder]


@pytest.mark.parametrize("cls", ENCODERS)
@pytest.mark.parametrize(("n_tokens", "embed_dim", "hidden"), [(9, 64, None), (3, 16, 8)])
def test_output_shape_and_gradients(cls, n_tokens, embed_dim, hidden):
    """Every encoder yields one trainable embed_dim vector per pseudo token."""
    kw = {} if cls is PromptEncoder else {"hidden_size": hidden}
    encoder = cls(n_tokens, embed_dim, **kw)
    out = encoder()
    assert out.shape == (n_tokens, embed_dim)
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("cls", ENCODERS)
def test_init_vectors_are_copied(cls):
    """Pseudo tokens start from the given word vectors, and the caller's tensor is not shared."""
    vectors = torch.arange(12.0).reshape(3, 4)
    encoder = cls(3, 4, init_vectors=vectors)
    assert torch.equal(encoder.embedding.weight.detach(), vectors)
    with torch.no_grad():
        encoder.embedding.weight.add_(1.0)
    assert torch.equal(vectors, torch.arange(12.0).reshape(3, 4))


@pytest.mark.parametrize("cls", ENCODERS)
def test_init_vectors_start_the_prompt(cls):
    """The prompt itself (the encoder's output, what the backbone sees), not only the LSTM or
    MLP input, starts at the given words, dropout or not; training changes it from there."""
    vectors = torch.randn(3, 8)
    kw = {} if cls is PromptEncoder else {"hidden_size": 6, "dropout": 0.5}
    encoder = cls(3, 8, init_vectors=vectors, **kw)
    torch.testing.assert_close(encoder.eval()(), vectors)
    with torch.no_grad():
        encoder.embedding.weight.add_(1.0)
    assert not torch.allclose(encoder(), vectors)


@pytest.mark.parametrize(("init_std", "expected"), [(None, 0.02), (1.0, 1.0), (5.0, 5.0)])
def test_init_std(init_std, expected):
    """Random rows are N(0, init_std); ``init_std=None`` uses the backbone's embedding spread."""
    torch.manual_seed(0)
    encoder = PromptEncoder(200, 100, init_std=init_std, embedding_std=0.02)
    std = encoder.embedding.weight.std().item()
    assert std == pytest.approx(expected, rel=0.02)


def test_export_and_load_round_trip(tmp_path):
    """An exported prompt comes back bit-identical with its template, as float32 on the CPU."""
    embeddings = torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True)
    path = tmp_path / "prompt.pt"
    export_prompt(path, embeddings, "[P*3] [X] [P*3] [Y]", "tiny-gpt2")
    loaded, template = load_prompt(path, "tiny-gpt2")
    assert template == "[P*3] [X] [P*3] [Y]"
    assert loaded.dtype == torch.float32 and not loaded.requires_grad
    assert torch.equal(loaded, embeddings.detach().float())


def test_load_refuses_another_backbone(tmp_path):
    """A prompt is only meaningful for the backbone it was trained on."""
    path = tmp_path / "prompt.pt"
    export_prompt(path, torch.zeros(2, 4), "[P] [X] [P] [Y]", "tiny-gpt2")
    with pytest.raises(ValueError, match="'tiny-gpt2', not 'tiny-bert'"):
        load_prompt(path, "tiny-bert")


def test_load_missing_file_names_it(tmp_path):
    """A wrong prompt.path fails with the path, not a pickle error."""
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_prompt(tmp_path / "nothing.pt", "tiny-gpt2")


def test_fixed_prompt_has_nothing_to_train():
    """An exported prompt is served as a buffer: no parameters, follows .to(), in state_dict."""
    embeddings = torch.randn(3, 4)
    fixed = FixedPrompt(embeddings)
    assert list(fixed.parameters()) == []
    assert torch.equal(fixed(), embeddings)
    assert list(fixed.state_dict()) == ["embeddings"]
    assert fixed.to(torch.float64)().dtype == torch.float64
