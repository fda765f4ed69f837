"""End to end through the Hydra configs: ptl-train on one LAMA relation, ptl-eval of the exported
prompt, and resuming an interrupted run."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ptuning_lightning.job import run
from ptuning_lightning.lama.run import build_relation, for_relation
from ptuning_lightning.launch.builders import build_trainer
from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.prompting.encoders import LSTMPromptEncoder

LAMA = ROOT / "data" / "lama"
RELATION = "P1376"
PAPER = "[P*3] [X] [P*3] [Y] [P*3]"
SEEN_PSEUDO_TOKENS = {"tiny-gpt2": 6, "tiny-bert": 9}  # causal LMs drop the [P*3] after [Y]


# A short word list for P1376: with 12 candidates even a random tiny model scores well above
# zero, so comparing the P@1 of training and evaluation runs is not comparing zeros.
FEW_WORDS = [
    "Japan",
    "Taiwan",
    "Santiago",
    "England",
    "Victoria",
    "Alabama",
    "Greece",
    "Georgia",
    "Indonesia",
    "Serbia",
    "Punjab",
    "Venezuela",
]

# Learn something in one epoch (no warmup), and keep the first of tied dev scores, so that the
# dev-selected prompt is an early one and differs from the final one.
LEARN = ("optimizer.lr=0.01", "prompt.loss_over=candidates", "warmup=null", "ties_improve=false")
EPOCHS = 3
# A second checkpoint callback that keeps every epoch's weights (the final ones included).
EVERY_EPOCH = (
    "+callbacks.every_epoch._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "+callbacks.every_epoch.save_top_k=-1",
)


def train(
    compose_cfg, out: Path, backbone: str, prompt: str, *overrides: str, epochs: int = 1
) -> dict:
    """ptl-train for ``epochs`` epochs on P1376; returns its results.json."""
    run(
        compose_cfg(
            "train",
            out,
            [
                f"backbone={backbone}",
                f"prompt={prompt}",
                f"task.relation={RELATION}",
                f"trainer.max_epochs={epochs}",
                *overrides,
            ],
        )
    )
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def few_words_lama(tmp_path_factory) -> Path:
    """The bundled LAMA data with the 29k word list replaced by FEW_WORDS."""
    root = tmp_path_factory.mktemp("lama")
    (root / "trex").mkdir()
    (root / "trex" / RELATION).symlink_to(LAMA / "trex" / RELATION)
    (root / "relations.jsonl").symlink_to(LAMA / "relations.jsonl")
    (root / "vocab").mkdir()
    lists = {"bert-base-cased": FEW_WORDS, "gpt2-xl": ["Ġ" + w for w in FEW_WORDS]}
    (root / "vocab" / "29k-vocab.json").write_text(json.dumps(lists))
    return root


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-bert"])
def ptuning_run(request, tmp_path_factory, compose_cfg, few_words_lama):
    """One P-Tuning run per tiny backbone, then ptl-eval of the prompt it exported."""
    out, data = tmp_path_factory.mktemp(request.param), f"task.data_root={few_words_lama}"
    every_epoch = f"+callbacks.every_epoch.dirpath={out / 'every_epoch'}"
    overrides = (data, *LEARN, *EVERY_EPOCH, every_epoch)
    results = train(compose_cfg, out / "train", request.param, "ptuning", *overrides, epochs=EPOCHS)
    overrides = [
        f"backbone={request.param}",
        "prompt=exported",
        f"prompt.path={out / 'train'}",
        f"task.relation={RELATION}",
        data,
    ]
    run(compose_cfg("eval", out / "eval", overrides))
    evaluated = json.loads((out / "eval" / "results.json").read_text())
    return request.param, out, results, evaluated


def assert_scores(result: dict) -> None:
    """P@1 values are shares, and the filter counts of every split add up."""
    assert 0.0 <= result["dev_p1"] <= 1.0
    assert 0.0 <= result["test_p1"] <= 1.0
    assert set(result["filter"]) == {"train", "dev", "test"}
    for counts in result["filter"].values():
        dropped = counts["dropped_not_in_vocab"] + counts["dropped_multi_token"]
        assert counts["facts"] == dropped + counts["kept"] and counts["kept"] > 0


def test_train_writes_results(ptuning_run):
    """results.json holds per-relation P@1, filter counts and the macro average (one relation:
    its own scores, the seen / unseen split too)."""
    name, _, results, _ = ptuning_run
    assert (results["method"], results["backbone"]) == ("ptuning", name)
    assert results["encoder"] == "LSTMPromptEncoder"
    relation = results["relations"][RELATION]
    assert_scores(relation)
    assert relation["template"] == PAPER
    assert relation["epochs"] == EPOCHS
    assert relation["filter"]["train"]["facts"] == 248  # every line of train.jsonl is read
    assert [relation["filter"][s]["kept"] for s in ("train", "dev", "test")] == [20, 7, 20]
    split = ("test_seen_p1", "test_seen_n", "test_unseen_p1", "test_unseen_n")
    assert results["macro"] == {key: relation[key] for key in ("dev_p1", "test_p1", *split)}


def checkpoint_prompt(path: Path, name: str) -> tuple[int, torch.Tensor]:
    """(epoch, encoder output) of a checkpoint: the encoder rebuilt from its state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    encoder = LSTMPromptEncoder(SEEN_PSEUDO_TOKENS[name], 64)  # encoder=lstm on hidden size 64
    state = checkpoint["state_dict"]
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
    with torch.no_grad():
        return checkpoint["epoch"], encoder()


def test_exported_prompt_is_the_best_checkpoint(ptuning_run):
    """prompt.pt holds the encoder output of the dev-selected checkpoint, not the final one,
    one row per pseudo token the backbone sees, tagged with its template, relation, backbone
    and model kind. Dev P@1 peaks in the first epoch in these runs, so best and final differ
    (``EVERY_EPOCH`` keeps the final epoch's weights)."""
    name, out, _, _ = ptuning_run
    exported = torch.load(out / "train" / RELATION / "prompt.pt", weights_only=True)
    assert (exported["template"], exported["backbone"]) == (PAPER, name)
    assert (exported["trained_for"], exported["n_prompt"]) == (RELATION, SEEN_PSEUDO_TOKENS[name])
    assert exported["kind"] == {"tiny-gpt2": "causal", "tiny-bert": "masked"}[name]
    best_epoch, best = checkpoint_prompt(
        out / "train" / RELATION / "checkpoints" / "best.ckpt", name
    )
    (last,) = (out / "every_epoch").glob(f"epoch={EPOCHS - 1}-*.ckpt")  # Lightning's name
    final_epoch, final = checkpoint_prompt(last, name)
    assert best_epoch < final_epoch == EPOCHS - 1
    assert (best - final).abs().max() > 1e-2  # training went on after the best epoch
    torch.testing.assert_close(exported["embeddings"], best, rtol=0, atol=1e-6)


def test_eval_of_exported_prompt_reproduces_training_scores(ptuning_run):
    """ptl-eval prompt=exported gives exactly the dev and test P@1 the training run reported."""
    _, _, results, evaluated = ptuning_run
    trained, again = results["relations"][RELATION], evaluated["relations"][RELATION]
    assert evaluated["method"] == "exported"
    assert again["template"] == PAPER  # read from prompt.pt
    assert again["test_p1"] == trained["test_p1"] > 0
    assert again["dev_p1"] == trained["dev_p1"] > 0
    assert again["filter"] == trained["filter"]


def test_eval_refuses_the_prompt_of_another_relation(ptuning_run, tmp_path, compose_cfg):
    """P1376's prompt.pt scored on P36 (ptl-eval with a prompt file and another
    task.relation) stops before any scoring, naming both relations."""
    name, out, _, _ = ptuning_run
    overrides = [
        f"backbone={name}",
        "prompt=exported",
        f"prompt.path={out / 'train' / RELATION / 'prompt.pt'}",
        "task.relation=[P36]",
    ]
    with pytest.raises(ValueError, match=r"task\.relation\) is 'P1376', not 'P36'"):
        run(compose_cfg("eval", tmp_path, overrides))


def test_checkpoints_hold_kilobytes(ptuning_run):
    """Checkpoints hold the prompt encoder only, never the frozen backbone."""
    _, out, _, _ = ptuning_run
    checkpoints = sorted((out / "train" / RELATION / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["best.ckpt", "last.ckpt"]
    assert all(p.stat().st_size < 1_000_000 for p in checkpoints)


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "tiny-bert"])
def test_manual_prompt_is_evaluated_not_trained(tmp_path, compose_cfg, backbone):
    """A template without pseudo tokens is scored as is: no training, nothing exported."""
    results = train(compose_cfg, tmp_path, backbone, "manual")
    relation = results["relations"][RELATION]
    assert results["method"] == "manual"
    assert relation["template"] == "[X] is the capital of [Y] ."  # relations.jsonl
    assert "epochs" not in relation
    assert_scores(relation)
    assert not (tmp_path / RELATION / "prompt.pt").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


# --- resume ------------------------------------------------------------------------------


def fit(compose_cfg, out: Path, epochs: int, backbone, resume: Path | None = None) -> dict:
    """What ptl-train does for one relation, plus ``Trainer.fit(ckpt_path=resume)``; returns the
    final encoder weights. A large learning rate makes every step count."""
    cfg = compose_cfg(
        "train",
        out,
        [
            "backbone=tiny-gpt2",
            f"task.relation={RELATION}",
            f"trainer.max_epochs={epochs}",
            "optimizer.lr=0.01",
            "task.batch_size=16",
        ],
    )
    cfg = for_relation(cfg, RELATION)  # its checkpoints: <out>/<relation>/checkpoints
    module, data = build_relation(cfg, backbone)
    build_trainer(cfg).fit(module, data, ckpt_path=resume)
    return {k: v.clone() for k, v in module.encoder.state_dict().items()}


def test_resumed_run_matches_uninterrupted_run(tmp_path, compose_cfg, gpt2):
    """Stopping after epoch 1 and resuming from last.ckpt ends with the same prompt encoder as
    training two epochs in one go (same data order, optimizer and scheduler state)."""
    straight = fit(compose_cfg, tmp_path / "straight", 2, gpt2)
    first = fit(compose_cfg, tmp_path / "resumed", 1, gpt2)
    last = tmp_path / "resumed" / RELATION / "checkpoints" / "last.ckpt"
    resumed = fit(compose_cfg, tmp_path / "resumed", 2, gpt2, resume=last)
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.allclose(resumed[key], value, rtol=1e-6, atol=1e-7), key
    # the second epoch moved the weights, so the comparison above is not vacuous
    assert not torch.allclose(first["embedding.weight"], straight["embedding.weight"], atol=1e-4)


def eval_mode_warnings(call: Callable[[], object]) -> list[str]:
    """The warnings about modules in eval mode that ``call`` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "in eval mode" in str(w.message)]


def test_ptl_train_silences_lightnings_eval_mode_warning(tmp_path, compose_cfg, gpt2):
    """The frozen backbone stays in eval mode on purpose, which Lightning flags at every fit as
    possibly unintended. A bare ``Trainer.fit`` still shows that warning (so the filter's
    pattern still matches Lightning's words); ptl-train does not."""
    bare = eval_mode_warnings(lambda: fit(compose_cfg, tmp_path / "bare", 1, gpt2))
    assert len(bare) == 1 and bare[0].startswith("Found ")
    run_dir, overrides = tmp_path / "run", ("trainer.max_steps=2",)
    ours = eval_mode_warnings(
        lambda: train(compose_cfg, run_dir, "tiny-gpt2", "ptuning", *overrides)
    )
    assert ours == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_steps", "4", 4),
        ("limit_train_batches", "2", 2),
        ("limit_val_batches", "0.5", 0.5),
        ("limit_test_batches", "3", 3),
        ("precision", "bf16-mixed", "bf16-mixed"),
        ("accumulate_grad_batches", "2", 2),
        ("gradient_clip_val", "0.5", 0.5),
        ("val_check_interval", "0.25", 0.25),
        ("num_sanity_val_steps", "0", 0),
    ],
)
def test_common_trainer_options_need_no_plus(tmp_path, compose_cfg, key, value, expected):
    """trainer.KEY=VALUE (no `+`) reaches Lightning's Trainer."""
    cfg = compose_cfg("train", tmp_path, ["backbone=tiny-gpt2", f"trainer.{key}={value}"])
    assert getattr(build_trainer(cfg), key) == expected


def test_progress_bar_off_drops_the_progress_bar_callback(tmp_path, compose_cfg):
    """trainer.enable_progress_bar=false alone turns the configured bar off (Lightning
    refuses a bar callback with it)."""
    overrides = ["backbone=tiny-gpt2", "trainer.enable_progress_bar=false"]
    overrides.append("+callbacks.progress_bar._target_=lightning.pytorch.callbacks.RichProgressBar")
    trainer = build_trainer(compose_cfg("train", tmp_path, overrides))
    assert trainer.progress_bar_callback is None


@pytest.mark.parametrize("one_pass", [False, True], ids=["relation", "one_pass"])
def test_max_steps_and_accumulation_take_effect(tmp_path, compose_cfg, one_pass):
    """3 optimizer steps of 2 accumulated batches each: 6 of P1376's 13 batches, so the run
    stops inside its first epoch (before any dev evaluation: the final prompt is scored and
    exported), and dev and test are cut to one batch of 8."""
    relations = "task.relation=[P1376,P36]" if one_pass else f"task.relation={RELATION}"
    overrides = [
        "backbone=tiny-gpt2",
        relations,
        f"multi_relation={str(one_pass).lower()}",
        "trainer.max_steps=3",
        "trainer.accumulate_grad_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "task.eval_batch_size=8",
    ]
    run(compose_cfg("train", tmp_path, overrides))
    results = json.loads((tmp_path / "results.json").read_text())["relations"]
    folder = "one_pass" if one_pass else RELATION
    last = torch.load(tmp_path / folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 6
    if not one_pass:
        assert results[RELATION]["dev_n"] == results[RELATION]["test_n"] == 8
    else:  # one batch of 8 mixes both relations' facts
        assert sum(r["dev_n"] for r in results.values()) == 8
    for i, relation in enumerate(results):  # the exported prompt is the final one
        prefix = f"encoder.{i}." if one_pass else "encoder."
        encoder = LSTMPromptEncoder(SEEN_PSEUDO_TOKENS["tiny-gpt2"], 64)
        encoder.load_state_dict(
            {
                k.removeprefix(prefix): v
                for k, v in last["state_dict"].items()
                if k.startswith(prefix)
            }
        )
        exported = torch.load(tmp_path / relation / "prompt.pt", weights_only=True)
        with torch.no_grad():
            assert torch.allclose(exported["embeddings"], encoder(), rtol=0, atol=1e-6)


def test_superglue_refuses_trainer_options_its_protocol_sets(tmp_path, compose_cfg):
    """The few-shot protocol takes its step budget from task.train.max_steps: trainer.max_steps
    would be replaced without a word, so it is refused, naming both keys."""
    cfg = compose_cfg("train", tmp_path, ["backbone=tiny-gpt2", "task=cb", "trainer.max_steps=4"])
    with pytest.raises(ValueError, match=r"trainer\.max_steps=4: .*task\.train\.max_steps"):
        run(cfg)
