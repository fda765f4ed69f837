"""SuperGLUE loaders and templates on real FewGLUE records, for causal and masked backbones."""

from __future__ import annotations

import pytest

from ptuning_lightning.launch.config import ROOT
from ptuning_lightning.superglue.tasks.boolq import BoolQDataModule
from ptuning_lightning.superglue.tasks.cb import CBDataModule
from ptuning_lightning.superglue.tasks.copa import COPADataModule
from ptuning_lightning.superglue.tasks.multirc import MultiRCDataModule
from ptuning_lightning.superglue.tasks.record import ReCoRDDataModule
from ptuning_lightning.superglue.tasks.rte import RTEDataModule
from ptuning_lightning.superglue.tasks.wic import WiCDataModule
from ptuning_lightning.superglue.tasks.wsc import WSCDataModule

FEWGLUE = ROOT / "data" / "fewglue"
TASKS = [
    BoolQDataModule,
    CBDataModule,
    COPADataModule,
    MultiRCDataModule,
    ReCoRDDataModule,
    RTEDataModule,
    WiCDataModule,
    WSCDataModule,
]


def check_example(example: dict, data, backbone) -> None:
    """Every candidate is read where its tokens are: after the text (causal) or at masks."""
    views = example["views"]
    mask = backbone.tokenizer.mask_token_id
    for seq, positions, tokens in views.candidates:
        ids = views.sequences[seq]["input_ids"]
        assert len(ids) <= data.template_tokenizer.max_length
        if backbone.kind == "causal":
            assert positions[0] == len(ids) - len(tokens)  # read before each answer token
            assert ids[positions[0] + 1 :] == tokens[:-1]
        else:
            assert [ids[p] for p in positions] == [mask] * len(tokens)
        prompt = [i for i in views.sequences[seq]["prompt_index"] if i >= 0]
        assert prompt == list(range(data.template.n_prompt))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.folder)
@pytest.mark.parametrize("manual", [False, True], ids=["ptuning", "manual"])
def test_task_reads_real_records(task, manual, backbone):
    data = task(backbone.tokenizer, backbone.kind, str(FEWGLUE), manual=manual)
    for split in ("train", "dev32"):
        examples = data.encode_file(FEWGLUE / task.folder / f"{split}.jsonl", split, limit=3)
        assert examples
        for example in examples:
            check_example(example, data, backbone)
            assert 0 <= example["label"] < len(example["views"].candidates)
    assert (data.template.n_prompt > 0) != manual
    text = backbone.tokenizer.decode(examples[0]["views"].sequences[0]["input_ids"])
    if data.verbalizer:  # the anchor text of every classification template
        anchor = "Answer" if manual or data.template_source.count("Answer") else "?"
        assert anchor in text


def test_every_template_id_parses(gpt2):
    for task in TASKS:
        for manual, table in ((False, task.templates), (True, task.manual_templates)):
            for number in table:
                key = "manual_template_id" if manual else "template_id"
                data = task(gpt2.tokenizer, "causal", str(FEWGLUE), manual=manual, **{key: number})
                assert (data.template.n_prompt == 0) == manual


def test_copa_connective_and_candidates(gpt2):
    data = COPADataModule(gpt2.tokenizer, "causal", str(FEWGLUE), manual=True, manual_template_id=1)
    record = {
        "premise": "The man fell.",
        "choice1": "He slipped.",
        "choice2": "He laughed.",
        "question": "cause",
        "label": 0,
    }
    (item,) = data.items(record, "here")
    assert item.inputs["connective"] == "because"
    assert item.candidates == ["he slipped", "he laughed"]


def test_wsc_marks_the_pronoun(gpt2):
    data = WSCDataModule(gpt2.tokenizer, "causal", str(FEWGLUE), manual=True)
    record = {
        "text": "Mark told Pete many lies about himself , which Pete included in his book .",
        "target": {"span1_text": "Mark", "span1_index": 0, "span2_text": "his", "span2_index": 12},
        "label": False,
    }
    (item,) = data.items(record, "here")
    assert "in *his* book" in item.inputs["text"]
    assert item.label == 1  # false -> "No", the second label


def test_multirc_groups_answers_by_question(gpt2):
    data = MultiRCDataModule(gpt2.tokenizer, "causal", str(FEWGLUE))
    examples = data.encode_file(FEWGLUE / "MultiRC" / "train.jsonl", "train", limit=1)
    assert len({e["group"] for e in examples}) < len(examples)


def test_record_candidates_and_golds(gpt2):
    data = ReCoRDDataModule(gpt2.tokenizer, "causal", str(FEWGLUE))
    assert data.splits["test"] == "dev32"  # no ReCoRD val in FewGLUE
    (example,) = data.encode_file(FEWGLUE / "ReCoRD" / "train.jsonl", "train", limit=1)
    assert example["candidate_em"][example["label"]] == 1.0
    assert max(example["candidate_f1"]) == 1.0
