"""Shared fixtures: the two tiny random backbones and a Hydra config composer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ptuning_lightning.launch.config import CONFIG_DIR, ROOT
from ptuning_lightning.prompting.backbones import Backbone, build_tiny

LAMA = ROOT / "data" / "lama"

# The tiny models are far too small for intra-op parallelism: one thread is several times
# faster, and much faster again when another process keeps the other cores busy.
torch.set_num_threads(1)

# Keeps test runs quiet: no experiment logger, progress bar or model summary.
QUIET = [
    "logger=none",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write a JSONL data file (creating its folder), for tests that make their own data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny_backbone(name: str, kind: str) -> Backbone:
    """A tiny random backbone built as ``conf/backbone/<name>.yaml`` builds it (the tokenizer
    is trained once per process and cached)."""
    return build_tiny(
        name, kind, corpus=str(LAMA / "trex"), vocab_size=4000, layers=2, hidden=64, heads=2
    )


@pytest.fixture(scope="session")
def gpt2() -> Backbone:
    return tiny_backbone("tiny-gpt2", "causal")


@pytest.fixture(scope="session")
def bert() -> Backbone:
    return tiny_backbone("tiny-bert", "masked")


@pytest.fixture(params=["gpt2", "bert"])
def backbone(request) -> Backbone:
    """Each tiny backbone in turn: causal (GPT-2) and masked (BERT)."""
    return request.getfixturevalue(request.param)


def compose_config(config_name: str, output_dir: Path, overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, writing into ``output_dir``.

    ``paths.output_dir`` normally comes from Hydra's runtime, which tests do not start."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name=config_name,
            overrides=[f"paths.output_dir={output_dir}", *QUIET, *overrides],
        )


@pytest.fixture(scope="session")
def compose_cfg():
    """``compose_cfg("train" or "eval", output_dir, overrides)``: a quiet composed config."""
    return compose_config
