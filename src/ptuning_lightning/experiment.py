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
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from ptuning_lightning.autoprompt import AutoPromptModule
from ptuning_lightning.backbones import Backbone
from ptuning_lightning.data.lama import LamaDataModule, manual_template, resolve_relations
from ptuning_lightning.data.multi_relation import MultiRelationData
from ptuning_lightning.discrete_prompts import published_templates
from ptuning_lightning.distributed import end_finished_job
from ptuning_lightning.encoders import FixedPrompt, export_prompt, load_prompt
from ptuning_lightning.execution import configure_execution
from ptuning_lightning.module import PromptModule
from ptuning_lightning.multi_relation import MultiRelationModule
from ptuning_lightning.prior import PriorModule
from ptuning_lightning.results import (
    fact_results,
    print_table,
    prompt_norms,
    summarize,
    write_results,
)
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
from ptuning_lightning.templates import fill_relation, relation_words

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
    per_relation, pending = {}, []
    for relation in relations:
        done = finished_relation(out, relation) if cfg.get("resume", True) else None
        if done is not None:
            log.info("%s: finished by an earlier run, read from %s", relation, out / relation)
            per_relation[relation] = done
        else:
            pending.append(relation)
    backbone = load_backbone(cfg) if pending else None
    if pending and cfg.get("multi_relation", False):
        for relation, done in run_in_one_pass(cfg, pending, backbone).items():
            write_results(out / relation / RELATION_RESULT, done)
            per_relation[relation] = done
    else:
        for relation in pending:  # each written as soon as it is done (a resume reads it)
            per_relation[relation] = run_relation(for_relation(cfg, relation), backbone)
            write_results(out / relation / RELATION_RESULT, per_relation[relation])
    per_relation = {relation: per_relation[relation] for relation in relations}
    results = summarize(cfg, per_relation, time.perf_counter() - started)
    write_results(out / RESULTS, results)
    print_table(results)
    return results


def load_backbone(cfg: DictConfig) -> Backbone:
    """``backbone.load``, run as ``execution`` says (checkpointing, compile)."""
    options = cfg.get("execution") or {}
    return configure_execution(instantiate(cfg.backbone.load), **options)


def for_relation(cfg: DictConfig, relation: str) -> DictConfig:
    """The job's config with ``task.relation`` set to one relation (paths interpolate it)."""
    single = cfg.copy()
    single.task.relation = relation
    return single


def build_relation(
    cfg: DictConfig, backbone: Backbone
) -> tuple[PromptModule, LamaDataModule, bool]:
    """The module and data of one relation (seeded), and whether it trains. With
    ``prompt.finetune`` the relation gets its own trainable copy of the backbone;
    ``prompt=autoprompt`` searches trigger tokens instead of training an encoder."""
    L.seed_everything(cfg.seed, workers=True)
    finetune = cfg.prompt.get("finetune", False)
    if finetune:
        backbone = backbone.trainable_copy()
    encoder, template, weights = build_prompt(cfg, backbone)
    data = instantiate(
        cfg.task,
        tokenizer=backbone.tokenizer,
        model_kind=backbone.kind,
        template=template,
        template_weights=weights,
        batch_size=cfg.prompt.get("batch_size") or cfg.task.batch_size,
    )
    data.setup()
    if cfg.prompt.name == "prior":
        targets = [example["target_index"] for example in data.datasets["train"]]
        return PriorModule(backbone, data.candidate_ids, targets), data, False
    if cfg.prompt.name == "autoprompt":
        options = {k: cfg.prompt[k] for k in ("candidates", "init_token", "loss_over")}
        module = AutoPromptModule(
            backbone, data.candidate_ids, data.template, seed=cfg.seed, **options
        )
        return module, data, True
    if encoder is None and data.template.n_prompt:
        manual = None
        if cfg.encoder.get("init_words") == "manual":
            manual = manual_template(cfg.task.data_root, cfg.task.relation)
        encoder = build_encoder(cfg.encoder, data.template.n_prompt, backbone, manual)
    trainable = finetune or (
        encoder is not None and any(p.requires_grad for p in encoder.parameters())
    )
    module = PromptModule(
        backbone,
        data.candidate_ids,
        encoder,
        **optimization(cfg, trainable),
        backbone_lr=cfg.prompt.get("backbone_lr"),
        template_weights=data.template_weights,
    )
    return module, data, trainable


def optimization(cfg: DictConfig, trainable: bool) -> dict:
    """The module's optimizer, warmup and scheduler factories and its loss (None: nothing
    trains, or the key is null)."""
    return {
        "optimizer": instantiate(cfg.optimizer) if trainable else None,
        "scheduler": instantiate(cfg.scheduler) if trainable and cfg.get("scheduler") else None,
        "warmup": instantiate(cfg.warmup) if trainable and cfg.get("warmup") else None,
        "loss_over": cfg.prompt.get("loss_over", "vocab"),
    }


def run_relation(cfg: DictConfig, backbone: Backbone) -> dict:
    relation = cfg.task.relation
    module, data, trainable = build_relation(cfg, backbone)
    trainer = build_trainer(cfg)
    if isinstance(module, AutoPromptModule) and trainer.world_size > 1:
        raise ValueError("prompt=autoprompt runs in one process (use trainer=cpu or gpu, not ddp)")
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    result = {"template": data.template_source, "filter": data.stats}
    started = time.perf_counter()
    if trainable:
        trainer.fit(module, data, ckpt_path=last_checkpoint(cfg))  # resume: true
        best = trainer.checkpoint_callback.best_model_score
        if best is None:  # training ended before its first dev evaluation (trainer.max_steps)
            log.warning(
                "%s: no dev evaluation during training; the final prompt is scored", relation
            )
            dev = trainer.validate(module, data, verbose=False)[0]
            result["dev_p1"], result["dev_n"] = dev["dev/P@1"], int(dev["dev/n"])
        else:
            result["dev_p1"] = float(best)
            dev_n = trainer.callback_metrics.get("dev/n")  # every epoch's; None: nothing to fit
            result["dev_n"] = None if dev_n is None else int(dev_n)
        result["epochs"] = trainer.current_epoch
        result["train_loss"] = list(module.loss_curve)  # per epoch; before "best" reloads it
        result["train_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        selected = None if best is None else "best"
        test = trainer.test(module, data, ckpt_path=selected, verbose=False)
        out = Path(cfg.paths.output_dir) / relation
        # trainer=ddp: every rank runs this, one writes. A prompt trained with its backbone
        # is only meaningful with that backbone: the checkpoint holds both.
        if trainer.is_global_zero and not module.backbone.trainable:
            with torch.no_grad():
                prompt, result["template"] = module.eval().exported(data.template_source)
                export_prompt(out / "prompt.pt", prompt, result["template"], backbone, relation)
            result |= prompt_norms(prompt, backbone.embeddings)
    else:
        dev = trainer.validate(module, data, verbose=False)[0]
        result["dev_p1"], result["dev_n"] = dev["dev/P@1"], int(dev["dev/n"])
        test = trainer.test(module, data, verbose=False)
    result["test_p1"], result["test_n"] = test[0]["test/P@1"], int(test[0]["test/n"])
    result |= test_facts(module, data.datasets["test"], data.candidate_ids)
    result["eval_seconds"] = time.perf_counter() - started
    finish_wandb(trainer)
    return result


def finish_wandb(trainer: L.Trainer) -> None:
    """Close the trainer's W&B runs (one per relation, or one per pass): the next relation
    starts its own, and an offline run is complete on disk once its job returns."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def run_in_one_pass(cfg: DictConfig, relations: list[str], backbone: Backbone) -> dict:
    """``multi_relation: true``: every relation's prompt in one fit over one backbone, with
    per-relation dev selection and early stopping (``multi_relation.py``); returns each
    relation's result as ``run_relation`` would."""
    parts = {
        relation: build_relation(for_relation(cfg, relation), backbone) for relation in relations
    }
    for relation, (module, _, _) in parts.items():
        if (
            module.backbone is not backbone
            or module.template_weights is not None
            or isinstance(module, AutoPromptModule | PriorModule)
        ):
            raise ValueError(
                f"multi_relation: prompt={cfg.prompt.name} ({relation}) is not supported; one "
                "pass serves prompts over a frozen backbone (not finetune, autoprompt, prior or "
                "ensembles)"
            )
    data = MultiRelationData({relation: part for relation, (_, part, _) in parts.items()})
    data.setup()
    trainable = any(t for _, _, t in parts.values())
    stopping = (cfg.get("callbacks") or {}).get("early_stopping") or {}
    module = MultiRelationModule(
        backbone,
        data.candidate_ids,
        [module.encoder for module, _, _ in parts.values()],
        data.active,
        **optimization(cfg, trainable),
        patience=stopping.get("patience", 20),
        ties_improve=cfg.ties_improve,
    )
    one_pass = for_relation(cfg, "one_pass")  # its checkpoints: <output_dir>/one_pass/
    trainer = build_trainer(one_pass)
    if trainer.world_size > 1:
        raise ValueError("multi_relation: runs in one process (use trainer=gpu, not ddp)")
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    started = time.perf_counter()
    if trainable:
        trainer.fit(module, data, ckpt_path=last_checkpoint(one_pass))
        if None in module.best_states:  # ended before a dev evaluation (trainer.max_steps)
            log.warning(
                "multi_relation: no dev evaluation during training; scoring the final prompts"
            )
            trainer.validate(module, data, verbose=False)
        module.load_best()
    else:
        trainer.validate(module, data, verbose=False)
    trainer.test(module, data, verbose=False)
    seconds = time.perf_counter() - started  # the pass over all relations together
    finish_wandb(trainer)
    results = {}
    for r, (relation, (_, part, _)) in enumerate(parts.items()):
        p1, n = module.test_results[r]
        result = {"template": part.template_source, "filter": part.stats}
        result |= {"dev_p1": module.best[r], "dev_n": module.dev_count[r]}
        result |= {"test_p1": p1, "test_n": n}
        if trainable:
            stopped = module.stopped_epoch[r]
            result["epochs"] = trainer.current_epoch if stopped is None else stopped + 1
            result["train_loss"] = module.loss_curve[r]
            with torch.no_grad():
                prompt = module.encoder[r].eval()()
            out = Path(cfg.paths.output_dir) / relation / "prompt.pt"
            export_prompt(out, prompt, part.template_source, backbone, relation)
            result |= prompt_norms(prompt, backbone.embeddings)
        examples = [e for e in data.datasets["test"] if e["relation"] == r]
        result |= test_facts(module, examples, data.candidate_ids, r)
        result["one_pass_seconds"] = seconds
        results[relation] = result
    return results


def test_facts(
    module: PromptModule, examples: list[dict], candidate_ids: torch.Tensor, relation: int = 0
) -> dict:
    """``results.fact_results`` of the module's last test (``relation``: in a one pass)."""
    top = module.test_predictions(relation)
    decode = module.backbone.tokenizer.decode
    words = {c: decode([int(candidate_ids[c])]).strip() for c in set(top.values())}
    return fact_results(examples, top, words)


def build_prompt(
    cfg: DictConfig, backbone: Backbone
) -> tuple[FixedPrompt | None, str | list[str] | None, list[float] | None]:
    """(encoder, template, ensemble weights): an exported prompt (embeddings and template
    from its file), a published discrete one (``prompt=discrete``; ``prompt.top_k`` > 1 is an
    LPAQA ensemble: a list of templates and their weights), or just the configured template
    (None: the task's manual one). Trainable encoders are built once the template's number of
    pseudo tokens is known."""
    if cfg.prompt.name in ("discrete", "exported") and cfg.prompt.get("template"):
        origin = "prompt.source" if cfg.prompt.name == "discrete" else "prompt.path"
        raise ValueError(
            f"prompt.template is not used by prompt={cfg.prompt.name} (its templates come from "
            f"{origin}); to evaluate your own template use prompt=manual "
            f"prompt.template='{cfg.prompt.template}'"
        )
    if cfg.prompt.name == "discrete":
        causal = backbone.kind == "causal"
        source, root, k = cfg.prompt.source, cfg.task.data_root, cfg.prompt.get("top_k", 1)
        templates, weights = published_templates(root, source, cfg.task.relation, causal, k)
        return (None, templates, weights) if k > 1 else (None, templates[0], None)
    if cfg.prompt.name != "exported":
        template = cfg.prompt.template
        if template and ("{manual}" in template or "{relation}" in template):
            template = fill_relation(
                template, manual_template(cfg.task.data_root, cfg.task.relation)
            )
        return None, template, None
    path = Path(cfg.prompt.path)
    if path.is_dir():
        path = path / cfg.task.relation / "prompt.pt"
    embeddings, template = load_prompt(path, backbone, cfg.task.relation)
    return FixedPrompt(embeddings), template, None


def build_encoder(
    cfg: DictConfig, n_tokens: int, backbone: Backbone, manual: str | None = None
) -> torch.nn.Module:
    """Instantiate ``encoder/*`` for ``n_tokens`` pseudo tokens of this backbone.
    ``init_words: manual`` starts them from the relation words of ``manual``."""
    options = OmegaConf.to_container(cfg, resolve=True)
    words = options.pop("init_words", None)
    if words == "manual":
        if manual is None:
            raise ValueError("encoder.init_words=manual needs the relation's manual template")
        words = relation_words(manual).split()
    vectors = None
    if words:
        vectors = backbone.word_vectors([words[i % len(words)] for i in range(n_tokens)])
    weights = backbone.embeddings
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
    if cfg.trainer.get("enable_progress_bar") is False:  # the bar callback would be refused
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    schedule = cfg.prompt.get("trainer") or {}  # a prompt's own schedule (prompt=autoprompt)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **schedule)
