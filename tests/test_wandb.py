"""logger=wandb: offline by default, one run per relation, with the metrics, the resolved config
and the two tables (test predictions, the prompt's nearest tokens), read back from the offline
run's own ``.wandb`` file; and ``nearest_tokens`` on a hand-made case."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from wandb.proto import wandb_internal_pb2

from ptuning_lightning.job import run
from ptuning_lightning.lama.callbacks import nearest_tokens
from ptuning_lightning.lama.run import for_relation
from ptuning_lightning.launch.config import ROOT

RELATIONS = ["P1376", "P36"]
LIMITS = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
]


def read_wandb_file(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a ``run-<id>.wandb`` file: a ``:W&B`` header (7 bytes), then LevelDB
    log blocks of 32 KiB whose chunks (crc32 4, length 2, type 1, data) form the serialized
    ``Record`` protos (type 1 a whole record; 2, 3, 4 its first, middle and last parts).
    wandb >= 0.20 reads these files in its Go core only, so the format is read here."""
    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", "not a wandb transaction log"
    records, parts, pos = [], [], header
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a chunk is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        chunk, pos = data[pos + header : pos + header + length], pos + header + length
        if kind == 0:
            continue
        parts.append(chunk)
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def summarize_run(records: list[wandb_internal_pb2.Record]) -> dict:
    """The run record, the config, every logged history key's values, and table artifacts."""
    out = {"run": None, "config": {}, "history": {}, "artifacts": []}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                out["history"].setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "artifact":
            out["artifacts"].append((record.artifact.type, record.artifact.name))
    return out


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """No API key and every wandb folder inside tmp_path: nothing touches the network."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # WandbLogger(offline=True) sets WANDB_MODE itself; setenv first so teardown removes it
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.delenv("WANDB_MODE")
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_offline_is_the_default_without_api_key(offline_wandb, compose_cfg, monkeypatch):
    cfg = compose_cfg("train", offline_wandb, ["logger=wandb", "task.relation=P1376"])
    assert cfg.logger.wandb.offline is True
    assert cfg.logger.wandb.group == "train"
    assert for_relation(cfg, "P1376").logger.wandb.name == "P1376"  # the relation's run
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert cfg.logger.wandb.offline is False  # resolved when the logger is built


def test_wandb_run_per_relation_with_metrics_and_tables(offline_wandb, compose_cfg):
    out = offline_wandb / "out"
    overrides = [
        "logger=wandb",
        "backbone=tiny-gpt2",
        f"task.relation=[{','.join(RELATIONS)}]",
        "logger.wandb.tags=[test]",
        *LIMITS,
    ]
    run(compose_cfg("train", out, overrides))
    results = json.loads((out / "results.json").read_text())

    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    runs = [summarize_run(read_wandb_file(next(d.glob("run-*.wandb")))) for d in run_dirs]
    assert sorted(r["run"].display_name for r in runs) == sorted(RELATIONS)  # separate runs
    for logged in runs:
        info, history = logged["run"], logged["history"]
        relation = info.display_name
        assert (info.project, info.run_group, list(info.tags)) == (
            "ptuning-lightning",
            "train",
            ["test"],
        )
        assert logged["config"]["task"]["relation"] == relation  # the resolved config
        assert logged["config"]["backbone"]["name"] == "tiny-gpt2"
        assert len(history["train/loss"]) == 2  # one per step (log_every_n_steps=1)
        assert history["dev/P@1"] and history["test/P@1"]
        assert history["test/P@1"][-1] == pytest.approx(results["relations"][relation]["test_p1"])
        assert history["test/predictions/_type"] == ["table-file"]
        assert history["prompt/neighbours/_type"] == ["table-file"]
        assert sorted(t for t, _ in logged["artifacts"]) == ["run_table", "run_table"]

        run_dir = next(d for d in run_dirs if d.name.endswith(info.run_id))
        files = run_dir / "files"
        table = json.loads((files / history["test/predictions/path"][0]).read_text())
        assert table["columns"][:3] == ["relation", "subject", "gold"]
        assert table["columns"][4] == "correct"
        n_test = results["relations"][relation]["filter"]["test"]["kept"]
        assert len(table["data"]) == min(64, n_test)  # one batch of test/eval_batch_size
        for name, subject, gold, top5, _ in table["data"]:
            assert name == relation and subject and gold and len(top5.split(", ")) == 5
        share = sum(row[4] for row in table["data"]) / len(table["data"])
        assert share == pytest.approx(history["test/P@1"][-1])  # same batch, same argmax

        neighbours = json.loads((files / history["prompt/neighbours/path"][0]).read_text())
        positions = [row[:2] for row in neighbours["data"]]
        assert positions == [[relation, p] for p in range(6)]  # causal: [P*3] x2
        assert all(len(row[2].split(", ")) == 5 for row in neighbours["data"])


class CharTokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join("abcd"[i] for i in ids)


def test_nearest_tokens_on_a_hand_made_vocabulary():
    """Cosine similarity against every token embedding, best first, scale-invariant."""
    embeddings = torch.nn.Embedding.from_pretrained(
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    )
    backbone = SimpleNamespace(
        model=SimpleNamespace(get_input_embeddings=lambda: embeddings), tokenizer=CharTokenizer()
    )
    prompt = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 2.0]])  # a, b, c rescaled
    nearest = nearest_tokens(prompt, backbone, k=3)
    tokens = [[t for t, _ in row] for row in nearest]
    assert tokens[0] == ["a", "c", "b"] and tokens[1] == ["b", "c", "a"]
    assert tokens[2][0] == "c" and tokens[3] == ["c", "b", "a"]  # 3/sqrt(10) > 2/sqrt(5)
    assert [row[0][1] for row in nearest[:3]] == pytest.approx([1.0, 1.0, 1.0])
    assert nearest[0][1][1] == pytest.approx(2**-0.5)
    assert nearest[0][2][1] == pytest.approx(0.0, abs=1e-6)
    assert len(nearest_tokens(prompt, backbone, k=10)[0]) == 4  # k is capped at the vocabulary


def test_one_pass_tables_name_each_rows_relation(offline_wandb, compose_cfg):
    """multi_relation=true: one W&B run whose prediction table puts each test fact under its
    own relation with its own subject and object (as in that relation's test.jsonl), and whose
    neighbour table has every relation's pseudo tokens; the job finishes and exports prompts."""
    out = offline_wandb / "out"
    overrides = [
        "logger=wandb",
        "backbone=tiny-gpt2",
        f"task.relation=[{','.join(RELATIONS)}]",
        "multi_relation=true",
        *[o for o in LIMITS if "limit_test_batches" not in o],  # every test fact
    ]
    run(compose_cfg("train", out, overrides))
    results = json.loads((out / "results.json").read_text())["relations"]
    assert all((out / relation / "prompt.pt").is_file() for relation in RELATIONS)

    run_dir = next((out / "wandb").glob("offline-run-*"))
    logged = summarize_run(read_wandb_file(next(run_dir.glob("run-*.wandb"))))
    history, files = logged["history"], run_dir / "files"
    table = json.loads((files / history["test/predictions/path"][0]).read_text())
    assert table["columns"][:3] == ["relation", "subject", "gold"]
    for relation in RELATIONS:
        rows = [row for row in table["data"] if row[0] == relation]
        path = ROOT / "data" / "lama" / "trex" / relation / "test.jsonl"
        facts = Counter(
            (f["sub"], f["obj"]) for f in map(json.loads, path.read_text().splitlines())
        )
        pairs = Counter((subject, gold) for _, subject, gold, _, _ in rows)
        assert pairs.total() == results[relation]["test_n"]
        assert pairs <= facts, relation  # P36 is P1376 reversed: a mix-up shows here
        share = sum(row[4] for row in rows) / len(rows)
        assert share == pytest.approx(results[relation]["test_p1"])

    neighbours = json.loads((files / history["prompt/neighbours/path"][0]).read_text())
    assert [row[:2] for row in neighbours["data"]] == [
        [relation, position] for relation in RELATIONS for position in range(6)
    ]
