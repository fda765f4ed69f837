"""LAMA T-REx knowledge probing: one relation's train/dev/test facts, filtered as in the paper.

A fact (subject, object) is kept only if its object is in the chosen vocabulary (``29k``,
``34k`` or ``full``) and is a single token of the backbone's tokenizer as it appears in the
answer slot (with its leading space for byte-level BPE). The candidates are every vocabulary
word that is a single token; P@1 is the argmax over them at the answer position.

``subset=uhn`` scores only the test facts of LAMA-UHN (``uhn.py``); training and dev facts
stay whole, so the prompt is the one ``subset=null`` trains and selects.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule

from ptuning_lightning.data.batching import SplitLoaders
from ptuning_lightning.data.jsonl import DataError, read_jsonl, read_jsonl_lines
from ptuning_lightning.lama.module import PriorModule
from ptuning_lightning.lama.uhn import SUBSETS, TopWords, uhn_filter
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.templates import Template, TemplateTokenizer

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


def manual_template(data_root: str | Path, relation: str) -> str:
    """The relation's manual template; a relation folder that ``relations.jsonl`` lacks is
    named with the file (prompts that need no manual template never ask for it)."""
    templates = manual_templates(str(data_root))
    if relation not in templates:
        raise DataError(
            f"{Path(data_root) / 'relations.jsonl'}: no manual template for relation "
            f'{relation!r} (its folder is under trex/, but the file has no such "relation")'
        )
    return templates[relation]


@functools.lru_cache(maxsize=4)
def vocabulary(data_root: str, vocab: str, key: str) -> list[str] | None:
    """The paper's word list (None for ``full``: every token is a candidate). The GPT-2 and
    RoBERTa lists are stored as byte-level BPE tokens ("ĠParis"); we return plain words.

    LAMA-34k extends the shared 29k list with BERT's own words only: for the other keys
    (``gpt2-xl``, ``roberta-large``) the 34k file holds the 29k list again, so ``34k`` is
    refused there rather than silently giving the 29k facts under another name."""
    if vocab not in VOCABS:
        raise DataError(f"task.vocab: unknown vocabulary {vocab!r}; choose from {list(VOCABS)}")
    if VOCABS[vocab] is None:
        return None
    words = _word_list(Path(data_root) / "vocab" / VOCABS[vocab], key)
    if vocab == "34k" and set(words) == set(
        _word_list(Path(data_root) / "vocab" / VOCABS["29k"], key)
    ):
        raise DataError(
            f"task.vocab=34k: the 34k list of backbone.vocab_key {key!r} is the 29k list "
            f"(LAMA-34k extends only the BERT vocabularies); use task.vocab=29k or full"
        )
    return words


def _word_list(path: Path, key: str) -> list[str]:
    """One model family's words from a vocabulary file (a JSON object: key -> word list)."""
    if not path.is_file():
        raise DataError(f"task.vocab: vocabulary file not found: {path}")
    try:
        lists = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"task.vocab: {path} is not valid JSON ({err})") from None
    if not isinstance(lists, dict):
        raise DataError(f"task.vocab: {path} must hold a JSON object of word lists")
    if key not in lists:
        raise DataError(f"backbone.vocab_key: {key!r} is not in {path}; choose from {list(lists)}")
    words = lists[key]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise DataError(f"task.vocab: {path}: {key!r} must be a list of words (strings)")
    return [w.removeprefix("Ġ") for w in words]


def candidate_words(words: list[str], template_tokenizer: TemplateTokenizer) -> dict[int, str]:
    """{token id: word} of the ``words`` that are one token in the template's answer slot, in
    the list's order (a token that several words spell keeps the first): the candidates whose
    argmax is P@1. Other words are left out, as the paper's single-token filter leaves them."""
    candidates: dict[int, str] = {}
    for word in words:
        ids = template_tokenizer.answer_ids(word)
        if len(ids) == 1:
            candidates.setdefault(ids[0], word)
    return candidates


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
        subset: str | None = None,
        name_probe: TopWords | None = None,
    ) -> None:
        """``template=None`` uses the relation's manual template from ``relations.jsonl``. A
        list of templates is an ensemble (evaluation only): every fact is encoded with each
        (its ``views``) and the module averages their probabilities with ``template_weights``;
        the first template decides the answer slot's spacing, which all must share.
        ``group_by_length``: training batches of similar lengths (less padding, each example
        still once per epoch; batches differ from the plain shuffle's). ``sort_eval_by_length``:
        dev/test scored longest first (same P@1, less padding). ``subset``: None (every fact)
        or ``uhn`` (LAMA-UHN test facts); ``name_probe`` gives LAMA-UHN's person-name filter
        each name part's top words (``uhn.NameProbe``)."""
        super().__init__()
        if subset not in SUBSETS:
            raise DataError(
                f"task.subset: unknown subset {subset!r}; choose from null (all facts) or uhn"
            )
        self.subset, self.name_probe = subset, name_probe
        self.data_root = Path(data_root)
        self.relation = resolve_relations(relation, data_root)[0]
        templates = [template] if template is None or isinstance(template, str) else template
        templates = [t or manual_template(data_root, self.relation) for t in templates]
        self.template_source = templates[0]
        self.template_tokenizers = [
            TemplateTokenizer(Template.parse(t), tokenizer, model_kind, max_length)
            for t in templates
        ]
        self.template_tokenizer = self.template_tokenizers[0]
        self.template = (
            self.template_tokenizer.template
        )  # as the model sees it (causal: nothing after [Y])
        self.template_weights = _ensemble_weights(templates, template_weights)
        for other in self.template_tokenizers[1:]:
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

    def prior_module(self, backbone: Backbone) -> PriorModule:
        """``prompt=prior``'s module: the relation's training objects, counted."""
        targets = [example["target_index"] for example in self.datasets["train"]]
        return PriorModule(backbone, self.candidate_ids, targets)

    def _candidates(self) -> tuple[torch.Tensor, dict[int, int]]:
        words = vocabulary(str(self.data_root), self.vocab, self.vocab_key)
        if words is None:
            ids = list(range(len(self.template_tokenizer.tokenizer)))
        else:
            ids = list(candidate_words(words, self.template_tokenizer))
        return torch.tensor(ids), {token: i for i, token in enumerate(ids)}

    def _encode(self, path: Path, split: str, candidates: dict[int, int]) -> list[dict]:
        facts = []
        for number, fact in read_jsonl_lines(path, required=("sub", "obj")):
            for key in ("sub", "obj"):
                if not isinstance(fact[key], str) or not fact[key].strip():
                    raise DataError(
                        f"{path}, line {number}: {key!r} must be a non-empty string, "
                        f"got {fact[key]!r}"
                    )
            facts.append(fact)
        words = vocabulary(str(self.data_root), self.vocab, self.vocab_key)
        allowed = None if words is None else set(words)
        in_vocab = facts if allowed is None else [f for f in facts if f["obj"] in allowed]
        single = []
        for fact in in_vocab:
            answer = self.template_tokenizer.answer_ids(fact["obj"])
            if len(answer) == 1 and answer[0] in candidates:
                single.append(fact | {"target_token": answer[0]})
        scored, uhn = single, None
        if self.subset == "uhn" and split == "test":
            scored, uhn = uhn_filter(single, self.relation, self.name_probe)
        examples = []
        for fact in scored:
            token = fact["target_token"]
            views = [e.encode({"X": fact["sub"]}).fields() for e in self.template_tokenizers]
            examples.append(
                {
                    **views[0],
                    **({"views": views} if len(views) > 1 else {}),
                    "target_token": token,
                    "target_index": candidates[token],
                    "index": len(examples),
                    "sub": fact["sub"],
                    "obj": fact["obj"],
                }
            )
        self.stats[split] = {
            "facts": len(facts),
            "dropped_not_in_vocab": len(facts) - len(in_vocab),
            "dropped_multi_token": len(in_vocab) - len(single),
            **({"uhn": uhn} if uhn is not None else {}),
            "kept": len(examples),
        }
        log.info("%s %s: %s", self.relation, split, self.stats[split])
        if not examples:
            if not in_vocab:
                reason = f"the {self.vocab} vocabulary filter"
            elif not single:
                reason = "the single-token filter (objects must be one token of the backbone)"
            else:
                reason = "the LAMA-UHN filter (task.subset=uhn)"
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
