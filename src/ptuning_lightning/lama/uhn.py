"""LAMA-UHN ("unhelpful names", Poerner et al. 2020, "E-BERT: Efficient-Yet-Effective Entity
Embeddings for BERT"): the test facts whose object cannot be guessed from the subject's name.

We follow LAMA's own script (``scripts/create_lama_uhn.py`` of facebookresearch/LAMA), which
applies two filters in this order:

1. **String match**: a fact goes when its object, lower-cased, is a substring of its subject,
   lower-cased ("Apple Watch" -> "Apple"; a substring, not a whole word: "Iran" is dropped for
   "Iranian Airways" too).
2. **Person name**, only for the relations about a person's city, country or language (P19,
   P20: city; P27: country; P103, P1412: language): each whitespace-separated part of the
   subject's name fills "[X] is a common name in the following <noun>: [Y] ." and the fact goes
   when its object is among the LM's top 3 words at ``[Y]`` for any part ("Jean Marais" ->
   "Jean" and "Marais", native language French). Top 3 over the whole vocabulary, the object
   compared with each predicted token as a word (case-sensitive, as the script does with a
   cased BERT).

Deviations, both forced by working offline: the probe is the job's own backbone (the script
uses bert-base-cased), so which person-name facts go depends on the backbone; results.json
names the probe's model beside the counts. A causal LM predicts the token after "...<noun>:";
a masked LM fills its mask. The template's "city :" of the script is written "city:" (the
same BERT word pieces; the natural text for byte-level BPE).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ptuning_lightning.data.batching import collate
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.templates import Template, TemplateTokenizer

SUBSETS = (None, "uhn")  # task.subset: None keeps every fact (the paper's protocol)
PERSON_NAME_NOUNS = {
    "P19": "city",
    "P20": "city",
    "P27": "country",
    "P103": "language",
    "P1412": "language",
}
PROBE_TEMPLATE = "[X] is a common name in the following {noun}: [Y] ."
TOP_K = 3


class TopWords(Protocol):
    """Name parts and a noun -> each part's top words (a ``NameProbe``, or a fake in tests);
    ``name`` says whose words they are (results.json records it)."""

    name: str

    def __call__(self, parts: list[str], noun: str) -> dict[str, set[str]]: ...


def string_match(sub: str, obj: str) -> bool:
    """Whether the object can be read off the subject's name (case-insensitive substring)."""
    return obj.lower() in sub.lower()


def uhn_filter(
    facts: list[dict], relation: str, top_words: TopWords | None
) -> tuple[list[dict], dict]:
    """The facts (dicts with ``sub`` and ``obj``) that survive both filters, in their order,
    and what each dropped: ``{"string_match": n, "person_name": m, "probe": model}``. The
    person-name filter sees only what the string match kept (the script's order); ``probe``
    is the name of ``top_words``, None for the relations that filter does not touch (which
    need no ``top_words``)."""
    named = [f for f in facts if not string_match(f["sub"], f["obj"])]
    noun = PERSON_NAME_NOUNS.get(relation)
    kept, probe = named, None
    if noun is not None:
        if top_words is None:
            raise ValueError(f"LAMA-UHN on {relation}: the person-name filter needs a probe")
        top = top_words(sorted({part for f in named for part in f["sub"].split()}), noun)
        kept = [f for f in named if not any(f["obj"] in top[p] for p in f["sub"].split())]
        probe = top_words.name
    counts = {"string_match": len(facts) - len(named), "person_name": len(named) - len(kept)}
    return kept, counts | {"probe": probe}


class NameProbe:
    """``TopWords`` read from a backbone: each name part's top ``TOP_K`` words in the probe
    template, in batches, computed once per (part, noun)."""

    def __init__(self, backbone: Backbone, batch_size: int = 64, max_length: int = 64) -> None:
        self.backbone, self.batch_size, self.max_length = backbone, batch_size, max_length
        self.name = backbone.name
        self._cache: dict[tuple[str, str], set[str]] = {}

    def __call__(self, parts: list[str], noun: str) -> dict[str, set[str]]:
        missing = [p for p in dict.fromkeys(parts) if (p, noun) not in self._cache]
        template = Template.parse(PROBE_TEMPLATE.format(noun=noun))
        tokenizer = self.backbone.tokenizer
        pad = tokenizer.pad_token_id
        encoder = TemplateTokenizer(template, tokenizer, self.backbone.kind, self.max_length)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            batch = collate([encoder.encode({"X": p}).fields() for p in chunk], pad)
            top = self._top_ids(batch)
            for part, ids in zip(chunk, top.tolist(), strict=True):
                self._cache[part, noun] = {tokenizer.decode([i]).strip() for i in ids}
        return {p: self._cache[p, noun] for p in parts}

    @torch.inference_mode()
    def _top_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.backbone.embeddings.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        positions = batch["answer_position"].to(device)
        logits = self.backbone.logits_at(self.backbone.embed(ids), mask, positions)
        return logits.topk(TOP_K, dim=-1).indices.cpu()
