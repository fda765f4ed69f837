"""One LAMA job of ptl-train / ptl-eval: for each relation of ``task.relation``, build the
prompt (the method object), data, module and trainer from the config, then the one runner
(``launch.runner``) trains if there is something to train, selects on dev, tests and exports;
finally ``results.json`` and the printed table.

With ``multi_relation: true`` the relations' prompts train in one pass over one backbone
(``one_pass``); each relation still gets the result of its separate run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from ptuning_lightning.lama.data import LamaDataModule, manual_template, resolve_relations
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.lama.one_pass import OnePassData, OnePassModule, per_relation_best
from ptuning_lightning.lama.uhn import NameProbe
from ptuning_lightning.launch.builders import (
    MANUAL_STARTS,
    build_encoder,
    build_method,
    build_trainer,
    load_backbone,
    optimization,
)
from ptuning_lightning.launch.results import envelope, prompt_norms, write_results
from ptuning_lightning.launch.runner import Outcome, best_checkpoint, export, fit_select_test
from ptuning_lightning.launch.sweeps import (
    RELATION_RESULT,
    RESULTS,
    finished_relation,
    last_checkpoint,
)
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.methods import PromptMethod, Target
from ptuning_lightning.prompting.module import advanced_warmup

log = logging.getLogger(__name__)
ONE_PASS = "one_pass"  # the one pass's run: <output_dir>/one_pass/checkpoints, its logger run


def run_job(cfg: DictConfig, out: Path, started: float) -> dict:
    """Every relation of the job (finished ones read back), then ``results.json``."""
    relations = resolve_relations(cfg.task.relation, cfg.task.data_root)
    per_relation, pending = {}, []
    for relation in relations:
        done = finished_relation(out, relation) if cfg.resume else None
        if done is not None:
            log.info("%s: finished by an earlier run, read from %s", relation, out / relation)
            per_relation[relation] = done
        else:
            pending.append(relation)
    method = build_method(cfg)
    control = cfg.backbone.control  # its record (below) needs the model, even with none pending
    backbone = load_backbone(cfg) if pending or control else None
    one_pass = cfg.multi_relation and not method.model_free  # the prior: no pass to share
    if pending and cfg.multi_relation and not one_pass:
        log.info("multi_relation: prompt=%s calls no model; relations run one by one", method.name)
    if pending and one_pass:
        for relation, done in run_in_one_pass(cfg, pending, backbone, method).items():
            write_results(out / relation / RELATION_RESULT, done)
            per_relation[relation] = done
    else:
        for relation in pending:  # each written as soon as it is done (a resume reads it)
            per_relation[relation] = run_relation(for_relation(cfg, relation), backbone, method)
            write_results(out / relation / RELATION_RESULT, per_relation[relation])
    per_relation = {relation: per_relation[relation] for relation in relations}
    results = summarize(cfg, method, per_relation, time.perf_counter() - started)
    results["backbone_control"] = backbone.control if control else None
    write_results(out / RESULTS, results)
    print_table(results)
    return results


def objective(results: dict) -> float:
    """What sweepers maximise: the macro dev P@1."""
    return results["macro"]["dev_p1"]


def for_relation(cfg: DictConfig, relation: str) -> DictConfig:
    """The job's config for one relation's run: its ``task.relation``, and the run's name and
    folder (``<output_dir>/<relation>``: checkpoints, ``prompt.pt``, the logger's run)."""
    run = named_run(cfg, relation)
    run.task.relation = relation
    return run


def named_run(cfg: DictConfig, name: str) -> DictConfig:
    """The job's config with ``run_name`` and ``run_dir`` (``<output_dir>/<name>``) set."""
    run = cfg.copy()
    run.run_name, run.run_dir = name, str(Path(cfg.paths.output_dir) / name)
    return run


def build_relation(
    cfg: DictConfig, backbone: Backbone, method: PromptMethod | None = None
) -> tuple[PromptModule, LamaDataModule]:
    """The module and data of one relation (seeded). A method that trains its backbone gets a
    trainable copy of it for this relation; a method may bring its own module (the prior, the
    AutoPrompt search)."""
    method = method or build_method(cfg)
    L.seed_everything(cfg.seed, workers=True)
    probe = NameProbe(backbone)  # task.subset=uhn's person-name filter, on the frozen backbone
    if method.trains_backbone:
        backbone = backbone.trainable_copy()
    relation, root = cfg.task.relation, cfg.task.data_root
    target = Target(relation, root, lambda: manual_template(root, relation))
    prompt = method.prompt(target, backbone)
    data = instantiate(
        cfg.task,
        tokenizer=backbone.tokenizer,
        model_kind=backbone.kind,
        template=prompt.template,
        template_weights=prompt.weights,
        batch_size=method.batch_size or cfg.task.batch_size,
        name_probe=probe,
    )
    data.setup()
    own = method.module(backbone, data, cfg.seed)
    if own is not None:
        return own, data
    encoder = prompt.encoder
    if encoder is None and data.template.n_prompt:
        manual = target.manual() if cfg.encoder.init_words in MANUAL_STARTS else None
        encoder = build_encoder(cfg.encoder, data.template, backbone, manual)
    steps = optimization(cfg)
    module = PromptModule(
        backbone,
        data.candidate_ids,
        encoder,
        optimizer=steps.optimizer,
        scheduler=steps.scheduler,
        warmup=steps.warmup,
        loss_over=method.loss_over,
        backbone_lr=method.backbone_lr,
        template_weights=data.template_weights,
    )
    if module.trains:
        settings = {**cfg.trainer, **method.trainer}
        check_warmup(relation, steps.warmup, len(data.datasets["train"]), data.batch_size, settings)
    return module, data


def check_warmup(
    relation: str, warmup: Callable | None, examples: int, batch_size: int, trainer: dict
) -> None:
    """Warn where the relation's run ends before its warmup does: its learning rate would
    never reach ``optimizer.lr`` (the demo's 3 epochs give P413's 58 training facts 24 steps,
    against a 60-step warmup), and a run that barely moves would read as a method's failure."""
    steps = None if warmup is None else planned_steps(examples, batch_size, trainer)
    if not steps:
        return
    stand_in, _ = advanced_warmup(warmup, steps - 1)  # the factor of the run's last step
    reached = stand_in.param_groups[0]["lr"]
    if reached < 0.999:
        log.warning(
            "%s: its run takes at most %d optimizer steps (%d training facts, batch %d, "
            "trainer.max_epochs=%s, trainer.max_steps=%s), and the warmup has not ended by the "
            "last one: the learning rate reaches %.0f%% of optimizer.lr. Raise "
            "trainer.max_epochs, or shorten the warmup (warmup.total_iters; warmup=null: none).",
            relation,
            steps,
            examples,
            batch_size,
            trainer.get("max_epochs"),
            trainer.get("max_steps"),
            100 * reached,
        )


def planned_steps(examples: int, batch_size: int, trainer: dict) -> int | None:
    """The most optimizer steps a run over ``examples`` training examples can take under the
    ``trainer`` settings (early stopping may end it sooner); None where nothing bounds it."""
    batches = -(-examples // batch_size)
    limit = trainer.get("limit_train_batches")  # a share of the epoch (float) or a count
    if limit is not None:
        batches = int(batches * limit) if isinstance(limit, float) else min(batches, limit)
    per_epoch = -(-batches // (trainer.get("accumulate_grad_batches") or 1))
    epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps") or -1
    steps = None if epochs is None or epochs < 0 else epochs * per_epoch
    if max_steps > 0:
        steps = max_steps if steps is None else min(steps, max_steps)
    return steps


def run_relation(cfg: DictConfig, backbone: Backbone, method: PromptMethod) -> dict:
    """One relation's separate run: its result for ``results.json``."""
    relation = cfg.task.relation
    module, data = build_relation(cfg, backbone, method)
    trainer = build_trainer(cfg, **method.trainer)
    if method.single_process and trainer.world_size > 1:
        raise ValueError(
            f"prompt={method.name} runs in one process (use trainer=cpu or gpu, not ddp)"
        )
    outcome = fit_select_test(
        cfg, trainer, module, data, best_checkpoint(revalidate=False), last_checkpoint(cfg)
    )
    result = {"template": data.template_source, "filter": data.stats}
    result |= {"dev_p1": outcome.dev["dev/P@1"], "dev_n": _count(outcome.dev.get("dev/n"))}
    if outcome.trained:
        result |= training_record(outcome)
        path = Path(cfg.run_dir) / "prompt.pt"
        exported = export(trainer, module, path, data.template_source, relation)
        if exported is not None:
            prompt, result["template"] = exported
            result |= prompt_norms(prompt, module.backbone.embeddings)
    result |= {"test_p1": outcome.test["test/P@1"], "test_n": int(outcome.test["test/n"])}
    result |= test_facts(module, data.datasets["test"], data.candidate_ids, training_objects(data))
    result["eval_seconds"] = outcome.eval_seconds
    return result


def _count(n: float | None) -> int | None:
    """``dev/n`` as an int (None: no dev evaluation logged it)."""
    return None if n is None else int(n)


def training_record(outcome: Outcome) -> dict:
    return {
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "train_loss": outcome.loss_curve,
        "train_seconds": outcome.train_seconds,
    }


def run_in_one_pass(
    cfg: DictConfig, relations: list[str], backbone: Backbone, method: PromptMethod
) -> dict:
    """``multi_relation: true``: every relation's prompt in one fit over one backbone, with
    per-relation dev selection and early stopping (``one_pass``); returns each relation's
    result as ``run_relation`` would."""
    if not method.one_pass:
        raise ValueError(
            f"multi_relation: prompt={method.name} ({relations[0]}) is not supported; one "
            "pass serves prompts over a frozen backbone (not finetune, autoprompt or ensembles)"
        )
    parts = {
        relation: build_relation(for_relation(cfg, relation), backbone, method)
        for relation in relations
    }
    data = OnePassData({relation: part for relation, (_, part) in parts.items()})
    data.setup()
    steps = optimization(cfg)
    module = OnePassModule(
        backbone,
        data.candidate_ids,
        [module.encoder for module, _ in parts.values()],
        data.active,
        optimizer=steps.optimizer,
        scheduler=steps.scheduler,
        warmup=steps.warmup,
        loss_over=method.loss_over,
        patience=OmegaConf.select(cfg, "callbacks.early_stopping.patience", default=None),
        ties_improve=cfg.ties_improve,
    )
    one_pass = named_run(cfg, ONE_PASS)
    trainer = build_trainer(one_pass, **method.trainer)
    if trainer.world_size > 1:
        raise ValueError("multi_relation: runs in one process (use trainer=gpu, not ddp)")
    outcome = fit_select_test(
        cfg, trainer, module, data, per_relation_best, last_checkpoint(one_pass)
    )
    seconds = outcome.eval_seconds + (outcome.train_seconds or 0.0)  # all relations together
    results = {}
    for r, (relation, (_, part)) in enumerate(parts.items()):
        p1, n = module.test_results[r]
        result = {"template": part.template_source, "filter": part.stats}
        result |= {"dev_p1": module.best[r], "dev_n": module.dev_count[r]}
        result |= {"test_p1": p1, "test_n": n}
        if outcome.trained:
            stopped = module.stopped_epoch[r]
            result["epochs"] = outcome.epochs if stopped is None else stopped + 1
            result["steps"] = module.relation_steps[r]
            result["train_loss"] = module.loss_curve[r]
            path = Path(cfg.paths.output_dir) / relation / "prompt.pt"
            exported = export(trainer, module, path, part.template_source, relation, index=r)
            result |= prompt_norms(exported[0], backbone.embeddings)
        examples = [e for e in data.datasets["test"] if e["relation"] == r]
        result |= test_facts(module, examples, data.candidate_ids, training_objects(part), r)
        result["one_pass_seconds"] = seconds
        results[relation] = result
    return results


# --- results.json -----------------------------------------------------------------------------


def training_objects(data: LamaDataModule) -> set[str]:
    """The relation's training objects, after the filters the training split gets."""
    return {example["obj"] for example in data.datasets["train"]}


def test_facts(
    module: PromptModule,
    examples: list[dict],
    candidate_ids: torch.Tensor,
    train_objects: set[str],
    relation: int = 0,
) -> dict:
    """``fact_results`` of the module's last test and their ``object_split`` by
    ``train_objects`` (``relation``: its index in a one pass)."""
    top = module.test_predictions(relation)
    decode = module.backbone.tokenizer.decode
    words = {c: decode([int(candidate_ids[c])]).strip() for c in set(top.values())}
    facts = fact_results(examples, top, words)
    if not facts:
        return facts
    scored = [e["obj"] for e in examples if e["index"] in top]
    return facts | object_split(scored, facts["test_hits"], train_objects)


def fact_results(examples: list[dict], top: dict[int, int], words: dict[int, str]) -> dict:
    """Per test fact, in the split's order: the predicted word (``test_predictions``) and
    whether it is the gold object (``test_hits``, a string of 0/1, what ``ptl-report``'s
    bootstrap resamples); and the share of facts given the single most predicted word
    (``collapse_rate``: near 1 when a prompt answers the same word whatever the subject).
    ``top`` maps each example's index to its top candidate, ``words`` a candidate to its word;
    examples that were not scored (``trainer.limit_test_batches``) are left out."""
    scored = [e for e in examples if e["index"] in top]  # all, unless limit_test_batches
    if not scored:
        return {}
    predicted = [words[top[e["index"]]] for e in scored]
    hits = "".join("1" if top[e["index"]] == e["target_index"] else "0" for e in scored)
    most, count = Counter(predicted).most_common(1)[0]
    return {
        "collapse_rate": count / len(predicted),
        "most_predicted": most,
        "test_predictions": predicted,
        "test_hits": hits,
    }


def object_split(test_objects: list[str], hits: str, train_objects: set[str]) -> dict:
    """Test P@1 on the facts whose object is among the relation's training objects
    (``test_seen_p1``: what a prompt can reach by learning the training prior) and on the
    others (``test_unseen_p1``: only recall from the backbone reaches them), with their
    counts (``test_seen_n``, ``test_unseen_n``), and per fact whether it is seen
    (``test_seen``, "1"/"0" in ``test_hits``' order, for ``ptl-report``'s paired bootstrap).
    ``test_objects`` and ``hits`` are in the same order; P@1 is None where a part has no
    facts."""
    result = {"test_seen": "".join("1" if obj in train_objects else "0" for obj in test_objects)}
    for part, seen in (("seen", True), ("unseen", False)):
        part_hits = [
            hit == "1"
            for obj, hit in zip(test_objects, hits, strict=True)
            if (obj in train_objects) == seen
        ]
        result[f"test_{part}_p1"] = sum(part_hits) / len(part_hits) if part_hits else None
        result[f"test_{part}_n"] = len(part_hits)
    return result


def split_macro(per_relation: dict[str, dict]) -> dict:
    """The macro of ``object_split``: each part's P@1 averaged over the relations that have
    facts in it, and its counts summed; empty unless every relation has the split (one
    without per-fact results, or read back from a run before the split, has none)."""
    if not all("test_seen_n" in r for r in per_relation.values()):
        return {}
    result = {}
    for part in ("seen", "unseen"):
        scores = [r[f"test_{part}_p1"] for r in per_relation.values()]
        scores = [p1 for p1 in scores if p1 is not None]
        result[f"test_{part}_p1"] = sum(scores) / len(scores) if scores else None
        result[f"test_{part}_n"] = sum(r[f"test_{part}_n"] for r in per_relation.values())
    return result


def summarize(
    cfg: DictConfig, method: PromptMethod, per_relation: dict[str, dict], seconds: float
) -> dict:
    """Per-relation metrics plus their macro average (``split_macro`` for the seen / unseen
    split), the resolved config and versions."""
    macro = {
        key: sum(r[key] for r in per_relation.values()) / len(per_relation)
        for key in ("dev_p1", "test_p1")
    } | split_macro(per_relation)
    return envelope(cfg, method, seconds) | {"relations": per_relation, "macro": macro}


@rank_zero_only
def print_table(results: dict) -> None:
    """Dev and test P@1 per relation and macro, and test P@1 on seen / unseen objects."""
    table = Table(title=f"{results['method']} on {results['backbone']} (P@1, %)")
    columns = ("relation", "n test", "dev P@1", "test P@1", "seen P@1 (n)", "unseen P@1 (n)")
    for column in columns:
        table.add_column(column, justify="left" if column == "relation" else "right")
    for relation, r in results["relations"].items():
        n = r["filter"]["test"]["kept"]
        table.add_row(
            relation,
            str(n),
            f"{100 * r['dev_p1']:.1f}",
            f"{100 * r['test_p1']:.1f}",
            *split_cells(r),
        )
    macro = results["macro"]
    table.add_row(
        "macro",
        "",
        f"{100 * macro['dev_p1']:.1f}",
        f"{100 * macro['test_p1']:.1f}",
        *split_cells(macro),
        style="bold",
    )
    Console().print(table)


def split_cells(result: dict) -> tuple[str, str]:
    """The seen and unseen cells of ``print_table``: P@1 (%) and count, "—" without them."""
    cells = []
    for part in ("seen", "unseen"):
        p1, n = result.get(f"test_{part}_p1"), result.get(f"test_{part}_n")
        cells.append("—" if n is None else f"{'—' if p1 is None else f'{100 * p1:.1f}'} ({n})")
    return cells[0], cells[1]
