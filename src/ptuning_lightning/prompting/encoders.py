"""Prompt encoders: turn ``n_tokens`` trainable vectors into the continuous prompt.

Every encoder maps nothing to a (n_tokens, embed_dim) tensor: the prompt does not depend on
the input, so it is computed once per step. After training only that output is needed, so
``export_prompt`` saves it (with the template, and the relation, backbone and tokenizer it
was trained for, which ``load_prompt`` checks) and ``FixedPrompt`` serves it at evaluation
without building the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.templates import Template, slot_names


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
        # start_at's constant (zero without start words); checkpointed with the weights, so a
        # checkpoint alone gives the prompt it was saved with
        self.register_buffer("offset", torch.zeros(n_tokens, embed_dim))
        with torch.no_grad():
            if init_vectors is not None:
                self.embedding.weight.copy_(init_vectors)
            else:
                self.embedding.weight.normal_(0.0, embedding_std if init_std is None else init_std)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n_tokens, embed_dim) input embeddings -> the prompt; here the identity."""
        return inputs

    def forward(self) -> torch.Tensor:
        return self.encode(self.embedding.weight) + self.offset

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


# What an exported prompt records besides its embeddings and template, as messages name it.
PROMPT_METADATA = {
    "trained_for": "relation (or task; task.relation)",
    "backbone": "backbone (backbone.name)",
    "kind": "model kind (backbone.kind)",
    "tokenizer": "tokenizer fingerprint (a hash of the vocabulary)",
    "n_prompt": "pseudo-token count",
}


def export_prompt(
    path: str | Path, embeddings: torch.Tensor, template: str, backbone: Backbone, trained_for: str
) -> None:
    """Save the final prompt embeddings with what is needed to use them again, and what
    ``load_prompt`` checks: ``trained_for`` (the LAMA relation or SuperGLUE task), the number
    of pseudo tokens, the backbone's name and kind, and its tokenizer's fingerprint."""
    payload = {
        "embeddings": embeddings.detach().float().cpu(),
        "template": template,
        "backbone": backbone.name,
        "kind": backbone.kind,
        "tokenizer": backbone.tokenizer_fingerprint(),
        "trained_for": trained_for,
        "n_prompt": embeddings.size(0),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


@dataclass(frozen=True)
class ExportedPrompt:
    """A prompt read back from ``prompt.pt``: what it was trained for, its template and its
    embeddings (one row per pseudo token the template has for the backbone's kind)."""

    path: Path
    trained_for: str
    template: str
    embeddings: torch.Tensor


def read_prompt(path: str | Path, backbone: Backbone) -> ExportedPrompt:
    """An exported prompt for use on ``backbone``, whatever it was trained for. Refuses, naming
    what differs: another backbone, model kind or tokenizer, or a number of rows unlike the
    template's pseudo tokens (as ``backbone.kind`` reads them). Files exported before this
    metadata was stored are refused: re-export them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported prompt not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in PROMPT_METADATA if key not in payload]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)} (exported by an older version, which stored no "
            "such checks); re-export it: run its ptl-train job again with resume=false"
        )
    expected = {
        "backbone": backbone.name,
        "kind": backbone.kind,
        "tokenizer": backbone.tokenizer_fingerprint(),
    }
    for key, value in expected.items():
        _refuse_mismatch(path, key, payload[key], value)
    embeddings, template = payload["embeddings"], payload["template"]
    parsed = Template.parse(template, slot_names(template))
    n_prompt = (parsed.for_causal() if backbone.kind == "causal" else parsed).n_prompt
    if not embeddings.size(0) == payload["n_prompt"] == n_prompt:
        raise ValueError(
            f"{path}: {embeddings.size(0)} prompt rows (the file says {payload['n_prompt']}), "
            f"but its template {template!r} has {n_prompt} pseudo tokens for a "
            f"{backbone.kind} LM"
        )
    return ExportedPrompt(path, payload["trained_for"], template, embeddings)


def load_prompt(path: str | Path, backbone: Backbone, trained_for: str) -> tuple[torch.Tensor, str]:
    """``read_prompt`` of the prompt for ``trained_for`` (the job's relation or task): its
    embeddings and template; a prompt trained for anything else is refused."""
    prompt = read_prompt(path, backbone)
    _refuse_mismatch(prompt.path, "trained_for", prompt.trained_for, trained_for)
    return prompt.embeddings, prompt.template


def _refuse_mismatch(path: Path, key: str, stored: object, expected: object) -> None:
    if stored != expected:
        raise ValueError(
            f"{path}: the prompt's {PROMPT_METADATA[key]} is {stored!r}, "
            f"not {expected!r} as in this job"
        )
