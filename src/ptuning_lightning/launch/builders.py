"""What every task family builds from the config in the same way: the backbone (run as
``execution`` says), the prompt encoder, the optimisation factories and the trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from ptuning_lightning.launch.distributed import end_finished_job
from ptuning_lightning.prompting.backbones import Backbone, apply_control, check_control
from ptuning_lightning.prompting.execution import configure_execution
from ptuning_lightning.prompting.methods import PromptMethod
from ptuning_lightning.prompting.templates import Template, manual_start, relation_words


def load_backbone(cfg: DictConfig) -> Backbone:
    """``backbone.load``, re-initialised as ``backbone.control`` says (seeded by ``seed``), run
    as ``execution`` says (checkpointing, compile)."""
    control = cfg.backbone.control
    check_control(control)
    backbone = instantiate(cfg.backbone.load)
    if control is not None:
        apply_control(backbone, control, cfg.seed)
    return configure_execution(backbone, **cfg.execution)


def build_method(cfg: DictConfig) -> PromptMethod:
    """The prompt method of ``conf/prompt/`` (its ``_target_``)."""
    return instantiate(cfg.prompt)


# encoder.init_words values that start from the relation's manual template: its relation
# words cycled over the pseudo tokens, or its words where they stand (``manual_start``)
MANUAL_STARTS = ("manual", "manual_aligned")


def build_encoder(
    cfg: DictConfig, template: Template, backbone: Backbone, manual: str | None = None
) -> torch.nn.Module:
    """Instantiate ``encoder/*`` for the pseudo tokens of ``template`` on this backbone.
    ``init_words: manual`` starts them from the relation words of ``manual``, cycled;
    ``manual_aligned`` from its words where they stand around [X] and [Y]."""
    options = OmegaConf.to_container(cfg, resolve=True)
    words = options.pop("init_words")
    if isinstance(words, str) and words not in MANUAL_STARTS:
        raise ValueError(
            f"encoder.init_words={words}: give one of {', '.join(MANUAL_STARTS)}, a list of "
            "words (e.g. [capital,of]), or null for a random start"
        )
    if words in MANUAL_STARTS:
        if manual is None:
            raise ValueError(f"encoder.init_words={words} needs the relation's manual template")
        if words == "manual":
            words = relation_words(manual).split()
        else:
            words = manual_start(template, manual)
    n_tokens = template.n_prompt
    vectors = None
    if words:
        vectors = backbone.word_vectors([words[i % len(words)] for i in range(n_tokens)])
    return instantiate(
        options,
        n_tokens=n_tokens,
        embed_dim=backbone.hidden_size,
        init_vectors=vectors,
        embedding_std=float(backbone.embeddings.float().std()),
    )


@dataclass
class Optimization:
    """The optimizer, per-epoch scheduler and per-step warmup factories (None: not configured,
    as under ptl-eval, or ``warmup=null``)."""

    optimizer: Callable | None
    scheduler: Callable | None
    warmup: Callable | None


def optimization(cfg: DictConfig) -> Optimization:
    return Optimization(*(_optional(cfg, key) for key in ("optimizer", "scheduler", "warmup")))


def _optional(cfg: DictConfig, key: str) -> Callable | None:
    node = cfg.get(key)  # absent from eval.yaml; null where turned off
    return instantiate(node) if node else None


def build_trainer(cfg: DictConfig, **settings) -> L.Trainer:
    """The configured trainer with its callbacks and loggers; ``settings`` replace trainer
    options (a method's own schedule, ``prompt.trainer``)."""
    end_finished_job()  # trainer=ddp in a multirun: the previous job's ranks are done
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.enable_progress_bar is False:  # the bar callback would be refused
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **settings)
