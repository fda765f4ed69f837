"""Prompt encoders: turn ``n_tokens`` trainable vectors into the continuous prompt.

Every encoder maps nothing to a (n_tokens, embed_dim) tensor: the prompt does not depend on
the input, so it is computed once per step. After training only that output is needed, so
``export_prompt`` saves it (with the template and backbone id) and ``FixedPrompt`` serves it
at evaluation without building the encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PromptEncoder(nn.Module):
    """Base: holds the pseudo-token input embeddings and their initialisation."""

    def __init__(
        self,
        n_tokens: int,
        embed_dim: int,
        init_std: float | None = 1.0,
        init_vectors: torch.Tensor | None = None,
        embedding_std: float = 1.0,
    ) -> None:
        """``init_vectors`` (n_tokens, embed_dim) start the prompt from given words: they are
        the input embeddings, and encoders with layers also start their output there
        (``start_at``); otherwise rows are N(0, init_std), where ``init_std=None`` means
        ``embedding_std``, the spread of the backbone's own word embeddings."""
        super().__init__()
        self.n_tokens, self.embed_dim = n_tokens, embed_dim
        self.embedding = nn.Embedding(n_tokens, embed_dim)
        # start_at's constant: derived from the seeded initialisation, so not checkpointed
        self.register_buffer("offset", None, persistent=False)
        with torch.no_grad():
            if init_vectors is not None:
                self.embedding.weight.copy_(init_vectors)
            else:
                self.embedding.weight.normal_(0.0, embedding_std if init_std is None else init_std)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n_tokens, embed_dim) input embeddings -> the prompt; here the identity."""
        return inputs

    def forward(self) -> torch.Tensor:
        prompt = self.encode(self.embedding.weight)
        return prompt if self.offset is None else prompt + self.offset

    def start_at(self, vectors: torch.Tensor | None) -> None:
        """Make the initial prompt (in eval mode, without dropout) equal ``vectors``, as the
        paper's mixed prompts start the pseudo tokens at the words: a constant offset, the
        words minus the encoder's initial output, is added to the output. It has no gradient,
        so training moves the prompt exactly as it moves the encoder's own output."""
        if vectors is None:
            return
        training = self.training
        self.eval()
        with torch.no_grad():
            self.offset = vectors.float() - self.encode(self.embedding.weight)
        self.train(training)


class LSTMPromptEncoder(PromptEncoder):
    """The paper's encoder: embedding -> 2-layer bi-LSTM (hidden/2 per direction) -> MLP."""

    def __init__(
        self,
        n_tokens: int,
        embed_dim: int,
        hidden_size: int | None = None,
        dropout: float = 0.0,
        **init,
    ) -> None:
        super().__init__(n_tokens, embed_dim, **init)
        hidden = hidden_size or embed_dim
        if hidden % 2:
            raise ValueError(
                f"encoder.hidden_size must be even for the LSTM encoder (the bi-LSTM has "
                f"hidden_size/2 per direction), got {hidden}"
            )
        self.lstm = nn.LSTM(
            embed_dim,
            hidden // 2,
            num_layers=2,
            dropout=dropout,
            bidirectional=True,
            batch_first=True,
        )
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.start_at(init.get("init_vectors"))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(inputs.unsqueeze(0))
        return self.mlp(out.squeeze(0))


class MLPPromptEncoder(PromptEncoder):
    """Embedding -> Linear-ReLU-Linear."""

    def __init__(
        self,
        n_tokens: int,
        embed_dim: int,
        hidden_size: int | None = None,
        dropout: float = 0.0,
        **init,
    ) -> None:
        super().__init__(n_tokens, embed_dim, **init)
        hidden = hidden_size or embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, embed_dim),
        )
        self.start_at(init.get("init_vectors"))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.mlp(inputs)


class FixedPrompt(nn.Module):
    """An exported prompt: fixed embeddings, nothing to train."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("embeddings", embeddings)

    def forward(self) -> torch.Tensor:
        return self.embeddings


def export_prompt(path: str | Path, embeddings: torch.Tensor, template: str, backbone: str) -> None:
    """Save the final prompt embeddings with what is needed to use them again."""
    payload = {
        "embeddings": embeddings.detach().float().cpu(),
        "template": template,
        "backbone": backbone,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_prompt(path: str | Path, backbone: str) -> tuple[torch.Tensor, str]:
    """Load an exported prompt; refuses one made for another backbone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported prompt not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["backbone"] != backbone:
        raise ValueError(
            f"{path} was trained for backbone {payload['backbone']!r}, not {backbone!r}"
        )
    return payload["embeddings"], payload["template"]
