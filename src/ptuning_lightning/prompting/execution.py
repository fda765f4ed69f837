"""How the frozen backbone executes: gradient checkpointing, ``torch.compile`` and length
buckets (``Backbone.hidden``).

All three change cost, not results. Checkpointing keeps only each layer's input during the forward
pass and recomputes the layer in the backward pass (about one more forward: activations of one
layer at a time instead of all of them, for GPT2-xl-class models on one GPU). Transformers'
own switch (``gradient_checkpointing_enable``) acts only in training mode, and the frozen
backbone stays in eval mode (dropout off), so the layers are wrapped here instead, with
non-reentrant checkpointing: it needs no input that requires grad (no
``enable_input_require_grads``) and passes the gradient on to the input embeddings, hence to
the prompt.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from ptuning_lightning.prompting.backbones import Backbone


def configure_execution(
    backbone: Backbone,
    gradient_checkpointing: bool = False,
    compile: bool | str = False,
    length_buckets: int = 1,
) -> Backbone:
    """Apply the ``execution`` config to ``backbone`` (in place) and return it.
    ``compile``: false, true (inductor) or the name of a ``torch.compile`` backend;
    ``length_buckets``: how many groups of similar length a batch's rows go through the body
    in (1: all at once)."""
    if (
        isinstance(length_buckets, bool)
        or not isinstance(length_buckets, int)
        or length_buckets < 1
    ):
        raise ValueError(
            f"execution.length_buckets must be a whole number >= 1, got {length_buckets!r}"
        )
    backbone.length_buckets = length_buckets
    if gradient_checkpointing:
        layers = [m for m in backbone.body.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            raise ValueError(f"{backbone.name}: no transformer layers found to checkpoint")
        for layer in layers:
            layer.forward = functools.partial(_checkpointed, layer.forward)
    if compile:  # kept with the backbone: a trainable copy compiles its own body
        backbone.compile_body("inductor" if compile is True else compile)
    return backbone


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation: nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
