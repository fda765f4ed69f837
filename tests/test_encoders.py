"""Prompt encoders: shapes, initialisation, export/import of the trained prompt."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.encoders import (
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


def stand_in(name: str = "tiny-gpt2", kind: str = "causal", fingerprint: str = "abc"):
    """What ``export_prompt`` and ``load_prompt`` read of a backbone."""
    return SimpleNamespace(name=name, kind=kind, tokenizer_fingerprint=lambda: fingerprint)


PAPER = "[P*3] [X] [P*3] [Y] [P*3]"  # a causal LM sees 6 pseudo tokens, a masked LM 9


def test_export_and_load_round_trip(tmp_path):
    """An exported prompt comes back bit-identical with its template, as float32 on the CPU,
    and records what it was trained for."""
    embeddings = torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True)
    path = tmp_path / "prompt.pt"
    export_prompt(path, embeddings, PAPER, stand_in(), "P19")
    payload = torch.load(path, weights_only=True)
    assert {
        k: payload[k] for k in ("backbone", "kind", "tokenizer", "trained_for", "n_prompt")
    } == {
        "backbone": "tiny-gpt2",
        "kind": "causal",
        "tokenizer": "abc",
        "trained_for": "P19",
        "n_prompt": 6,
    }
    loaded, template = load_prompt(path, stand_in(), "P19")
    assert template == PAPER
    assert loaded.dtype == torch.float32 and not loaded.requires_grad
    assert torch.equal(loaded, embeddings.detach().float())


@pytest.mark.parametrize(
    ("backbone", "relation", "message"),
    [
        (stand_in(), "P36", r"relation \(or task; task.relation\) is 'P19', not 'P36'"),
        (stand_in(name="gpt2"), "P19", r"backbone \(backbone.name\) is 'tiny-gpt2', not 'gpt2'"),
        (stand_in(kind="masked"), "P19", r"model kind \(backbone.kind\) is 'causal', not 'masked'"),
        (stand_in(fingerprint="xyz"), "P19", "tokenizer fingerprint .* is 'abc', not 'xyz'"),
    ],
    ids=["relation", "backbone", "kind", "tokenizer"],
)
def test_load_refuses_a_prompt_made_for_something_else(tmp_path, backbone, relation, message):
    """A prompt is only meaningful for its relation, backbone and tokenizer: each check names
    the field that differs and both values."""
    path = tmp_path / "prompt.pt"
    export_prompt(path, torch.zeros(6, 4), PAPER, stand_in(), "P19")
    with pytest.raises(ValueError, match=message):
        load_prompt(path, backbone, relation)


def test_load_refuses_rows_unlike_the_templates_pseudo_tokens(tmp_path):
    """9 rows fit the paper's template on a masked LM, not on a causal one (which drops the
    [P*3] after [Y]); a file whose rows disagree with its own count is refused too."""
    path = tmp_path / "prompt.pt"
    export_prompt(path, torch.ones(9, 4), PAPER, stand_in(kind="masked"), "P19")
    assert load_prompt(path, stand_in(kind="masked"), "P19")[0].shape == (9, 4)
    export_prompt(path, torch.ones(9, 4), PAPER, stand_in(), "P19")
    with pytest.raises(ValueError, match="9 prompt rows .* has 6 pseudo tokens for a causal LM"):
        load_prompt(path, stand_in(), "P19")
    payload = torch.load(path, weights_only=True)
    torch.save(payload | {"embeddings": torch.ones(6, 4)}, path)  # says 9, holds 6
    with pytest.raises(ValueError, match=r"6 prompt rows \(the file says 9\)"):
        load_prompt(path, stand_in(), "P19")


def test_load_refuses_files_without_metadata(tmp_path):
    """prompt.pt files of older versions (embeddings, template, backbone) must be re-exported."""
    path = tmp_path / "prompt.pt"
    torch.save({"embeddings": torch.ones(6, 4), "template": PAPER, "backbone": "tiny-gpt2"}, path)
    with pytest.raises(ValueError, match="lacks trained_for, kind, tokenizer, n_prompt.*re-export"):
        load_prompt(path, stand_in(), "P19")


def test_tokenizer_fingerprint_follows_the_vocabulary(gpt2, bert):
    """Same vocabulary, same fingerprint; another tokenizer or one more token, another one."""
    again = Backbone(copy.deepcopy(gpt2.model), copy.deepcopy(gpt2.tokenizer), "causal", "x")
    assert again.tokenizer_fingerprint() == gpt2.tokenizer_fingerprint()
    assert bert.tokenizer_fingerprint() != gpt2.tokenizer_fingerprint()
    again.tokenizer.add_tokens(["<extra>"])
    assert again.tokenizer_fingerprint() != gpt2.tokenizer_fingerprint()


def test_load_missing_file_names_it(tmp_path):
    """A wrong prompt.path fails with the path, not a pickle error."""
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_prompt(tmp_path / "nothing.pt", stand_in(), "P19")


def test_fixed_prompt_has_nothing_to_train():
    """An exported prompt is served as a buffer: no parameters, follows .to(), in state_dict."""
    embeddings = torch.randn(3, 4)
    fixed = FixedPrompt(embeddings)
    assert list(fixed.parameters()) == []
    assert torch.equal(fixed(), embeddings)
    assert list(fixed.state_dict()) == ["embeddings"]
    assert fixed.to(torch.float64)().dtype == torch.float64


# --- the architecture, by behaviour --------------------------------------------------------


def test_lstm_encoder_reads_later_pseudo_tokens():
    """Bidirectional: the first pseudo token's output depends on the last one's input (a
    unidirectional LSTM would give it a zero gradient), and the last on the first."""
    encoder = LSTMPromptEncoder(5, 8, hidden_size=6)
    inputs = encoder.embedding.weight
    from_last = torch.autograd.grad(encoder()[0].sum(), inputs)[0][-1]
    from_first = torch.autograd.grad(encoder()[-1].sum(), inputs)[0][0]
    assert from_last.abs().sum() > 0 and from_first.abs().sum() > 0


@pytest.mark.parametrize(("hidden", "per_direction"), [(None, 4), (6, 3)])
def test_lstm_encoder_is_the_papers_architecture(hidden, per_direction):
    """The output equals a hand-built 2-layer bidirectional ``torch.nn.LSTM`` with hidden/2
    units per direction (hidden defaults to the embedding size), followed by Linear-ReLU-Linear
    written out, all with the encoder's weights: one layer, one direction or another width
    would not load into the reference."""
    torch.manual_seed(0)
    encoder = LSTMPromptEncoder(5, 8, hidden_size=hidden)
    reference = torch.nn.LSTM(8, per_direction, num_layers=2, bidirectional=True)
    reference.load_state_dict(encoder.lstm.state_dict())  # strict: same layers and widths
    first, second = (m for m in encoder.mlp if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        states, _ = reference(encoder.embedding.weight[:, None])  # (seq, batch=1, 2 * per_dir)
        hidden_states = torch.relu(states[:, 0] @ first.weight.T + first.bias)
        expected = hidden_states @ second.weight.T + second.bias
        assert torch.allclose(encoder(), expected, atol=1e-6)
    assert states.shape[-1] == 2 * per_direction


def test_mlp_encoder_is_linear_relu_linear():
    """The MLP encoder's output equals Linear-ReLU-Linear of the pseudo-token inputs, written
    out with its weights (hidden_size wide)."""
    torch.manual_seed(0)
    encoder = MLPPromptEncoder(4, 8, hidden_size=6)
    first, second = (m for m in encoder.mlp if isinstance(m, torch.nn.Linear))
    assert first.weight.shape == (6, 8) and second.weight.shape == (8, 6)
    inputs = encoder.embedding.weight
    with torch.no_grad():
        expected = torch.relu(inputs @ first.weight.T + first.bias) @ second.weight.T + second.bias
        assert torch.allclose(encoder(), expected, atol=1e-6)
