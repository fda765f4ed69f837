"""OptiPrompt's controls (``backbone.control``): Rand E re-initialises the input embeddings (and
the output layer tied to them) and nothing else, Rand M every weight, both by the model's own
initialisation, reproducibly per seed, without touching the cached pretrained model; and the
``experiment=knowledge_controls`` sweep: its five rows, its relations, and ptl-report's rows.

"Pretrained" here is a tiny backbone with every tensor moved off its initial value, so that a
re-initialised tensor cannot coincide with it (the tiny models are themselves fresh inits)."""

from __future__ import annotations

import copy
import csv
import json
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_sweeps import ENV, FAST, PTL_TRAIN
from transformers import GPT2LMHeadModel

from ptuning_lightning.cli import report as ptl_report
from ptuning_lightning.job import run
from ptuning_lightning.lama.report import MACRO_CSV
from ptuning_lightning.launch.builders import load_backbone
from ptuning_lightning.launch.config import CONFIG_DIR, ROOT
from ptuning_lightning.prompting.backbones import Backbone, apply_control
from ptuning_lightning.prompting.encoders import export_prompt, load_prompt

LAMA = ROOT / "data" / "lama"
# The tensors that hold the input embeddings, and the output weights tied to them.
EMBEDDINGS = {
    "tiny-gpt2": {"transformer.wte.weight", "lm_head.weight"},
    "tiny-bert": {"bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"},
}
INIT_STD = 0.02  # initializer_range of GPT2Config and BertConfig


def pretrained(backbone: Backbone) -> Backbone:
    """A copy of ``backbone`` with every tensor moved by N(0, 1) noise (norm weights off one,
    biases off zero), standing in for pretrained weights."""
    model = copy.deepcopy(backbone.model)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(torch.randn(tensor.shape, generator=generator))
    return Backbone(model, backbone.tokenizer, backbone.kind, backbone.name)


def weights(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in backbone.model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], backbone: Backbone) -> set[str]:
    after = backbone.model.state_dict()
    assert set(after) == set(before)
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_rand_e_changes_the_embeddings_and_the_tied_output_only(backbone):
    model = pretrained(backbone)
    before = weights(model)
    apply_control(model, "rand_e", seed=1)
    assert changed(before, model) == EMBEDDINGS[backbone.name]
    embeddings = model.embeddings
    assert model.model.get_output_embeddings().weight is embeddings  # still one tied matrix
    assert abs(float(embeddings.std()) - INIT_STD) < 0.002  # the model's N(0, 0.02)
    assert model.control == {"control": "rand_e", "seed": 1, "output_tied": True}
    assert model.name == f"{backbone.name} (rand_e, seed 1)"


def test_rand_e_keeps_an_untied_output_layer(gpt2):
    config = copy.deepcopy(gpt2.model.config)
    config.tie_word_embeddings = False
    untied = pretrained(Backbone(GPT2LMHeadModel(config), gpt2.tokenizer, "causal", "untied"))
    assert untied.model.lm_head.weight is not untied.embeddings
    before = weights(untied)
    apply_control(untied, "rand_e", seed=1)
    assert changed(before, untied) == {"transformer.wte.weight"}
    assert untied.control["output_tied"] is False


def test_rand_m_changes_every_weight_by_the_models_own_init(backbone):
    """Every tensor of both tiny models has an initialiser (embeddings, linear layers, norms,
    BERT's output bias), so all change: norms to ones and biases to zeros."""
    model = pretrained(backbone)
    before = weights(model)
    apply_control(model, "rand_m", seed=1)
    assert changed(before, model) == set(before)
    for name, tensor in model.model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(tensor == 0), name
        elif ".ln_" in name or "LayerNorm" in name:
            assert torch.all(tensor == 1), name
    if backbone.kind == "causal":  # GPT-2's residual projections: std 0.02 / sqrt(2 * layers)
        projection = model.model.transformer.h[0].mlp.c_proj.weight
        assert abs(float(projection.std()) - INIT_STD / 2) < 0.001
        assert abs(float(model.model.transformer.h[0].mlp.c_fc.weight.std()) - INIT_STD) < 0.002
    assert model.control == {"control": "rand_m", "seed": 1, "output_tied": True}


@pytest.mark.parametrize("control", ["rand_e", "rand_m"])
def test_controls_are_seeded_and_leave_the_global_random_state(gpt2, control):
    """The same seed draws the same weights, another seed others: every randomly drawn tensor
    differs (Rand M's norms and biases are ones and zeros whatever the seed)."""
    state = torch.get_rng_state()
    first, again, other = (apply_control(pretrained(gpt2), control, s) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), state)
    assert changed(weights(again), first) == set()
    drawn = {n for n in weights(other) if not n.endswith("bias") and ".ln_" not in n}
    expected = EMBEDDINGS["tiny-gpt2"] if control == "rand_e" else drawn
    assert changed(weights(other), first) == expected


def test_the_cached_pretrained_model_stays_intact(tmp_path, compose_cfg, gpt2):
    """A control loaded through ``backbone.load`` (the offline GGUF default, whose HF copy is
    already in its cache folder) leaves the cache's files and what loads from them unchanged."""
    cache = tmp_path / "cache"
    original = pretrained(gpt2)
    original.model.save_pretrained(cache)
    original.tokenizer.save_pretrained(cache)
    files = {p.name: p.read_bytes() for p in cache.iterdir()}
    load = ["backbone=smollm2-135m", f"backbone.load.cache={cache}", "seed=7"]

    controlled = load_backbone(compose_cfg("train", tmp_path, [*load, "backbone.control=rand_m"]))
    assert changed(weights(original), controlled) == set(weights(original))
    again = load_backbone(compose_cfg("train", tmp_path, load))
    assert again.control is None and again.name == "smollm2-135m"
    assert changed(weights(original), again) == set()
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == files

    seeded = load_backbone(compose_cfg("train", tmp_path, [*load, "backbone.control=rand_m"]))
    assert changed(weights(controlled), seeded) == set()  # the job's seed sets the draw
    assert seeded.control == {"control": "rand_m", "seed": 7, "output_tied": True}


def test_an_unknown_control_is_refused_before_loading(tmp_path, compose_cfg):
    missing = ["backbone.load.package=no_such_model", f"backbone.load.cache={tmp_path / 'none'}"]
    cfg = compose_cfg("train", tmp_path, [*missing, "backbone.control=rand_x"])
    with pytest.raises(ValueError, match=r"backbone.control must be null or one of .*'rand_x'"):
        load_backbone(cfg)


def test_a_prompt_trained_on_a_control_needs_that_control(tmp_path, gpt2):
    path = tmp_path / "prompt.pt"
    template = "[P*3] [X] [P*3] [Y] [P*3]"  # six pseudo tokens for a causal LM
    control = apply_control(pretrained(gpt2), "rand_e", seed=1)
    export_prompt(path, torch.zeros(6, gpt2.hidden_size), template, control, "P1376")
    with pytest.raises(ValueError, match=r"'tiny-gpt2 \(rand_e, seed 1\)', not 'tiny-gpt2'"):
        load_prompt(path, gpt2, "P1376")
    same = apply_control(pretrained(gpt2), "rand_e", seed=1)
    assert load_prompt(path, same, "P1376")[1] == template


def test_manual_prompt_on_a_control_records_it(tmp_path, compose_cfg):
    overrides = [
        "backbone=tiny-gpt2",
        "prompt=manual",
        "backbone.control=rand_m",
        "task.relation=P1376",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    run(compose_cfg("train", tmp_path, overrides))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["backbone"]["control"] == "rand_m"
    assert results["backbone_control"] == {"control": "rand_m", "seed": 34, "output_tied": True}


# --- experiment=knowledge_controls ----------------------------------------------------------


ROWS = {  # knowledge_row -> (prompt, backbone.control)
    "manual": ("manual", None),
    "prior": ("prior", None),
    "ptuning": ("ptuning", None),
    "ptuning_rand_e": ("ptuning", "rand_e"),
    "ptuning_rand_m": ("ptuning", "rand_m"),
}


def test_knowledge_controls_config(tmp_path, compose_cfg):
    """Five rows swept as one param; the relations are the 10 with the fewest training facts."""
    sizes = {
        folder.name: len((folder / "train.jsonl").read_text().splitlines())
        for folder in (LAMA / "trex").iterdir()
    }
    ordered = sorted(sizes.values())
    assert ordered[9] < ordered[10]  # no tie at the cut
    fewest = {relation for relation, n in sizes.items() if n <= ordered[9]}
    for row, (prompt, control) in ROWS.items():
        cfg = compose_cfg(
            "train", tmp_path, ["experiment=knowledge_controls", f"knowledge_row={row}"]
        )
        assert (cfg.prompt.name, cfg.backbone.control) == (prompt, control)
        assert set(cfg.task.relation) == fewest and len(cfg.task.relation) == 10
        assert (cfg.optimizer.lr, cfg.trainer.max_epochs) == (3.0e-4, 3)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hydra = compose("train", ["experiment=knowledge_controls"], return_hydra_config=True)
    assert dict(hydra.hydra.sweeper.params) == {"knowledge_row": ",".join(ROWS)}
    assert hydra.hydra.sweep.dir == "logs/knowledge_controls"  # fixed: reruns resume


def test_knowledge_controls_sweep_runs_five_jobs_and_reports_five_rows(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(
        [
            PTL_TRAIN,
            "-m",
            "experiment=knowledge_controls",
            f"hydra.sweep.dir={sweep_dir}",
            *(o for o in FAST if not o.startswith("task.relation=")),
            "task.relation=[P1376,P37]",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(jobs) == 5
    recorded = [(job["method"], (job["backbone_control"] or {}).get("control")) for job in jobs]
    assert sorted(recorded, key=str) == sorted(ROWS.values(), key=str)
    assert all(set(job["relations"]) == {"P1376", "P37"} for job in jobs)

    ptl_report([str(sweep_dir), "--out", str(tmp_path / "report")])
    with open(tmp_path / "report" / MACRO_CSV, newline="") as f:
        rows = [(row["method"], row["setting"]) for row in csv.DictReader(f)]
    assert rows == [
        ("prior", "—"),
        ("manual", "—"),
        ("ptuning", "backbone.control=null"),
        ("ptuning", "backbone.control=rand_e"),
        ("ptuning", "backbone.control=rand_m"),
    ]
