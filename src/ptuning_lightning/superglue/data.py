"""The shared FewGLUE / SuperGLUE DataModule: a task file only says how to read a record
(``items``), its templates and its verbalizer.

Splits follow the few-shot protocol: ``train`` (the 32 labelled examples), ``dev32`` (model
selection) and ``val`` (the SuperGLUE dev set, where results are reported). ReCoRD ships no
``val`` here, so its ``test_split`` is ``dev32``. ``data_root`` may point at full SuperGLUE
task folders instead (``train.jsonl``/``val.jsonl``; set ``dev_split: val`` there).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lightning.pytorch import LightningDataModule

from ptuning_lightning.data.batching import SplitLoaders
from ptuning_lightning.data.jsonl import DataError, read_jsonl_lines
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.templates import Template, TemplateTokenizer, slot_names
from ptuning_lightning.superglue.collate import collate_candidates
from ptuning_lightning.superglue.metrics import exact_match, token_f1
from ptuning_lightning.superglue.module import PriorModule
from ptuning_lightning.superglue.views import candidate_views

log = logging.getLogger(__name__)
SCORES = ("sum", "mean")


@dataclass
class Item:
    """One scored decision: slot values, candidate answers, the gold candidate's index."""

    inputs: dict[str, str]
    candidates: list[str]
    label: int
    group: int = -1  # MultiRC: the question the answer belongs to (EM per question)
    golds: list[str] = field(default_factory=list)  # ReCoRD: the gold answer texts


class SuperGlueDataModule(SplitLoaders, LightningDataModule):
    """One SuperGLUE task under one template. Subclasses set the class attributes and ``items``."""

    folder: ClassVar[str]  # the task's folder under data_root (e.g. "RTE")
    templates: ClassVar[dict[int, str]]  # P-Tuning templates (with [P] pseudo tokens)
    manual_templates: ClassVar[dict[int, str]]  # the same without pseudo tokens
    verbalizer: ClassVar[dict[str, str]] = {}  # label -> word; empty for choice tasks
    choice_labels: ClassVar[tuple[str, ...]] = ()  # choice tasks: the valid label values
    metrics: ClassVar[tuple[str, ...]] = ("acc",)  # what SuperGLUE reports for the task
    test_split_default: ClassVar[str] = "val"
    # slots that follow [Y] as context, which a causal LM does not see (ReCoRD's rest)
    after_answer: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        tokenizer,
        model_kind: str,
        data_root: str,
        name: str = "",
        template_id: int = 0,
        manual_template_id: int = 0,
        manual: bool = False,
        head: bool = False,
        template: str | None = None,
        verbalizer: dict[str, str] | None = None,
        label_score: str = "sum",
        train_split: str = "train",
        dev_split: str = "dev32",
        test_split: str | None = None,
        test_limit: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        max_length: int = 256,
        num_workers: int = 0,
        seed: int = 34,
        train: dict | None = None,
    ) -> None:
        """``manual`` picks ``manual_template_id`` from ``manual_templates`` (no pseudo tokens),
        else ``template_id`` from ``templates``; ``head``: a classifier reads the answers
        (fine-tuning), so a task without label words writes each candidate into the input
        (``candidate_views``' ``in_input``); ``template`` replaces the numbered one by any
        template over the task's slots; ``test_limit`` scores only the first n records of the
        test split (a documented subset for slow CPUs); ``train`` holds the task's optimisation
        settings, read by the runner."""
        super().__init__()
        if label_score not in SCORES:
            raise ValueError(f"task.label_score must be one of {SCORES}, got {label_score!r}")
        table = self.manual_templates if manual else self.templates
        number = manual_template_id if manual else template_id
        if template is None and number not in table:
            key = "manual_template_id" if manual else "template_id"
            raise ValueError(
                f"task.{key}: {self.folder} has no template id {number}; ids {list(table)}"
            )
        self.template_source = template or table[number]
        slots = slot_names(self.template_source)
        parsed = Template.parse(self.template_source, slots, self.after_answer)
        self.template_tokenizer = TemplateTokenizer(parsed, tokenizer, model_kind, max_length)
        self.template = (
            self.template_tokenizer.template
        )  # as the model sees it (causal: nothing after [Y])
        self.used_slots = [p.value for p in self.template.parts if p.kind == "slot"]
        self.words = dict(self.verbalizer) | self.checked_verbalizer(verbalizer or {})
        self.data_root = Path(data_root) / self.folder
        self.label_score = label_score
        self.candidates_in_input = head and not self.verbalizer
        self.splits = {
            "train": train_split,
            "dev": dev_split,
            "test": test_split or self.test_split_default,
        }
        self.test_limit = test_limit
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.pad_id = tokenizer.pad_token_id
        self.datasets: dict[str, list[dict]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def checked_verbalizer(self, words: dict[str, str]) -> dict[str, str]:
        """``task.verbalizer`` may only change the words of the task's labels: a label it does
        not know (a typo) would otherwise add a class no record has."""
        words = {str(label): word for label, word in words.items()}  # {0: No} from YAML
        if words and not self.verbalizer:
            raise ValueError(
                f"task.verbalizer: {self.folder} has no label words to override (its candidates "
                f"come from each record), got {words}"
            )
        unknown = [label for label in words if label not in self.verbalizer]
        if unknown:
            raise ValueError(
                f"task.verbalizer: {self.folder} has no label(s) {unknown}; "
                f"its labels: {list(self.verbalizer)}"
            )
        return words

    @property
    def labels(self) -> list[str]:
        """Label names in verbalizer order (candidate i of a classification task is label i)."""
        return list(self.words) if self.words else list(self.choice_labels)

    fields: ClassVar[tuple[str, ...]] = ()  # classification tasks: the record's text fields

    def items(self, record: dict, where: str) -> list[Item]:
        """The decisions of one record; ``where`` ("file, line n") is for error messages.
        By default one decision over the label words, the slots being the ``fields``."""
        missing = [k for k in self.fields if not isinstance(record.get(k), str)]
        if missing:
            raise DataError(f"{where}: missing or non-text field(s) {missing}")
        inputs = {k: self.clean(k, record[k]) for k in self.fields}
        return [Item(inputs, self.label_words(), self.label_index(record, where))]

    def clean(self, field: str, text: str) -> str:
        """A field's text as the template wants it (e.g. a question without its "?")."""
        return text

    def label_index(self, record: dict, where: str, key: str = "label") -> int:
        """The gold label's index; an unknown label names the place and the known labels."""
        value = record.get(key)
        name = str(value).lower() if isinstance(value, bool) else str(value)
        if name not in self.labels:
            raise DataError(f"{where}: unknown label {value!r}; known labels: {self.labels}")
        return self.labels.index(name)

    def label_words(self) -> list[str]:
        return [self.words[label] for label in self.labels]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, name in self.splits.items():
            limit = self.test_limit if split == "test" else None
            self.datasets[split] = self.encode_file(self.data_root / f"{name}.jsonl", split, limit)

    def encode_file(self, path: Path, split: str, limit: int | None = None) -> list[dict]:
        """The encoded examples of one task file (its first ``limit`` records)."""
        records = read_jsonl_lines(path)[:limit]
        examples, truncated = [], 0
        for number, record in records:
            for item in self.items(record, f"{path}, line {number}"):
                inputs = {s: item.inputs[s] for s in self.used_slots}
                views = candidate_views(
                    self.template_tokenizer, inputs, item.candidates, self.candidates_in_input
                )
                truncated += views.truncated
                examples.append(
                    {
                        "views": views,
                        "label": item.label,
                        "group": item.group,
                        "candidate_em": [_em(c, item.golds) for c in item.candidates],
                        "candidate_f1": [_f1(c, item.golds) for c in item.candidates],
                        "index": len(examples),
                    }
                )
        if not examples:
            raise DataError(f"{path}: no examples")
        self.stats[split] = {
            "records": len(records),
            "examples": len(examples),
            "truncated": truncated,
        }
        log.info("%s %s (%s): %s", self.folder, split, path.name, self.stats[split])
        return examples

    def prior_module(self, backbone: Backbone) -> PriorModule:
        """``prompt=prior``'s module: the majority training label (a task with fixed labels;
        ReCoRD's candidates are each record's own entities, so it has none)."""
        if not self.labels:
            raise ValueError(
                f"prompt=prior needs a task with fixed labels (it answers the most frequent "
                f"training label), not {self.folder}"
            )
        train = [example["label"] for example in self.datasets["train"]]
        return PriorModule(backbone, self.metrics, len(self.labels), train)

    def collate_fn(self):
        return functools.partial(collate_candidates, pad_id=self.pad_id, score=self.label_score)


def _em(candidate: str, golds: list[str]) -> float:
    return max((exact_match(candidate, g) for g in golds), default=0.0)


def _f1(candidate: str, golds: list[str]) -> float:
    return max((token_f1(candidate, g) for g in golds), default=0.0)
