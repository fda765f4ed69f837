"""What makes the numbers trustworthy: the training prior as a method, the paper's tie rule
in dev selection, and the per-fact instrumentation in results.json (predictions, hits,
collapse rate, loss curve, prompt norms), each checked against hand-made expectations."""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import LAMA, QUIET
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from ptuning_lightning.cli import train as train_main
from ptuning_lightning.job import run
from ptuning_lightning.lama.metrics import RelationMean, TopCandidates
from ptuning_lightning.lama.module import PriorModule
from ptuning_lightning.lama.run import check_warmup, fact_results, planned_steps
from ptuning_lightning.prompting.selection import BestCheckpoint, PatientStopping


def batch(targets: list[int]) -> dict[str, torch.Tensor]:
    return {"target_index": torch.tensor(targets), "index": torch.arange(len(targets))}


def test_prior_answers_the_most_frequent_training_object(gpt2):
    """Candidates 0..3; training objects 2, 1, 2, 1, 3: candidates 1 and 2 tie at two facts,
    so the first listed (1) is the prior. Facts with gold 1, 1, 2, 0 score P@1 2/4."""
    module = PriorModule(gpt2, torch.tensor([10, 11, 12, 13]), [2, 1, 2, 1, 3])
    scores = module.scores(batch([1, 1, 2, 0]), module.prompt(), candidates=True)
    assert scores.argmax(-1).tolist() == [1, 1, 1, 1]
    assert scores[0].exp().tolist() == pytest.approx([0.0, 0.4, 0.4, 0.2])
    module.test_p1.update(scores, torch.tensor([1, 1, 2, 0]))
    assert float(module.test_p1.compute()) == 0.5


def test_ptl_train_prior_scores_the_share_of_the_most_frequent_object(tmp_path, monkeypatch):
    """``prompt=prior`` on P39 (tiny-gpt2): it predicts the most frequent training object of
    the kept facts for every test fact, and its P@1 is that object's share of the test facts,
    both counted here from the data files."""
    out = tmp_path / "prior"
    overrides = ["backbone=tiny-gpt2", "task.relation=P39", "prompt=prior", *QUIET]
    monkeypatch.setattr("sys.argv", ["ptl-train", *overrides, f"hydra.run.dir={out}"])
    train_main()
    result = json.loads((out / "results.json").read_text())["relations"]["P39"]
    rows = [json.loads(line) for line in (LAMA / "trex" / "P39" / "train.jsonl").open()]
    prior, _ = Counter(row["obj"] for row in rows).most_common(1)[0]
    assert result["most_predicted"] == prior == "bishop"
    assert result["collapse_rate"] == 1.0
    assert "epochs" not in result  # nothing trained
    test = [json.loads(line) for line in (LAMA / "trex" / "P39" / "test.jsonl").open()]
    kept = result["filter"]["test"]["kept"]
    assert result["test_n"] == kept == len(result["test_hits"])
    # every kept fact whose object is the prior is a hit; the kept facts are a subset of these
    assert result["test_hits"].count("1") <= sum(row["obj"] == prior for row in test)
    assert result["test_p1"] == pytest.approx(result["test_hits"].count("1") / kept)
    assert set(result["test_predictions"]) == {prior}


class Scripted(LightningModule):
    """Logs a scripted dev P@1 per epoch; its one weight records the epoch it was saved at."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores, self.epoch_seen = scores, torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.epoch_seen.fill_(self.current_epoch)
        return (self.epoch_seen * 0).sum() + torch.zeros((), requires_grad=True)

    def validation_step(self, batch, batch_idx):
        self.log("dev/P@1", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(torch.zeros(1, 1))

    def val_dataloader(self):
        return DataLoader(torch.zeros(1, 1))


@pytest.mark.parametrize("ties_improve, best_epoch, epochs", [(True, 3, 7), (False, 0, 4)])
def test_selection_ties_follow_the_papers_rule(tmp_path, ties_improve, best_epoch, epochs):
    """Dev P@1 0.5, 0.4, 0.5, 0.5, 0.3, 0.3, 0.3 with patience 3: with ties improving (the
    paper's ``>=``) epoch 3 is kept and patience restarts there, so training stops after epoch
    6 (7 epochs run); strictly better only keeps epoch 0 and stops after epoch 3 (4 run)."""
    scores = [0.5, 0.4, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    checkpoint = BestCheckpoint(
        ties_improve=ties_improve, dirpath=tmp_path, filename="best", monitor="dev/P@1", mode="max"
    )
    stopping = PatientStopping(ties_improve=ties_improve, monitor="dev/P@1", mode="max", patience=3)
    trainer = L.Trainer(
        max_epochs=len(scores),
        callbacks=[checkpoint, stopping],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Scripted(scores))
    saved = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    assert int(saved["epoch_seen"]) == best_epoch
    assert trainer.current_epoch == epochs


def test_top_candidates_and_relation_mean_on_hand_made_batches():
    top = TopCandidates()
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    top.update(scores, torch.tensor([2, 0, 1]), torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1]))
    assert top.compute() == {1: {2: 1}, 0: {0: 0}}  # the padding copy is left out
    mean = RelationMean(2)
    mean.update(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]))
    assert mean.compute().tolist() == [2.0, 5.0]


def test_fact_results_on_hand_made_facts():
    examples = [{"index": i, "target_index": t} for i, t in enumerate([0, 1, 1, 2])]
    top = {0: 0, 1: 2, 2: 2, 3: 2}
    result = fact_results(examples, top, {0: "Paris", 2: "Rome"})
    assert result["test_predictions"] == ["Paris", "Rome", "Rome", "Rome"]
    assert result["test_hits"] == "1001"
    assert result["collapse_rate"] == 0.75 and result["most_predicted"] == "Rome"


def test_results_json_carries_the_instrumentation(tmp_path: Path, monkeypatch):
    """A P-Tuning run on tiny-gpt2 records a loss per epoch, its optimizer steps, prompt and
    embedding norms, and per-fact predictions whose hits reproduce test P@1 and whose mode
    gives the collapse rate."""
    out = tmp_path / "run"
    overrides = ["backbone=tiny-gpt2", "task.relation=P1376", "trainer.max_epochs=2", *QUIET]
    monkeypatch.setattr("sys.argv", ["ptl-train", *overrides, f"hydra.run.dir={out}"])
    train_main()
    result = json.loads((out / "results.json").read_text())["relations"]["P1376"]
    assert len(result["train_loss"]) == 2 and all(v > 0 for v in result["train_loss"])
    batches = -(-result["filter"]["train"]["kept"] // 8)  # task.batch_size 8, every epoch
    assert result["steps"] == 2 * batches
    assert result["test_p1"] == pytest.approx(result["test_hits"].count("1") / result["test_n"])
    counts = Counter(result["test_predictions"])
    assert result["collapse_rate"] == pytest.approx(max(counts.values()) / result["test_n"])
    prompt = torch.load(out / "P1376" / "prompt.pt", weights_only=True)["embeddings"]
    assert result["prompt_norm"] == pytest.approx(float(prompt.norm(dim=-1).mean()), rel=1e-5)
    assert result["embedding_norm"] > 0


def test_a_run_that_ends_before_its_warmup_is_named(caplog):
    """P413 under the demo's recipe: 58 training facts in batches of 8 for 3 epochs are 24
    optimizer steps, and a linear warmup from 1% over 60 steps gives the last of them
    0.01 + 0.99 * 23 / 60 = 39% of the rate: warned, naming the keys. 10 epochs (80 steps)
    outlast the warmup, and a run that no setting bounds is not judged."""
    warmup = partial(torch.optim.lr_scheduler.LinearLR, start_factor=0.01, total_iters=60)
    assert planned_steps(58, 8, {"max_epochs": 3, "max_steps": -1}) == 24
    assert planned_steps(58, 8, {"max_epochs": 3, "max_steps": 10}) == 10
    assert planned_steps(58, 8, {"max_epochs": 3, "accumulate_grad_batches": 3}) == 9
    assert planned_steps(58, 8, {"max_epochs": None, "max_steps": -1}) is None
    assert planned_steps(58, 8, {"max_epochs": 3, "limit_train_batches": 2}) == 6
    assert planned_steps(58, 8, {"max_epochs": 3, "limit_train_batches": 0.5}) == 12
    assert planned_steps(58, 8, {"max_epochs": 3, "limit_train_batches": 1.0}) == 24
    with caplog.at_level(logging.WARNING, logger="ptuning_lightning.lama.run"):
        check_warmup("P413", warmup, 58, 8, {"max_epochs": 3, "max_steps": -1})
        assert "P413: its run takes at most 24 optimizer steps" in caplog.text
        assert "reaches 39% of optimizer.lr" in caplog.text
        assert "trainer.max_epochs" in caplog.text and "warmup.total_iters" in caplog.text
        caplog.clear()
        check_warmup("P413", warmup, 58, 8, {"max_epochs": 10, "max_steps": -1})
        check_warmup("P413", warmup, 58, 8, {"max_epochs": None, "max_steps": -1})
        check_warmup("P413", None, 58, 8, {"max_epochs": 3, "max_steps": -1})
    assert caplog.text == ""


def test_warmup_on_a_superglue_task(tmp_path, compose_cfg, monkeypatch):
    """The few-shot protocol keeps its learning rate constant: a warmup override is refused
    before anything loads, naming the key."""
    monkeypatch.setattr(
        "ptuning_lightning.superglue.run.job_overrides", lambda: ["warmup.total_iters=10"]
    )
    cfg = compose_cfg("train", tmp_path, ["task=rte", "backbone=tiny-gpt2"])
    with pytest.raises(
        ValueError, match=r"warmup.total_iters is not used by SuperGLUE tasks \(task=rte\)"
    ):
        run(cfg)


def test_prior_with_multi_relation_runs_relation_by_relation(tmp_path, compose_cfg):
    """The prior calls no model, so ``multi_relation=true`` (a sweep over methods in one pass)
    runs its relations one by one and gives exactly the results of separate runs."""
    results = {}
    for one_pass in (False, True):
        overrides = ["backbone=tiny-gpt2", "task.relation=[P1376,P36]", "prompt=prior"]
        cfg = compose_cfg("train", tmp_path / str(one_pass), overrides)
        cfg.multi_relation = one_pass
        run(cfg)
        written = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
        results[one_pass] = written["relations"]
    for relation in ("P1376", "P36"):
        separate, together = results[False][relation], results[True][relation]
        assert together["test_hits"] == separate["test_hits"]
        assert together["most_predicted"] == separate["most_predicted"]


@pytest.mark.parametrize("deterministic", ["false", "true"])
def test_the_same_command_twice_gives_identical_results(tmp_path, monkeypatch, deterministic):
    """On the CPU two runs of one command agree bit for bit: losses, dev and test P@1, every
    fact's prediction and the exported prompt (``trainer.deterministic`` is not needed there;
    with it, Lightning also makes torch refuse non-deterministic kernels)."""
    outputs = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        overrides = [
            "backbone=tiny-gpt2",
            "task.relation=P1376",
            "trainer.max_epochs=2",
            f"trainer.deterministic={deterministic}",
            *QUIET,
        ]
        monkeypatch.setattr("sys.argv", ["ptl-train", *overrides, f"hydra.run.dir={out}"])
        train_main()
        result = json.loads((out / "results.json").read_text())["relations"]["P1376"]
        prompt = torch.load(out / "P1376" / "prompt.pt", weights_only=True)["embeddings"]
        keys = ("train_loss", "dev_p1", "test_p1", "test_predictions", "test_hits")
        outputs.append(({key: result[key] for key in keys}, prompt))
    (first, first_prompt), (second, second_prompt) = outputs
    assert first == second
    assert torch.equal(first_prompt, second_prompt)


def test_last_checkpoint_follows_every_epoch(tmp_path, monkeypatch):
    """Three epochs whose best is the first: last.ckpt holds the third (a resumed job goes on
    from where it stopped), best.ckpt the first."""
    out = tmp_path / "run"
    overrides = [
        "backbone=tiny-gpt2",
        "task.relation=P1376",
        "trainer.max_epochs=3",
        "optimizer.lr=0.01",
        "warmup=null",
        "ties_improve=false",
        *QUIET,
    ]
    monkeypatch.setattr("sys.argv", ["ptl-train", *overrides, f"hydra.run.dir={out}"])
    train_main()
    folder = out / "P1376" / "checkpoints"
    epochs = {
        name: torch.load(folder / f"{name}.ckpt", weights_only=False)["epoch"]
        for name in ("best", "last")
    }
    assert epochs == {"best": 0, "last": 2}
