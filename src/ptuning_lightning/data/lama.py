"""LAMA T-REx knowledge probing: one relation's train/dev/test facts, filtered as in the paper.

A fact (subject, object) is kept only if its object is in the chosen vocabulary (``29k``,
``34k`` or ``full``) and is a single token of the backbone's tokenizer as it appears in the
answer slot (with its leading space for byte-level BPE). The candidates are every vocabulary
word that is a single token; P@1 is the argmax over them at the answer position.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule

from ptuning_lightning.data.batching import SplitLoaders
from ptuning_lightning.data.jsonl import DataError, read_jsonl
from ptuning_lightning.templates import Template, TemplateTokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
VOCABS = {"29k": "29k-vocab.json", "34k": "34k-vocab.json", "full": None}


def lama_relations(data_root: str | Path) -> list[str]:
    """Relation ids that have T-REx splits under ``data_root`` (the 41 of the paper)."""
    trex = Path(data_root) / "trex"
    if not trex.is_dir():
        raise DataError(f"task.data_root: no LAMA T-REx folder at {trex}")
    return sorted(p.name for p in trex.iterdir() if p.is_dir())


def resolve_relations(spec: str | list[str], data_root: str | Path) -> list[str]:
    """``task.relation``: one id, a list of ids, or ``all``; unknown ids list the valid ones."""
    known = lama_relations(data_root)
    wanted = known if spec == "all" else [spec] if isinstance(spec, str) else list(spec)
    unknown = [r for r in wanted if r not in known]
    if unknown or not wanted:
        raise DataError(f"task.relation: unknown relation(s) {unknown}; valid: {', '.join(known)}")
    return wanted


@functools.lru_cache(maxsize=4)
def manual_templates(data_root: str) -> dict[str, str]:
    rows = read_jsonl(Path(data_root) / "relations.jsonl", required=("relation", "template"))
    return {r["relation"]: r["template"] for r in rows}


@functools.lru_cache(maxsize=4)
def vocabulary(data_root: str, vocab: str, key: str) -> list[str] | None:
    """The paper's word list (None for ``full``: every token is a candidate). The GPT-2 and
    RoBERTa lists are stored as byte-level BPE tokens ("ĠParis"); we return plain words."""
    if vocab not in VOCABS:
        raise DataError(f"task.vocab: unknown vocabulary {vocab!r}; choose from {list(VOCABS)}")
    if VOCABS[vocab] is None:
        return None
    path = Path(data_root) / "vocab" / VOCABS[vocab]
    lists = json.loads(path.read_text())
    if key not in lists:
        raise DataError(f"backbone.vocab_key: {key!r} is not in {path}; choose from {list(lists)}")
    return [w.removeprefix("Ġ") for w in lists[key]]


class LamaDataModule(SplitLoaders, LightningDataModule):
    """One LAMA relation, encoded with one template for one tokenizer."""

    def __init__(
        self,
        data_root: str,
        relation: str,
        tokenizer,
        model_kind: str,
        template: str | list[str] | None = None,
        template_weights: list[float] | None = None,
        vocab: str = "29k",
        vocab_key: str = "bert-base-cased",
        batch_size: int = 8,
        eval_batch_size: int = 64,
        max_length: int = 256,
        num_workers: int = 0,
        seed: int = 34,
        group_by_length: bool = False,
        sort_eval_by_length: bool = True,
    ) -> None:
        """``template=None`` uses the relation's manual template from ``relations.jsonl``. A
        list of templates is an ensemble (evaluation only): every fact is encoded with each
        (its ``views``) and the module averages their probabilities with ``template_weights``;
        the first template decides the answer slot's spacing, which all must share.
        ``group_by_length``: training batches of similar lengths (less padding, each example
        still once per epoch; batches differ from the plain shuffle's). ``sort_eval_by_length``:
        dev/test scored longest first (same P@1, less padding)."""
        super().__init__()
        self.data_root = Path(data_root)
        self.relation = resolve_relations(relation, data_root)[0]
        templates = [template] if template is None or isinstance(template, str) else template
        templates = [t or manual_templates(str(data_root))[self.relation] for t in templates]
        self.template_source = templates[0]
        self.encoders = [
            TemplateTokenizer(Template.parse(t), tokenizer, model_kind, max_length)
            for t in templates
        ]
        self.encoder = self.encoders[0]
        self.template = self.encoder.template  # as the model sees it (causal: nothing after [Y])
        self.template_weights = _ensemble_weights(templates, template_weights)
        for other in self.encoders[1:]:
            if other.template.answer_space != self.template.answer_space:
                raise DataError(
                    f"prompt ensemble: {other.template.source!r} spaces its answer slot unlike "
                    f"{self.template_source!r}, so their answer tokens differ"
                )
        self.vocab, self.vocab_key = vocab, vocab_key
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.group_by_length, self.sort_eval_by_length = group_by_length, sort_eval_by_length
        self.pad_id = tokenizer.pad_token_id
        self.datasets: dict[str, list[dict]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.candidate_ids, index = self._candidates()
        for split in SPLITS:
            path = self.data_root / "trex" / self.relation / f"{split}.jsonl"
            self.datasets[split] = self._encode(path, split, index)

    def _candidates(self) -> tuple[torch.Tensor, dict[int, int]]:
        words = vocabulary(str(self.data_root), self.vocab, self.vocab_key)
        if words is None:
            ids = list(range(len(self.encoder.tokenizer)))
        else:
            single = (self.encoder.answer_ids(w) for w in words)
            ids = list(dict.fromkeys(t[0] for t in single if len(t) == 1))
        return torch.tensor(ids), {token: i for i, token in enumerate(ids)}

    def _encode(self, path: Path, split: str, candidates: dict[int, int]) -> list[dict]:
        facts = read_jsonl(path, required=("sub", "obj"))
        words = vocabulary(str(self.data_root), self.vocab, self.vocab_key)
        allowed = None if words is None else set(words)
        in_vocab = facts if allowed is None else [f for f in facts if f["obj"] in allowed]
        examples = []
        for fact in in_vocab:
            answer = self.encoder.answer_ids(fact["obj"])
            if len(answer) != 1 or answer[0] not in candidates:
                continue
            views = [e.encode({"X": fact["sub"]}).fields() for e in self.encoders]
            examples.append(
                {
                    **views[0],
                    **({"views": views} if len(views) > 1 else {}),
                    "target_token": answer[0],
                    "target_index": candidates[answer[0]],
                    "index": len(examples),
                    "sub": fact["sub"],
                    "obj": fact["obj"],
                }
            )
        self.stats[split] = {
            "facts": len(facts),
            "dropped_not_in_vocab": len(facts) - len(in_vocab),
            "dropped_multi_token": len(in_vocab) - len(examples),
            "kept": len(examples),
        }
        log.info("%s %s: %s", self.relation, split, self.stats[split])
        if not examples:
            reason = (
                f"the {self.vocab} vocabulary filter"
                if not in_vocab
                else "the single-token filter (objects must be one token of the backbone)"
            )
            raise DataError(f"{path}: no facts left after {reason}; stats {self.stats[split]}")
        return examples


def _ensemble_weights(templates: list[str], weights: list[float] | None) -> list[float] | None:
    """Weights normalised to sum to one (None: a single template)."""
    if len(templates) == 1:
        return None
    weights = list(weights) if weights is not None else [1.0] * len(templates)
    if len(weights) != len(templates) or min(weights) < 0 or sum(weights) <= 0:
        raise DataError(
            f"prompt ensemble: {len(templates)} templates need as many non-negative weights "
            f"with a positive sum, got {weights}"
        )
    return [w / sum(weights) for w in weights]
