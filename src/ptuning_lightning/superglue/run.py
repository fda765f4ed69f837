"""One SuperGLUE job: a task, a method and a seed under the few-shot protocol.

The method is the prompt method object (``conf/prompt/``); those whose ``families`` include
SuperGLUE apply: manual (the task's manual template, zero-shot, evaluation only), ptuning
(pseudo tokens from the prompt encoder, frozen backbone), ptuning_finetune (the backbone
tuned too, two learning rates: the paper's SuperGLUE setting) and finetune (a classification
head on the manual template's answer slot, backbone tuned).

Protocol: train on ``train`` for ``task.train.max_steps`` steps, evaluate on ``dev32`` every
``task.train.eval_every`` steps and keep the best (``dev/score``), report that checkpoint on
the test split (``val``, the SuperGLUE dev set; ReCoRD: ``dev32``, as FewGLUE ships no val).
Fit, selection, test and export are the one runner's (``launch.runner``).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from ptuning_lightning.launch.builders import (
    MANUAL_STARTS,
    build_encoder,
    build_method,
    build_trainer,
    load_backbone,
    optimization,
)
from ptuning_lightning.launch.config import CONFIG_DIR
from ptuning_lightning.launch.results import envelope, write_results
from ptuning_lightning.launch.runner import best_checkpoint, export, fit_select_test
from ptuning_lightning.launch.sweeps import RESULTS, last_checkpoint
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.methods import PromptMethod
from ptuning_lightning.superglue.data import SuperGlueDataModule
from ptuning_lightning.superglue.module import CandidateModule

FAMILY = "superglue"  # what a method lists in its ``families`` to apply here
LAMA_CALLBACKS = ("prediction_table", "prompt_neighbours")  # read LAMA batches
# LAMA's optimisation settings that the few-shot protocol replaces, and what it uses instead:
# the per-task learning rates (conf/task/<task>.yaml), kept constant.
REPLACED = {
    "optimizer.lr": "set task.train.lr",
    "prompt.backbone_lr": "set task.train.backbone_lr",
    "scheduler": "the learning rate is constant over task.train.max_steps",
    "warmup": "the learning rate is constant over task.train.max_steps",
}
# Trainer options that the few-shot protocol sets, and the task.train key that decides them
# instead: a value other than conf/trainer/cpu.yaml's is refused, not replaced.
PROTOCOL_OPTIONS = {
    "max_steps": "task.train.max_steps",
    "max_epochs": "task.train.max_steps",
    "min_epochs": "task.train.max_steps",
    "val_check_interval": "task.train.eval_every",
    "check_val_every_n_epoch": "task.train.eval_every",
    "num_sanity_val_steps": "the protocol, which runs none",
}


def run_job(cfg: DictConfig, out: Path, started: float) -> dict:
    """Train / select / evaluate one task and write ``results.json``."""
    refuse_replaced(cfg, job_overrides())
    protocol = protocol_config(cfg, out)  # refuses trainer options it would replace
    backbone = load_backbone(cfg)
    module, data, method = build_task(protocol, backbone)
    trainer = build_trainer(protocol)
    outcome = fit_select_test(
        protocol, trainer, module, data, best_checkpoint(revalidate=True), last_checkpoint(protocol)
    )
    if outcome.trained:
        export(trainer, module, out / "prompt.pt", data.template_source, data.folder)
    results = envelope(protocol, method, time.perf_counter() - started) | {
        "backbone_control": backbone.control,  # backbone.control's record (None: pretrained)
        "task": data.folder,
        "template": data.template_source,
        "splits": data.splits,
        "stats": data.stats,
        "dev": {k.removeprefix("dev/"): v for k, v in outcome.dev.items()},
        "test": {k.removeprefix("test/"): v for k, v in outcome.test.items()},
        "steps": trainer.global_step,
        "labels": data.labels,
        "confusion": module.confusion,  # per split, rows: gold label, columns: predicted
        "test_examples": module.test_examples,  # per test example: prediction, gold, ...
    }
    write_results(out / RESULTS, results)
    print_task(results)
    return results


def objective(results: dict) -> float:
    """What sweepers maximise: the dev score."""
    return results["dev"]["score"]


def build_task(
    cfg: DictConfig, backbone: Backbone
) -> tuple[CandidateModule, SuperGlueDataModule, PromptMethod]:
    """The module and data of one job (seeded), and its method."""
    method = build_method(cfg)
    if FAMILY not in method.families:
        raise ValueError(
            f"prompt={method.name} does not apply to SuperGLUE tasks; use one of {methods()}"
        )
    L.seed_everything(cfg.seed, workers=True)
    backbone.set_trainable(method.trains_backbone)
    manual = not method.uses_pseudo_tokens
    data = instantiate(
        cfg.task,
        tokenizer=backbone.tokenizer,
        model_kind=backbone.kind,
        manual=manual,
        head=method.head,
    )
    data.setup()
    encoder = (
        build_encoder(cfg.encoder, data.template, backbone) if data.template.n_prompt else None
    )
    module = method.module(backbone, data, cfg.seed) or CandidateModule(
        backbone,
        data.metrics,
        len(data.labels) if data.labels else 2,
        encoder,
        optimizer=optimization(cfg).optimizer,
        lr=cfg.task.train.lr,
        backbone_lr=cfg.task.train.backbone_lr,
        head=("choices" if data.candidates_in_input else "labels") if method.head else None,
    )
    return module, data, method


def methods() -> tuple[str, ...]:
    """The methods of ``conf/prompt/`` that apply to SuperGLUE tasks (for error messages)."""
    names = []
    for path in sorted(Path(CONFIG_DIR, "prompt").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if FAMILY in get_class(config["_target_"]).families:
            names.append(path.stem)
    return tuple(names)


def refuse_replaced(cfg: DictConfig, overrides: list[str]) -> None:
    """Overrides of settings the few-shot protocol does not read (``REPLACED``) would be
    silently ignored: refuse them, naming what to set instead (removing one, ``~key``, is
    harmless). Other optimizer settings (weight decay, the optimizer class) apply."""
    for override in overrides:
        if override.startswith("~"):
            continue
        key, _, value = override.lstrip("+").partition("=")
        if key == "encoder.init_words" and value in MANUAL_STARTS:
            raise ValueError(
                f"encoder.init_words={value} starts from a LAMA relation's words, and SuperGLUE "
                f"templates (task={cfg.task.name}) have none: give the words, e.g. "
                "encoder.init_words=[yes,no], or null for a random start"
            )
        for setting, instead in REPLACED.items():
            if key == setting or key.startswith(f"{setting}."):
                raise ValueError(
                    f"{key} is not used by SuperGLUE tasks (task={cfg.task.name}); {instead}"
                )


def job_overrides() -> list[str]:
    """The job's command-line overrides (``hydra.overrides.task``); none outside Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def protocol_config(cfg: DictConfig, out: Path) -> DictConfig:
    """The few-shot protocol as trainer and callback settings: step budget, evaluation every
    N steps, selection and early stopping on ``dev/score``, LAMA-only callbacks removed, a
    random prompt start where the encoder's default is LAMA's manual words; the job is one
    run, named after the task, with its checkpoints in the job's folder. Trainer options the
    protocol sets are refused when the job sets them too (``PROTOCOL_OPTIONS``)."""
    defaults = OmegaConf.load(Path(CONFIG_DIR, "trainer", "cpu.yaml"))
    for key, instead in PROTOCOL_OPTIONS.items():
        if cfg.trainer[key] != defaults[key]:
            raise ValueError(
                f"trainer.{key}={cfg.trainer[key]}: SuperGLUE jobs follow the few-shot protocol, "
                f"so this is set by {instead}; leave trainer.{key} at {defaults[key]}"
            )
    cfg = cfg.copy()
    train = cfg.task.train
    with open_dict(cfg):
        cfg.run_name, cfg.run_dir = cfg.task.name, str(out)
        if cfg.encoder.init_words in MANUAL_STARTS:  # the LAMA default: no such words here
            cfg.encoder.init_words = None
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
            callbacks.model_checkpoint.monitor = "dev/score"
        if "early_stopping" in callbacks:
            callbacks.early_stopping.monitor = "dev/score"
            callbacks.early_stopping.patience = train.patience
    return cfg


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
