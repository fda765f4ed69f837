"""One job of ptl-train / ptl-eval: for each relation, build the prompt, data, module and
trainer from the config, train if the prompt has something to train, select on dev, score on
test, export the prompt; then write ``results.json`` and print the table."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from ptuning_lightning.backbones import Backbone
from ptuning_lightning.data.lama import LamaDataModule, resolve_relations
from ptuning_lightning.discrete_prompts import published_template
from ptuning_lightning.distributed import end_finished_job
from ptuning_lightning.encoders import FixedPrompt, export_prompt, load_prompt
from ptuning_lightning.module import PromptModule
from ptuning_lightning.results import print_table, summarize, write_results
from ptuning_lightning.superglue_run import is_superglue, run_task
from ptuning_lightning.sweeps import (
    RELATION_RESULT,
    RESULTS,
    error_message,
    failure,
    finished_job,
    finished_relation,
    in_multirun,
    last_checkpoint,
    record_status,
)

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # the repository: conf/ and data/ live there
CONFIG_DIR = str(ROOT / "conf")
OmegaConf.register_new_resolver("ptl_root", lambda: str(ROOT), replace=True)
# ${ptl_unset:VAR}: true when the environment variable is unset or empty (wandb offline mode)
OmegaConf.register_new_resolver("ptl_unset", lambda name: not os.environ.get(name), replace=True)


def run(cfg: DictConfig) -> float | None:
    """Run every relation of ``task.relation``; returns the macro dev P@1 (for sweepers).

    With ``resume: true`` (the default) a job whose folder holds finished results is skipped
    and returns the stored P@1; relations finished by an earlier run of the job are read back
    from ``<relation>/result.json``; an interrupted one resumes from its ``last.ckpt``. A job
    that raises writes ``results.json`` with ``"status": "failed"``: in a multirun it returns
    None (Optuna marks the trial failed) and the sweep goes on, a single run re-raises."""
    out = Path(cfg.paths.output_dir)
    stored = finished_job(out) if cfg.get("resume", True) else None
    if stored is not None:
        log.info("Skipped: %s holds finished results (resume=false runs it again)", out)
        record_status(out, "skipped")
        return objective(stored)
    started = time.perf_counter()
    try:
        results = (run_task if is_superglue(cfg) else run_relations)(cfg, out, started)
    except Exception as err:
        log.exception("Job failed (%s)", out)
        write_results(out / RESULTS, failure(cfg, err, time.perf_counter() - started))
        record_status(out, "failed", error_message(err))
        if not in_multirun():
            raise
        return None
    record_status(out, "done")
    return objective(results)


def objective(results: dict) -> float:
    """What sweepers maximise: macro dev P@1 (LAMA) or the dev score (SuperGLUE tasks)."""
    return results["macro"]["dev_p1"] if "macro" in results else results["dev"]["score"]


def run_relations(cfg: DictConfig, out: Path, started: float) -> dict:
    """Every relation of the job (finished ones read back), then ``results.json``."""
    relations = resolve_relations(cfg.task.relation, cfg.task.data_root)
    backbone: Backbone | None = None
    per_relation = {}
    for relation in relations:
        done = finished_relation(out, relation) if cfg.get("resume", True) else None
        if done is not None:
            log.info("%s: finished by an earlier run, read from %s", relation, out / relation)
        else:
            if backbone is None:
                backbone = instantiate(cfg.backbone.load)
            done = run_relation(for_relation(cfg, relation), backbone)
            write_results(out / relation / RELATION_RESULT, done)
        per_relation[relation] = done
    results = summarize(cfg, per_relation, time.perf_counter() - started)
    write_results(out / RESULTS, results)
    print_table(results)
    return results


def for_relation(cfg: DictConfig, relation: str) -> DictConfig:
    """The job's config with ``task.relation`` set to one relation (paths interpolate it)."""
    single = cfg.copy()
    single.task.relation = relation
    return single


def build_relation(
    cfg: DictConfig, backbone: Backbone
) -> tuple[PromptModule, LamaDataModule, bool]:
    """The module and data of one relation (seeded), and whether the prompt trains."""
    L.seed_everything(cfg.seed, workers=True)
    encoder, template = build_prompt(cfg, backbone)
    data = instantiate(
        cfg.task, tokenizer=backbone.tokenizer, model_kind=backbone.kind, template=template
    )
    data.setup()
    if encoder is None and data.template.n_prompt:
        encoder = build_encoder(cfg.encoder, data.template.n_prompt, backbone)
    trainable = encoder is not None and any(p.requires_grad for p in encoder.parameters())
    module = PromptModule(
        backbone,
        data.candidate_ids,
        encoder,
        optimizer=instantiate(cfg.optimizer) if trainable else None,
        scheduler=instantiate(cfg.scheduler) if trainable and cfg.get("scheduler") else None,
        loss_over=cfg.prompt.get("loss_over", "vocab"),
    )
    return module, data, trainable


def run_relation(cfg: DictConfig, backbone: Backbone) -> dict:
    relation = cfg.task.relation
    module, data, trainable = build_relation(cfg, backbone)
    trainer = build_trainer(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    result = {"template": data.template_source, "filter": data.stats}
    started = time.perf_counter()
    if trainable:
        trainer.fit(module, data, ckpt_path=last_checkpoint(cfg))  # resume: true
        result["dev_p1"] = float(trainer.checkpoint_callback.best_model_score)
        dev_n = trainer.callback_metrics.get("dev/n")  # every epoch's; None: nothing left to fit
        result["dev_n"] = None if dev_n is None else int(dev_n)
        result["epochs"] = trainer.current_epoch
        result["train_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        test = trainer.test(module, data, ckpt_path="best", verbose=False)
        out = Path(cfg.paths.output_dir) / relation
        if trainer.is_global_zero:  # trainer=ddp: every rank runs this, one writes
            with torch.no_grad():
                prompt = module.eval().prompt()
                export_prompt(out / "prompt.pt", prompt, data.template_source, backbone.name)
    else:
        dev = trainer.validate(module, data, verbose=False)[0]
        result["dev_p1"], result["dev_n"] = dev["dev/P@1"], int(dev["dev/n"])
        test = trainer.test(module, data, verbose=False)
    result["test_p1"], result["test_n"] = test[0]["test/P@1"], int(test[0]["test/n"])
    result["eval_seconds"] = time.perf_counter() - started
    for logger in trainer.loggers:  # one wandb run per relation: close it before the next
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
    return result


def build_prompt(cfg: DictConfig, backbone: Backbone) -> tuple[FixedPrompt | None, str | None]:
    """An exported prompt (embeddings and template from its file), a published discrete one
    (``prompt=discrete``), or just the configured template (None: the task's manual one);
    trainable encoders are built once the template's number of pseudo tokens is known."""
    if cfg.prompt.name == "discrete":
        causal = backbone.kind == "causal"
        source, root = cfg.prompt.source, cfg.task.data_root
        return None, published_template(root, source, cfg.task.relation, causal)
    if cfg.prompt.name != "exported":
        return None, cfg.prompt.template
    path = Path(cfg.prompt.path)
    if path.is_dir():
        path = path / cfg.task.relation / "prompt.pt"
    embeddings, template = load_prompt(path, backbone.name)
    return FixedPrompt(embeddings), template


def build_encoder(cfg: DictConfig, n_tokens: int, backbone: Backbone) -> torch.nn.Module:
    """Instantiate ``encoder/*`` for ``n_tokens`` pseudo tokens of this backbone."""
    options = OmegaConf.to_container(cfg, resolve=True)
    words = options.pop("init_words", None)
    vectors = None
    if words:
        vectors = backbone.word_vectors([words[i % len(words)] for i in range(n_tokens)])
    weights = backbone.model.get_input_embeddings().weight
    return instantiate(
        options,
        n_tokens=n_tokens,
        embed_dim=backbone.hidden_size,
        init_vectors=vectors,
        embedding_std=float(weights.float().std()),
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    end_finished_job()  # trainer=ddp in a multirun: the previous job's ranks are done
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
