"""One SuperGLUE job: a task, a method and a seed under the few-shot protocol.

Methods (``prompt.name``): ``manual`` (the task's manual pattern, zero-shot, evaluation only),
``ptuning`` (pseudo tokens from the prompt encoder, frozen backbone), ``ptuning_finetune`` (P-Tuning
with the backbone tuned too, two learning rates: the paper's SuperGLUE setting) and
``finetune`` (a classification head on the manual pattern's answer slot, backbone tuned).

Protocol: train on ``train`` for ``task.train.max_steps`` steps, evaluate on ``dev32`` every
``task.train.eval_every`` steps and keep the best (``dev/score``), report that checkpoint on
the test split (``val``, the SuperGLUE dev set; ReCoRD: ``dev32``, as FewGLUE ships no val).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from ptuning_lightning.candidate_module import CandidateModule
from ptuning_lightning.data.superglue.base import SuperGlueDataModule
from ptuning_lightning.encoders import export_prompt
from ptuning_lightning.results import envelope, write_results
from ptuning_lightning.sweeps import RESULTS, last_checkpoint

log = logging.getLogger(__name__)
METHODS = ("manual", "ptuning", "ptuning_finetune", "finetune")
LAMA_CALLBACKS = ("prediction_table", "prompt_neighbours")  # read LAMA batches
# LAMA's optimisation settings that the few-shot protocol replaces, and what it uses instead:
# the per-task learning rates (conf/task/<task>.yaml), kept constant.
REPLACED = {
    "optimizer.lr": "set task.train.lr",
    "prompt.backbone_lr": "set task.train.backbone_lr",
    "scheduler": "the learning rate is constant over task.train.max_steps",
    "warmup": "the learning rate is constant over task.train.max_steps",
}


def is_superglue(cfg: DictConfig) -> bool:
    return issubclass(get_class(cfg.task._target_), SuperGlueDataModule)


def refuse_replaced(cfg: DictConfig, overrides: list[str]) -> None:
    """Overrides of settings the few-shot protocol does not read (``REPLACED``) would be
    silently ignored: refuse them, naming what to set instead (removing one, ``~key``, is
    harmless). Other optimizer settings (weight decay, the optimizer class) apply."""
    for override in overrides:
        if override.startswith("~"):
            continue
        key = override.lstrip("+").split("=", 1)[0]
        for setting, instead in REPLACED.items():
            if key == setting or key.startswith(f"{setting}."):
                raise ValueError(
                    f"{key} is not used by SuperGLUE tasks (task={cfg.task.name}); {instead}"
                )


def job_overrides() -> list[str]:
    """The job's command-line overrides (``hydra.overrides.task``); none outside Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def build_task(cfg: DictConfig, backbone) -> tuple[CandidateModule, SuperGlueDataModule, bool]:
    """The module and data of one job (seeded), and whether anything trains."""
    from ptuning_lightning.experiment import build_encoder  # experiment imports this module

    method = cfg.prompt.name
    if method not in METHODS:
        raise ValueError(f"prompt={method} does not apply to SuperGLUE tasks; use one of {METHODS}")
    L.seed_everything(cfg.seed, workers=True)
    manual = method in ("manual", "finetune")
    backbone.set_trainable(method in ("ptuning_finetune", "finetune"))
    data = instantiate(
        cfg.task, tokenizer=backbone.tokenizer, model_kind=backbone.kind, manual=manual
    )
    data.setup()
    encoder = (
        build_encoder(cfg.encoder, data.template.n_prompt, backbone)
        if data.template.n_prompt
        else None
    )
    train = cfg.task.train
    trains = method != "manual"
    module = CandidateModule(
        backbone,
        data.metrics,
        len(data.labels) if data.labels else 2,
        encoder,
        optimizer=instantiate(cfg.optimizer) if trains else None,
        lr=train.lr,
        backbone_lr=train.backbone_lr,
        head=method == "finetune",
    )
    if method == "finetune" and not data.verbalizer:
        raise ValueError(f"prompt=finetune needs a task with fixed labels, not {data.folder}")
    return module, data, trains


# Trainer options that the few-shot protocol sets, with their values in conf/trainer/cpu.yaml
# and the task.train key that decides them instead: any other value is refused, not replaced.
PROTOCOL_OPTIONS = {
    "max_steps": (-1, "task.train.max_steps"),
    "max_epochs": (100, "task.train.max_steps"),
    "min_epochs": (1, "task.train.max_steps"),
    "val_check_interval": (None, "task.train.eval_every"),
    "check_val_every_n_epoch": (1, "task.train.eval_every"),
    "num_sanity_val_steps": (None, "the protocol, which runs none"),
}


def protocol_config(cfg: DictConfig, out: Path) -> DictConfig:
    """The few-shot protocol as trainer and callback settings: step budget, evaluation every
    N steps, selection and early stopping on ``dev/score``; LAMA-only callbacks removed and
    logger runs named after the task. Trainer options the protocol sets are refused when the
    job sets them too (``PROTOCOL_OPTIONS``)."""
    for key, (default, instead) in PROTOCOL_OPTIONS.items():
        if cfg.trainer.get(key, default) != default:
            raise ValueError(
                f"trainer.{key}={cfg.trainer[key]}: SuperGLUE jobs follow the few-shot protocol, "
                f"so this is set by {instead}; leave trainer.{key} at {default}"
            )
    cfg = cfg.copy()
    train = cfg.task.train
    with open_dict(cfg):
        cfg.trainer.max_steps, cfg.trainer.max_epochs, cfg.trainer.min_epochs = (
            train.max_steps,
            -1,
            None,
        )
        cfg.trainer.val_check_interval, cfg.trainer.check_val_every_n_epoch = train.eval_every, None
        cfg.trainer.num_sanity_val_steps = 0
        callbacks = cfg.get("callbacks") or {}
        for name in LAMA_CALLBACKS:
            callbacks.pop(name, None)
        if "model_checkpoint" in callbacks:
            callbacks.model_checkpoint.dirpath = str(out / "checkpoints")
            callbacks.model_checkpoint.monitor = "dev/score"
        if "early_stopping" in callbacks:
            callbacks.early_stopping.monitor = "dev/score"
            callbacks.early_stopping.patience = train.patience
        for logger in (cfg.get("logger") or {}).values():
            if "name" in logger:  # LAMA names logger runs by relation
                logger.name = cfg.task.name
    return cfg


def run_task(cfg: DictConfig, out: Path, started: float) -> dict:
    """Train/select/evaluate one task and write ``results.json``."""
    from ptuning_lightning.experiment import build_trainer, load_backbone

    refuse_replaced(cfg, job_overrides())
    protocol = protocol_config(cfg, out)  # refuses trainer options it would replace
    backbone = load_backbone(cfg)
    module, data, trains = build_task(cfg, backbone)
    cfg = protocol
    trainer = build_trainer(cfg)
    if trains:
        trainer.fit(module, data, ckpt_path=last_checkpoint(cfg))
        dev = trainer.validate(module, data, ckpt_path="best", verbose=False)[0]
        test = trainer.test(module, data, ckpt_path="best", verbose=False)[0]
        # a prompt trained with its backbone is only meaningful with it: the checkpoint has both
        if module.encoder is not None and not backbone.trainable and trainer.is_global_zero:
            prompt = module.eval().prompt()
            export_prompt(out / "prompt.pt", prompt, data.template_source, backbone, data.folder)
    else:
        dev = trainer.validate(module, data, verbose=False)[0]
        test = trainer.test(module, data, verbose=False)[0]
    results = envelope(cfg, time.perf_counter() - started) | {
        "task": data.folder,
        "template": data.template_source,
        "splits": data.splits,
        "stats": data.stats,
        "dev": {k.removeprefix("dev/"): v for k, v in dev.items()},
        "test": {k.removeprefix("test/"): v for k, v in test.items()},
        "steps": trainer.global_step,
        "labels": data.labels,
        "confusion": module.confusion,  # per split, rows: gold label, columns: predicted
    }
    write_results(out / RESULTS, results)
    print_task(results)
    return results


def print_task(results: dict) -> None:
    table = Table(title=f"{results['task']}: {results['method']} on {results['backbone']} (%)")
    table.add_column("split")
    names = list(results["test"])
    for name in names:
        table.add_column(name, justify="right")
    for split in ("dev", "test"):
        label = results["splits"][split]
        table.add_row(
            label, *(f"{100 * results[split][n]:.1f}" if n in results[split] else "" for n in names)
        )
    Console().print(table)
