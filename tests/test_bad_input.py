"""Bad input gets a clear error naming the config key, file or line, before training starts.

One test per row of the README's table "What bad input gets" (in its order); each asserts that
the message names what is at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from test_lama_data import FACTS, data_module, make_lama

from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.lama.data import LamaDataModule, resolve_relations, vocabulary
from ptuning_lightning.lama.run import build_relation
from ptuning_lightning.launch.builders import build_encoder
from ptuning_lightning.launch.config import CONFIG_DIR, ROOT
from ptuning_lightning.prompting.encoders import LSTMPromptEncoder
from ptuning_lightning.prompting.templates import Template, TemplateError
from ptuning_lightning.superglue.run import build_task, protocol_config
from ptuning_lightning.superglue.run import run_job as run_task
from ptuning_lightning.superglue.tasks.cb import CBDataModule
from ptuning_lightning.superglue.tasks.copa import COPADataModule
from ptuning_lightning.superglue.tasks.rte import RTEDataModule

FEWGLUE = ROOT / "data" / "fewglue"
HYDRA = {"return_hydra_config": True}  # the job's overrides, as ptl-train's job sees them
LAMA = ROOT / "data" / "lama"
RTE_RECORD = {"premise": "A dog runs.", "hypothesis": "An animal runs.", "label": "entailment"}


@pytest.fixture
def lama(tmp_path) -> Path:
    return make_lama(tmp_path)


# --- LAMA: relations and data files ----------------------------------------------------------


def test_unknown_relation_lists_valid_ones(tmp_path):
    """task.relation accepts one id, a list or ``all``; a typo lists the valid relations."""
    root = make_lama(tmp_path)
    (root / "trex" / "P7").mkdir()
    with pytest.raises(
        DataError, match=r"task\.relation: unknown relation\(s\) \['P1'\]; valid: P7, P99"
    ):
        resolve_relations(["P99", "P1"], root)
    assert resolve_relations("all", root) == ["P7", "P99"]
    assert resolve_relations("P99", root) == ["P99"]


def test_missing_data_root(tmp_path):
    """A data_root without trex/ is reported as such, not as an unknown relation."""
    with pytest.raises(DataError, match=r"task\.data_root: no LAMA T-REx folder"):
        resolve_relations("P99", tmp_path)


def test_relation_missing_from_relations_jsonl(tmp_path, gpt2):
    """A relation folder that relations.jsonl lacks: the manual prompt names the file and the
    relation; a P-Tuning template does not need the manual one and still works."""
    root = make_lama(tmp_path, relation="P99")
    (root / "relations.jsonl").write_text(json.dumps({"relation": "P7", "template": "[X] [Y]"}))
    with pytest.raises(DataError) as err:
        data_module(root, gpt2)
    assert f"{root / 'relations.jsonl'}: no manual template for relation 'P99'" in str(err.value)
    assert data_module(root, gpt2, template="[P] [X] [P] [Y]").stats["test"]["kept"] == 2


def test_missing_split_file_is_named(tmp_path, gpt2):
    """A relation folder without one of its splits names the missing file."""
    root = make_lama(tmp_path, facts={"train": FACTS["train"], "dev": FACTS["dev"]})
    with pytest.raises(DataError, match=r"data file not found: .*P99/test\.jsonl"):
        data_module(root, gpt2)


@pytest.mark.parametrize(
    ("dev", "message"),
    [
        ('{"sub": "A", "obj": "Paris"}\n{"sub": "B", "obj": \n', "line 2: malformed JSON"),
        ('{"sub": "A", "obj": "Paris"}\n\n{"sub": "B"}\n', "line 3: missing field(s) ['obj']"),
        ('["A", "Paris"]\n', "line 1: expected a JSON object"),
        ('{"sub": "A", "obj": "Paris"}\n{"sub": null, "obj": "France"}\n', "line 2: 'sub'"),
        ('{"sub": "A", "obj": ""}\n', "line 1: 'obj' must be a non-empty string, got ''"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, gpt2, dev, message):
    """Broken data points at the exact file and line (blank lines still count); a fact whose
    subject or object is null or empty is refused there, not deep in the tokenizer."""
    root = make_lama(tmp_path, facts={**FACTS, "dev": dev})
    with pytest.raises(DataError) as err:
        data_module(root, gpt2)
    assert str(root / "trex" / "P99" / "dev.jsonl") in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("objects", "reason"),
    [
        (["Tokyo", "Rome"], "the 29k vocabulary filter"),
        (["Shire", "Gondor", "Tokyo"], "the single-token filter"),
    ],
)
def test_no_facts_left_names_the_filter(tmp_path, backbone, objects, reason):
    """A split emptied by filtering says which filter emptied it and the counts."""
    facts = {**FACTS, "test": [(f"S{i}", o) for i, o in enumerate(objects)]}
    root = make_lama(tmp_path, facts=facts)
    with pytest.raises(DataError, match="no facts left") as err:
        data_module(root, backbone)
    assert reason in str(err.value)
    assert "test.jsonl" in str(err.value)
    assert f"'facts': {len(objects)}" in str(err.value)


# --- LAMA: vocabularies ----------------------------------------------------------------------


def test_unknown_vocabulary_name(lama, gpt2):
    """task.vocab must be one of the known lists; the error names them."""
    with pytest.raises(DataError, match=r"task\.vocab: unknown vocabulary '40k'; choose from"):
        data_module(lama, gpt2, vocab="40k")


def test_unknown_vocabulary_key(lama, gpt2):
    """backbone.vocab_key must be a list in the vocabulary file; the error names the file."""
    with pytest.raises(DataError, match=r"backbone\.vocab_key: 'roberta-large' is not in .*29k"):
        data_module(lama, gpt2, vocab_key="roberta-large")


def test_missing_vocabulary_file(lama, gpt2):
    (lama / "vocab" / "29k-vocab.json").unlink()
    with pytest.raises(DataError) as err:
        data_module(lama, gpt2)
    path = lama / "vocab" / "29k-vocab.json"
    assert f"task.vocab: vocabulary file not found: {path}" in str(err.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"gpt2-xl": ["ĠParis"', "is not valid JSON"),
        ('["Paris"]', "must hold a JSON object of word lists"),
        ('{"gpt2-xl": "Paris"}', "'gpt2-xl' must be a list of words"),
    ],
)
def test_corrupt_vocabulary_file(lama, gpt2, text, problem):
    path = lama / "vocab" / "29k-vocab.json"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        data_module(lama, gpt2)
    assert f"task.vocab: {path}" in str(err.value)
    assert problem in str(err.value)


@pytest.mark.parametrize("key", ["gpt2-xl", "roberta-large"])
def test_34k_where_it_is_the_29k_list(gpt2, key):
    """LAMA-34k extends only BERT's lists: for GPT-2 and RoBERTa the file holds the 29k words
    again, so task.vocab=34k would silently be 29k; bert-base-cased gets its 21,035 words."""
    data = LamaDataModule(str(LAMA), "P1376", gpt2.tokenizer, "causal", vocab="34k", vocab_key=key)
    with pytest.raises(DataError) as err:
        data.setup()
    assert f"task.vocab=34k: the 34k list of backbone.vocab_key {key!r} is the 29k" in str(
        err.value
    )
    assert len(vocabulary(str(LAMA), "34k", "bert-base-cased")) == 21035
    assert len(vocabulary(str(LAMA), "29k", "bert-base-cased")) == 18154


# --- templates and prompts (config keys) -----------------------------------------------------


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("[X] is the capital.", "needs exactly one answer slot [Y]"),
        ("The capital is [Y].", "has no input slot [X]"),
        ("[X] [FOO] [Y]", "unknown part [FOO]"),
        ("[X] [P*0] [Y]", "[P*0] needs at least one token"),
        ("[Y] is the capital of [X] .", "a causal LM needs context before [Y]"),
    ],
)
def test_bad_prompt_template_names_the_template(tmp_path, compose_cfg, gpt2, template, problem):
    """prompt.template is checked when the job builds its data, before any training (Hydra's
    instantiate wraps the TemplateError; its message is kept)."""
    cfg = compose_cfg("train", tmp_path, ["task.relation=P1376", f"prompt.template='{template}'"])
    with pytest.raises(InstantiationException) as err:
        build_relation(cfg, gpt2)
    assert f'TemplateError("template {template!r}' in str(err.value)
    assert problem in str(err.value)


def test_template_longer_than_max_length(tmp_path, compose_cfg, gpt2):
    cfg = compose_cfg("train", tmp_path, ["task.relation=P1376", "task.max_length=4"])
    with pytest.raises(TemplateError, match=r"leaves -?\d+ tokens .* raise max_length"):
        build_relation(cfg, gpt2)


def test_manual_init_without_relation_words(tmp_path, compose_cfg, gpt2):
    """encoder.init_words=manual on a relation whose manual template has no words between
    [X] and [Y]: the template is named."""
    cfg = compose_cfg("train", tmp_path, ["encoder.init_words=manual"])
    with pytest.raises(TemplateError, match=r"'\[X\] \[Y\] \.' has no words between"):
        build_encoder(cfg.encoder, Template.parse("[P*3] [X] [Y]"), gpt2, manual="[X] [Y] .")


def test_unknown_start(tmp_path, compose_cfg, gpt2):
    """A misspelt encoder.init_words would otherwise start the prompt at its letters."""
    cfg = compose_cfg("train", tmp_path, ["encoder.init_words=manual_algined"])
    with pytest.raises(ValueError, match="init_words=manual_algined: give one of manual, "):
        build_encoder(cfg.encoder, Template.parse("[P*3] [X] [Y]"), gpt2, manual="[X] is [Y] .")


@pytest.mark.parametrize("prompt", ["discrete", "lpaqa", "autoprompt_published", "exported"])
def test_template_of_a_prompt_that_brings_its_own(tmp_path, compose_cfg, gpt2, prompt):
    """prompt=discrete (LPAQA, AutoPrompt's published triggers) and prompt=exported take their
    templates from prompt.source / prompt.path: a prompt.template would be silently ignored."""
    overrides = [f"prompt={prompt}", "task.relation=P1376", "prompt.template='[X] in [Y] .'"]
    overrides += ["prompt.path=unused"] if prompt == "exported" else []
    cfg = compose_cfg("train", tmp_path, overrides)
    with pytest.raises(
        ValueError, match=rf"prompt\.template is not used by prompt={cfg.prompt.name}"
    ):
        build_relation(cfg, gpt2)


def test_unknown_prompt_source(tmp_path, compose_cfg, gpt2):
    cfg = compose_cfg("train", tmp_path, ["prompt=discrete", "prompt.source=lpaqa_typo"])
    with pytest.raises(DataError, match=r"prompt\.source: unknown source 'lpaqa_typo'"):
        build_relation(cfg, gpt2)


def test_ensemble_of_a_single_prompt_source(tmp_path, compose_cfg, gpt2):
    cfg = compose_cfg("train", tmp_path, ["prompt=autoprompt_published", "prompt.top_k=5"])
    with pytest.raises(DataError, match=r"prompt\.top_k=5: must be 1, or more for an LPAQA"):
        build_relation(cfg, gpt2)


def test_unknown_loss_over(tmp_path, compose_cfg, gpt2):
    cfg = compose_cfg("train", tmp_path, ["task.relation=P1376", "prompt.loss_over=vocabulary"])
    with pytest.raises(ValueError, match=r"prompt\.loss_over must be one of .*'vocabulary'"):
        build_relation(cfg, gpt2)


# --- encoders and batches --------------------------------------------------------------------


def test_odd_lstm_hidden_size(tmp_path, compose_cfg, gpt2):
    """The bi-LSTM has hidden_size/2 per direction: an odd size is refused when the encoder is
    built (Hydra's instantiate wraps the ValueError), not by a shape error at the first
    forward."""
    cfg = compose_cfg("train", tmp_path, ["task.relation=P1376", "encoder.hidden_size=63"])
    with pytest.raises(InstantiationException, match=r"encoder\.hidden_size must be even .* 63"):
        build_relation(cfg, gpt2)
    assert LSTMPromptEncoder(3, 8, hidden_size=62)().shape == (3, 8)


def test_global_batch_must_divide_by_the_world_size():
    """task.batch_size is global: 8 over 3 processes is an error naming both."""
    data = LamaDataModule.__new__(LamaDataModule)
    data.datasets, data.batch_size, data.seed = {"train": [{}] * 10}, 8, 34
    data.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ValueError, match=r"task\.batch_size=8 .* world size 3"):
        data.train_dataloader()


# --- SuperGLUE ------------------------------------------------------------------------------


def rte_folder(root: Path, *records: dict) -> Path:
    folder = root / "RTE"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_unknown_label_names_file_line_and_labels(tmp_path, gpt2):
    bad = RTE_RECORD | {"hypothesis": "A cat runs.", "label": "contradiction"}
    folder = rte_folder(tmp_path, RTE_RECORD, bad)
    data = RTEDataModule(gpt2.tokenizer, "causal", str(tmp_path))
    with pytest.raises(DataError) as err:
        data.encode_file(folder / "train.jsonl", "train")
    message = str(err.value)
    assert f"{folder / 'train.jsonl'}, line 2" in message
    assert "'contradiction'" in message
    assert "['entailment', 'not_entailment']" in message


@pytest.mark.parametrize("record", [{"premise": "A dog runs."}, RTE_RECORD | {"hypothesis": None}])
def test_missing_superglue_field_names_file_and_line(tmp_path, gpt2, record):
    folder = rte_folder(tmp_path, RTE_RECORD, record | {"label": "entailment"})
    data = RTEDataModule(gpt2.tokenizer, "causal", str(tmp_path))
    with pytest.raises(DataError) as err:
        data.encode_file(folder / "train.jsonl", "train")
    assert f"{folder / 'train.jsonl'}, line 2: missing or non-text field(s) ['hypothesis']" in str(
        err.value
    )


def test_verbalizer_label_typo(gpt2):
    """A typo in task.verbalizer would add a class no record has (and leave the real label's
    word as it was): refused, with the task's labels."""
    with pytest.raises(ValueError) as err:
        CBDataModule(gpt2.tokenizer, "causal", str(FEWGLUE), verbalizer={"neutrl": "Perhaps"})
    assert "task.verbalizer: CB has no label(s) ['neutrl']" in str(err.value)
    assert "['entailment', 'contradiction', 'neutral']" in str(err.value)
    data = CBDataModule(gpt2.tokenizer, "causal", str(FEWGLUE), verbalizer={"neutral": "Perhaps"})
    assert data.labels == ["entailment", "contradiction", "neutral"]
    assert data.label_words() == ["Yes", "No", "Perhaps"]


def test_verbalizer_of_a_choice_task(gpt2):
    with pytest.raises(ValueError, match=r"task\.verbalizer: COPA has no label words"):
        COPADataModule(gpt2.tokenizer, "causal", str(FEWGLUE), verbalizer={"0": "A"})


def test_unknown_template_id_lists_the_ids(gpt2):
    with pytest.raises(
        ValueError, match=r"task\.template_id: RTE has no template id 9; ids \[0, 1, 2\]"
    ):
        RTEDataModule(gpt2.tokenizer, "causal", str(FEWGLUE), template_id=9)


def test_unknown_label_score(gpt2):
    with pytest.raises(ValueError, match=r"task\.label_score must be one of .*'max'"):
        RTEDataModule(gpt2.tokenizer, "causal", str(FEWGLUE), label_score="max")


def test_lama_prompt_on_a_superglue_task(tmp_path, compose_cfg, gpt2):
    cfg = compose_cfg("train", tmp_path, ["task=rte", "prompt=mixed"])
    with pytest.raises(ValueError, match="prompt=mixed does not apply to SuperGLUE tasks"):
        build_task(cfg, gpt2)


def test_manual_start_words_on_a_superglue_task(tmp_path, monkeypatch):
    """encoder.init_words=manual means a LAMA relation's words, which a SuperGLUE template
    lacks: given on the command line it is refused before the backbone loads; left at the
    encoder's default, the SuperGLUE job starts at random and its config says so."""
    monkeypatch.setattr("ptuning_lightning.superglue.run.load_backbone", lambda cfg: 1 / 0)
    overrides = ["task=rte", "prompt=ptuning", "logger=none", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = compose("train", overrides=overrides)
        cfg = compose("train", overrides=[*overrides, "encoder.init_words=manual"], **HYDRA)
    assert default.encoder.init_words == "manual"  # the encoder config's (LAMA's) default
    assert protocol_config(default, tmp_path).encoder.init_words is None
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(ValueError, match=r"SuperGLUE templates \(task=rte\) have none"):
            run_task(cfg, tmp_path, 0.0)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(
    ("override", "instead"),
    [
        ("optimizer.lr=1e-3", "set task.train.lr"),
        ("prompt.backbone_lr=1e-4", "set task.train.backbone_lr"),
        ("scheduler.gamma=0.5", "the learning rate is constant over task.train.max_steps"),
    ],
)
def test_lama_optimisation_setting_on_a_superglue_task(tmp_path, monkeypatch, override, instead):
    """SuperGLUE's learning rates are per task (task.train.lr, task.train.backbone_lr) and
    constant: the LAMA keys would be silently ignored, so the job refuses them at once, before
    it loads the backbone."""

    def no_backbone(cfg):
        raise AssertionError("the backbone was loaded: the setting was not refused")

    monkeypatch.setattr("ptuning_lightning.superglue.run.load_backbone", no_backbone)
    overrides = ["task=rte", "prompt=ptuning_finetune", "logger=none", override]
    overrides.append(f"paths.output_dir={tmp_path}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what ptl-train's job sees
    try:
        with pytest.raises(ValueError) as err:
            run_task(cfg, tmp_path, 0.0)
    finally:
        HydraConfig.instance().cfg = None
    key = override.split("=")[0]
    assert f"{key} is not used by SuperGLUE tasks (task=rte); {instead}" in str(err.value)
