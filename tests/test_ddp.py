"""trainer=ddp: 2 CPU processes (gloo) give the single-process P@1, write one folder per job.

The end-to-end test runs ptl-train as a user does, in a subprocess: one Hydra multirun of
manual and P-Tuning prompts on the default single-process trainer and on trainer=ddp. The
multirun also covers what a single run does not: each DDP job starts its own ranks and the
next job (single-process or DDP) starts clean. The sampler tests are in-process and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from ptuning_lightning.data.batching import EpochShuffleSampler, EvalShardSampler, PaddedSplit
from ptuning_lightning.lama.metrics import ExampleCount, PrecisionAtOne
from ptuning_lightning.launch.config import ROOT

RELATION = "P1376"
# Six candidates: dev keeps 5 facts and test 11 (odd sizes: 2 ranks need a padding copy), and
# the random tiny model gets some right (1/5 and 3/11), so a copy counted twice would show.
WORDS = ["Japan", "Taiwan", "Santiago", "England", "Victoria", "Alabama"]
KEPT = {"train": 16, "dev": 5, "test": 11}


# --- samplers and metric, in-process --------------------------------------------------------


def rank_batches(size: int, world: int, global_batch: int, epoch: int = 0) -> list[list[list]]:
    """Each rank's training batches (of dataset indices) for one epoch."""
    out = []
    for rank in range(world):
        sampler = EpochShuffleSampler(size, seed=34, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        loader = DataLoader(list(range(size)), batch_size=global_batch // world, sampler=sampler)
        out.append([batch.tolist() for batch in loader])
    return out


@pytest.mark.parametrize("size", [16, 20, 21])
def test_ranks_split_the_single_process_batches(size):
    """Step t of 2 ranks (batch 4 each) holds exactly step t of one process (batch 8), for
    every full global batch; all ranks take the same number of steps; epochs reshuffle."""
    (single,) = rank_batches(size, 1, 8, epoch=1)
    ranks = rank_batches(size, 2, 8, epoch=1)
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, batch in enumerate(single):
        together = ranks[0][step] + ranks[1][step]
        if len(batch) == 8:
            assert sorted(together) == sorted(batch)
        else:  # the last, partial global batch: padded with copies of the first examples
            assert set(batch) <= set(together) and len(together) == -(-len(batch) // 2) * 2
    assert rank_batches(size, 2, 8, epoch=2) != ranks


def test_eval_shards_count_every_example_once():
    """3 ranks over 7 examples: 3 positions each, 2 of them padding copies that P@1 and n
    leave out; summed over ranks (as DDP syncs the states) the values are those of 1 rank."""
    examples = [{"index": i, "target_index": i % 2} for i in range(7)]
    scores = torch.tensor([[1.0, 0.0]]).repeat(7, 1)  # always candidate 0: right for even i

    def states(rank: int, world: int) -> tuple[int, int]:
        p1, n = PrecisionAtOne(), ExampleCount()
        sampler = EvalShardSampler(len(examples), rank=rank, world_size=world)
        for position in sampler:
            item = PaddedSplit(examples)[position]
            args = scores[item["index"]][None], torch.tensor([item["target_index"]])
            for metric in (p1, n):
                metric.update(*args, torch.tensor([item["padding"]]))
        return int(p1.correct), int(n.compute())

    assert [len(EvalShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 3, 3]
    sharded = [states(rank, 3) for rank in range(3)]
    assert tuple(map(sum, zip(*sharded, strict=True))) == states(0, 1) == (4, 7)


# --- ptl-train, end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """ptl-train -m prompt=manual,ptuning trainer=cpu,ddp (4 jobs) on tiny-gpt2."""
    root = tmp_path_factory.mktemp("ddp")
    lama = root / "lama"
    (lama / "trex").mkdir(parents=True)
    (lama / "trex" / RELATION).symlink_to(ROOT / "data" / "lama" / "trex" / RELATION)
    (lama / "relations.jsonl").symlink_to(ROOT / "data" / "lama" / "relations.jsonl")
    (lama / "vocab").mkdir()
    words = {"bert-base-cased": WORDS, "gpt2-xl": ["Ġ" + w for w in WORDS]}
    (lama / "vocab" / "29k-vocab.json").write_text(json.dumps(words))
    command = [
        str(Path(sys.executable).parent / "ptl-train"), "-m",
        "prompt=manual,ptuning", "trainer=cpu,ddp", "backbone=tiny-gpt2",
        f"task.relation={RELATION}", f"task.data_root={lama}",
        "task.batch_size=4",  # global: 2 per process under DDP, 4 steps in the epoch
        "task.eval_batch_size=4",  # several eval batches per split, also under DDP
        "trainer.max_epochs=1", "optimizer.lr=0.01", "++prompt.loss_over=candidates",
        "encoder.init_words=null",  # from the manual words P-Tuning scores 0 test P@1 here
        f"hydra.sweep.dir={root / 'sweep'}",
        "logger=none", "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread per process
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=400, check=False
    )
    (root / "output.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return root / "sweep"


@pytest.fixture(scope="module")
def jobs(sweep) -> dict[tuple[str, str], Path]:
    """(prompt, trainer) -> the job's folder, from each folder's .hydra/overrides.yaml."""
    found = {}
    for overrides in sweep.glob("*/.hydra/overrides.yaml"):
        values = dict(o.split("=", 1) for o in yaml.safe_load(overrides.read_text()))
        found[values["prompt"], values["trainer"]] = overrides.parent.parent
    return found


def result(jobs, prompt: str, trainer: str) -> dict:
    return json.loads((jobs[prompt, trainer] / "results.json").read_text())["relations"][RELATION]


def test_one_folder_per_job(sweep, jobs):
    """Four job folders and nothing else: no per-rank Hydra folders. A DDP job's folder has
    rank 1's log (so rank 1 ran there), one results.json, and for P-Tuning one checkpoint
    folder and one prompt.pt; no partial files from two ranks writing."""
    assert set(jobs) == {(p, t) for p in ("manual", "ptuning") for t in ("cpu", "ddp")}
    assert {p for p in sweep.iterdir() if p.is_dir()} == set(jobs.values())
    for (prompt, trainer), job in jobs.items():
        assert [p.relative_to(job).as_posix() for p in job.rglob("results.json")] == [
            "results.json"
        ]
        assert not list(job.rglob("*.partial"))
        assert [p.name for p in job.rglob(".hydra")] == [".hydra"]
        assert (job / "train_rank1.log").is_file() == (trainer == "ddp")
        checkpoints = sorted(p.relative_to(job).as_posix() for p in job.rglob("checkpoints"))
        prompts = sorted(p.relative_to(job).as_posix() for p in job.rglob("prompt.pt"))
        trained = prompt == "ptuning"
        assert checkpoints == ([f"{RELATION}/checkpoints"] if trained else [])
        assert prompts == ([f"{RELATION}/prompt.pt"] if trained else [])


def test_rank_zero_alone_prints_the_table(sweep):
    """Rank 1 shares the terminal: one table per job means only rank 0 reported."""
    output = (sweep.parent / "output.txt").read_text()
    assert output.count("manual on tiny-gpt2 (P@1, %)") == 2
    assert output.count("ptuning on tiny-gpt2 (P@1, %)") == 2


def test_manual_prompt_scores_match_exactly(jobs):
    """Evaluation on 2 processes counts each example once: the same n and the same P@1."""
    single, ddp = result(jobs, "manual", "cpu"), result(jobs, "manual", "ddp")
    assert ddp["filter"] == single["filter"]
    assert {s: single["filter"][s]["kept"] for s in KEPT} == KEPT
    assert (ddp["dev_n"], ddp["test_n"]) == (single["dev_n"], single["test_n"]) == (5, 11)
    assert ddp["dev_p1"] == single["dev_p1"] > 0
    assert ddp["test_p1"] == single["test_p1"] > 0


def test_ptuning_under_ddp(jobs):
    """P-Tuning trains under DDP and scores every example once. Its prompt is not bit-equal to
    the single-process one: each step averages two per-rank gradients of 2 examples instead of
    one of 4 (the same examples, different float sums). Measured on CPU: the same dev and test
    P@1 (0.2 and 0.09) on both, prompt embeddings within 4e-7 of each other. Training
    on the real model amplifies such differences (README, "DDP vs one process")."""
    single, ddp = result(jobs, "ptuning", "cpu"), result(jobs, "ptuning", "ddp")
    assert ddp["epochs"] == single["epochs"] == 1
    assert (ddp["dev_n"], ddp["test_n"]) == (single["dev_n"], single["test_n"]) == (5, 11)
    assert ddp["dev_p1"] == single["dev_p1"] > 0
    assert ddp["test_p1"] == single["test_p1"] > 0
    prompts = [
        torch.load(jobs["ptuning", t] / RELATION / "prompt.pt", weights_only=True)["embeddings"]
        for t in ("cpu", "ddp")
    ]
    torch.testing.assert_close(*prompts, rtol=0, atol=1e-6)  # the same global batches
