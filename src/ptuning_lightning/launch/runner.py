"""The one runner: fit (when the module has something to train), select the best prompt on
dev, score it on test, and export it. LAMA's separate runs, its one pass and SuperGLUE jobs
all go through ``fit_select_test`` and ``export``; they differ only in how dev selects
(``Selection``).

Data flow: the family builds module, data and trainer -> ``fit_select_test`` -> ``Outcome``
(dev and test metrics as the module logged them, epochs, loss curve, timings) -> the family
writes its part of ``results.json``; ``export`` writes ``prompt.pt``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from ptuning_lightning.prompting.encoders import export_prompt
from ptuning_lightning.prompting.module import PromptedModule

log = logging.getLogger(__name__)

EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"

# After fit: (trainer, module, data) -> (the selected prompt's dev metrics, the checkpoint to
# test: "best", or None for the module as it is).
Selection = Callable[[L.Trainer, PromptedModule, L.LightningDataModule], tuple[dict, str | None]]


def best_checkpoint(revalidate: bool) -> Selection:
    """Selection by the trainer's checkpoint callback (``best.ckpt``). Its dev metrics: the
    monitored best score with the last evaluation's other ``dev/`` values (enough where they
    do not change, as LAMA's ``dev/n``), or with ``revalidate`` a dev pass over the best
    checkpoint (SuperGLUE reports every metric of it). A run that ended before its first dev
    evaluation (``trainer.max_steps``) is scored as it ended."""

    def select(
        trainer: L.Trainer, module: PromptedModule, data: L.LightningDataModule
    ) -> tuple[dict, str | None]:
        callback = trainer.checkpoint_callback
        if callback.best_model_score is None:
            log.warning("no dev evaluation during training; the final prompt is scored")
            return trainer.validate(module, data, verbose=False)[0], None
        if revalidate:
            return trainer.validate(module, data, ckpt_path="best", verbose=False)[0], "best"
        dev = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("dev/")}
        return dev | {callback.monitor: float(callback.best_model_score)}, "best"

    return select


@dataclass
class Outcome:
    """What one fit / select / test gives back."""

    dev: dict[str, float]  # the selected prompt's dev metrics, keys as logged ("dev/P@1")
    test: dict[str, float]
    trained: bool
    epochs: int | None = None  # the trainer's epochs (None: nothing trained)
    steps: int | None = None  # the trainer's optimizer steps
    loss_curve: list = field(default_factory=list)  # per epoch, as the module recorded it
    train_seconds: float | None = None
    eval_seconds: float = 0.0


def fit_select_test(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: PromptedModule,
    data: L.LightningDataModule,
    select: Selection,
    resume_from: str | None,
) -> Outcome:
    """Fit from ``resume_from`` (a ``last.ckpt``, or None) if the module trains, select on dev,
    test the selected prompt. The resolved config goes to every logger first."""
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    started = time.perf_counter()
    outcome = Outcome({}, {}, trained=module.trains)
    if module.trains:
        with warnings.catch_warnings():
            # The frozen backbone stays in eval mode on purpose (dropout off; backbones.py),
            # which Lightning would flag at every fit as possibly unintended.
            warnings.filterwarnings("ignore", EVAL_MODE_WARNING, PossibleUserWarning)
            trainer.fit(module, data, ckpt_path=resume_from)
        outcome.epochs, outcome.steps = trainer.current_epoch, trainer.global_step
        outcome.loss_curve = list(module.loss_curve)  # before a "best" checkpoint reloads it
        outcome.train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        outcome.dev, selected = select(trainer, module, data)
    else:
        outcome.dev, selected = trainer.validate(module, data, verbose=False)[0], None
    outcome.test = trainer.test(module, data, ckpt_path=selected, verbose=False)[0]
    outcome.eval_seconds = time.perf_counter() - started
    finish_wandb(trainer)
    return outcome


def export(
    trainer: L.Trainer,
    module: PromptedModule,
    path: Path,
    template: str,
    trained_for: str,
    index: int = 0,
) -> tuple[torch.Tensor, str] | None:
    """Write ``prompt.pt`` of a trained prompt over a frozen backbone (the prompt of target
    ``index`` where the module serves several); returns its embeddings and template (None
    where nothing is exported). A prompt trained with its backbone means nothing without it:
    the checkpoint holds both. Under ``trainer=ddp`` every rank runs this, rank zero writes."""
    if not trainer.is_global_zero or module.backbone.trainable:
        return None
    with torch.no_grad():
        prompt, template = module.eval().exported(template, index)
    export_prompt(path, prompt, template, module.backbone, trained_for)
    return prompt, template


def finish_wandb(trainer: L.Trainer) -> None:
    """Close the trainer's W&B runs (one per run of the job): the next run starts its own, and
    an offline run is complete on disk once its job returns."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
