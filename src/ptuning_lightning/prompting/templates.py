"""One template representation for manual, discrete and continuous prompts.

A template is text with bracketed parts:

- ``[X]`` (or any ``[name]`` listed as an input slot): the input, filled per example;
- ``[Y]``: the answer slot — a mask token for masked LMs, the next-token readout for causal LMs;
- ``[P]`` / ``[P*3]``: one / three trainable pseudo tokens, allowed anywhere;
- everything else: literal text (anchor tokens).

Example: the paper's (3, 3, 3) LAMA shape is ``"[P*3] [X] [P*3] [Y] [P*3]"``. For a causal LM
the answer is read from the position before ``[Y]``, so everything after ``[Y]`` is dropped
(as in the reference implementation); a template with an input slot after ``[Y]`` is refused
for causal LMs.

Whitespace in front of a part decides whether its tokens carry a leading space ("was born in
Paris" tokenizes " Paris"), which matters for byte-level BPE tokenizers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ANSWER = "Y"
_PART = re.compile(r"\[([^\[\]]+)\]")
_PSEUDO = re.compile(r"P(?:\*(\d+))?")


class TemplateError(ValueError):
    """A template that cannot be used: names the template and what is wrong."""


@dataclass(frozen=True)
class Part:
    """One piece of a template: ``text``, ``slot`` (input), ``answer`` or ``prompt``."""

    kind: str
    value: str = ""  # the text, or the slot's name
    count: int = 0  # pseudo tokens in a prompt block
    space: bool = False  # whitespace precedes this part in the template


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[Part, ...]
    slots: tuple[str, ...] = ("X",)
    after_answer: tuple[str, ...] = ()  # slots a causal LM may lose after [Y] (see for_causal)

    @classmethod
    def parse(
        cls,
        source: str,
        slots: tuple[str, ...] | list[str] = ("X",),
        after_answer: tuple[str, ...] = (),
    ) -> Template:
        """Parse ``source``; every slot in ``slots`` and exactly one ``[Y]`` must appear.
        Whitespace around the whole template carries no meaning and is ignored.
        ``after_answer``: slots that are context after the answer (ReCoRD's rest of the
        query), which a causal LM may go without."""
        slots = tuple(slots)
        source = source.strip()
        parts: list[Part] = []
        pos = 0
        for match in _PART.finditer(source):
            space = _add_text(parts, source[pos : match.start()])
            name = match.group(1).strip()
            pseudo = _PSEUDO.fullmatch(name)
            if name == ANSWER:
                parts.append(Part("answer", space=space))
            elif pseudo:
                count = int(pseudo.group(1) or 1)
                if count < 1:
                    raise TemplateError(f"template {source!r}: [{name}] needs at least one token")
                parts.append(Part("prompt", count=count, space=space))
            elif name in slots:
                parts.append(Part("slot", value=name, space=space))
            else:
                known = ", ".join(f"[{s}]" for s in (*slots, ANSWER, "P", "P*n"))
                raise TemplateError(f"template {source!r}: unknown part [{name}]; known: {known}")
            pos = match.end()
        _add_text(parts, source[pos:])
        kinds = [p.kind for p in parts]
        if kinds.count("answer") != 1:
            raise TemplateError(f"template {source!r} needs exactly one answer slot [{ANSWER}]")
        for slot in slots:
            if not any(p.kind == "slot" and p.value == slot for p in parts):
                raise TemplateError(f"template {source!r} has no input slot [{slot}]")
        return cls(source, tuple(parts), slots, tuple(after_answer))

    @property
    def n_prompt(self) -> int:
        """Number of pseudo tokens (the size of the continuous prompt)."""
        return sum(p.count for p in self.parts if p.kind == "prompt")

    @property
    def answer_space(self) -> bool:
        """Whether the answer word follows whitespace (it then tokenizes with a leading space)."""
        return next(p.space for p in self.parts if p.kind == "answer")

    def for_causal(self) -> Template:
        """The template a causal LM sees: the answer is the next token, so nothing follows it.
        Refuses templates whose input slots would be dropped with what follows ``[Y]`` (but
        those of ``after_answer``)."""
        end = next(i for i, p in enumerate(self.parts) if p.kind == "answer")
        if not any(p.kind != "text" or p.value.strip() for p in self.parts[:end]):
            raise TemplateError(f"template {self.source!r}: a causal LM needs context before [Y]")
        after = [
            f"[{p.value}]"
            for p in self.parts[end + 1 :]
            if p.kind == "slot" and p.value not in self.after_answer
        ]
        if after:
            raise TemplateError(
                f"template {self.source!r}: {', '.join(after)} after [Y] would be dropped for a "
                "causal LM (it reads the answer as the next token, so nothing follows [Y]); "
                "put the input before [Y]"
            )
        return Template(self.source, self.parts[: end + 1], self.slots, self.after_answer)


def fill_pseudo(source: str, words: list[str]) -> str:
    """The template with its pseudo tokens replaced, in order, by ``words`` (space-separated
    within a block): a searched discrete prompt as plain text."""
    words = iter(words)

    def replace(match: re.Match) -> str:
        pseudo = _PSEUDO.fullmatch(match.group(1).strip())
        if not pseudo:
            return match.group(0)
        return " ".join(next(words) for _ in range(int(pseudo.group(1) or 1)))

    return _PART.sub(replace, source)


def relation_words(source: str) -> str:
    """The literal text between a template's input slot and its answer slot, e.g. "was born
    in" for "[X] was born in [Y] .": what a mixed template keeps of a manual one."""
    template = Template.parse(source)
    kinds = [p.kind for p in template.parts]
    start, end = sorted((kinds.index("slot"), kinds.index("answer")))
    words = " ".join(p.value for p in template.parts[start + 1 : end] if p.kind == "text")
    if not words:
        raise TemplateError(f"template {source!r} has no words between its input and [Y]")
    return words


def manual_start(template: Template, manual: str) -> list[str]:
    """A word for each of ``template``'s pseudo tokens, from the manual template ``manual``
    where its words stand: a block of pseudo tokens before the input slot starts at the
    manual words before it ("The capital of" for "The capital of [X] is [Y] ."), a block
    between the slot and [Y] at the words between them ("is"), and so on. The words nearest
    the next slot are kept when the block is shorter, and cycled when it is longer ("is is
    is"); a block whose place holds no manual words starts at the relation words
    (``relation_words``), cycled the same way."""
    by_place: dict[int, list[str]] = {}
    for place, part in _places(Template.parse(manual).parts):
        if part.kind == "text":
            by_place.setdefault(place, []).extend(part.value.split())
    fallback = relation_words(manual).split()
    words = []
    for place, part in _places(template.parts):
        if part.kind == "prompt":
            found = by_place.get(place) or fallback
            words += [found[(i - part.count) % len(found)] for i in range(part.count)]
    return words


def _places(parts: tuple[Part, ...]) -> list[tuple[int, Part]]:
    """Each part with its place: how many input slots and answers precede it (0: before the
    first, 1: between the two, 2: after both)."""
    out, place = [], 0
    for part in parts:
        out.append((place, part))
        place += part.kind in ("slot", "answer")
    return out


def fill_relation(template: str, manual: str) -> str:
    """A mixed template for one relation: ``{manual}`` becomes the relation's manual template,
    ``{relation}`` its relation words (``relation_words``); other templates stay as they are."""
    if "{manual}" in template:
        template = template.replace("{manual}", manual)
    if "{relation}" in template:
        template = template.replace("{relation}", relation_words(manual))
    return template


def slot_names(source: str) -> tuple[str, ...]:
    """The input slots a template uses, in order: every ``[name]`` but ``[Y]`` and ``[P*n]``."""
    names = (m.group(1).strip() for m in _PART.finditer(source))
    return tuple(dict.fromkeys(n for n in names if n != ANSWER and not _PSEUDO.fullmatch(n)))


def _add_text(parts: list[Part], text: str) -> bool:
    """Append literal text; returns whether the next part follows whitespace."""
    stripped = text.strip()
    leading = text[:1].isspace() and bool(parts)
    if stripped:
        parts.append(Part("text", value=stripped, space=leading))
        return text[-1:].isspace()
    return leading or text[-1:].isspace()


@dataclass
class Encoded:
    """A tokenized example: ids with placeholders at pseudo tokens, and where things are."""

    input_ids: list[int]
    prompt_index: list[int]  # k at the k-th pseudo token, -1 elsewhere
    answer_position: int  # where the answer is read out
    truncated: bool = False

    def fields(self) -> dict:
        """What a batch needs of it (``batching.collate`` pads these)."""
        return {
            "input_ids": self.input_ids,
            "prompt_index": self.prompt_index,
            "answer_position": self.answer_position,
        }


@dataclass
class TemplateTokenizer:
    """Binds a template to a tokenizer and a model kind (``causal`` or ``masked``)."""

    template: Template
    tokenizer: object
    kind: str
    max_length: int = 512
    _pieces: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("causal", "masked"):
            raise ValueError(f"model kind must be 'causal' or 'masked', got {self.kind!r}")
        if self.kind == "causal":
            self.template = self.template.for_causal()
        elif self.tokenizer.mask_token_id is None:
            raise TemplateError("a masked LM needs a tokenizer with a mask token")
        self._prefix, self._suffix = _special_tokens(self.tokenizer)
        if self.kind == "causal":  # the readout is the last token: nothing may follow it
            self._suffix = []
        self._placeholder = self.tokenizer.pad_token_id or 0
        for i, part in enumerate(self.template.parts):
            if part.kind == "text":
                self._pieces[i] = self._tokens(part.value, part.space)

    def _tokens(self, text: str, space: bool) -> list[int]:
        return self.tokenizer(" " + text if space else text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, word: str) -> list[int]:
        """Token ids of ``word`` as it appears in the answer slot."""
        return self._tokens(word, self.template.answer_space)

    @property
    def fixed_length(self) -> int:
        """Tokens the template itself takes (everything except the input slots)."""
        parts = self.template.parts
        n = len(self._prefix) + len(self._suffix) + sum(len(t) for t in self._pieces.values())
        n += sum(p.count for p in parts if p.kind == "prompt")
        return n + (1 if self.kind == "masked" else 0)

    def encode(self, inputs: dict[str, str], reserve: int = 0) -> Encoded:
        """Place ``inputs`` into the template; over-long inputs are cut inside their slots only.
        ``reserve`` keeps that many tokens free (answer words appended or spread over masks)."""
        slot_ids = {s: self._tokens(inputs[s], _slot_space(self.template, s)) for s in inputs}
        budget = self.max_length - self.fixed_length - reserve
        truncated = _truncate(slot_ids, budget, self.template)
        ids: list[int] = list(self._prefix)
        prompt_index: list[int] = [-1] * len(ids)
        answer = -1
        k = 0
        for i, part in enumerate(self.template.parts):
            if part.kind == "text":
                new = self._pieces[i]
            elif part.kind == "slot":
                new = slot_ids[part.value]
            elif part.kind == "prompt":
                ids.extend([self._placeholder] * part.count)
                prompt_index.extend(range(k, k + part.count))
                k += part.count
                continue
            elif self.kind == "masked":
                answer = len(ids)
                new = [self.tokenizer.mask_token_id]
            else:
                answer = len(ids) - 1
                break
            ids.extend(new)
            prompt_index.extend([-1] * len(new))
        ids.extend(self._suffix)
        prompt_index.extend([-1] * len(self._suffix))
        return Encoded(ids, prompt_index, answer, truncated)


def _slot_space(template: Template, slot: str) -> bool:
    return next(p.space for p in template.parts if p.kind == "slot" and p.value == slot)


def _truncate(slot_ids: dict[str, list[int]], budget: int, template: Template) -> bool:
    """Shorten the longest slot first until all slots fit ``budget`` tokens (in place)."""
    if sum(map(len, slot_ids.values())) <= budget:
        return False
    if budget < len(slot_ids):
        raise TemplateError(
            f"template {template.source!r} leaves {budget} tokens for its inputs under the "
            "max_length limit; raise max_length or shorten the template"
        )
    while sum(map(len, slot_ids.values())) > budget:
        longest = max(slot_ids, key=lambda s: len(slot_ids[s]))
        slot_ids[longest] = slot_ids[longest][:-1]
    return True


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text (e.g. [CLS] ... [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def place_prompt(
    token_embeds: torch.Tensor, prompt_index: torch.Tensor, prompt: torch.Tensor
) -> torch.Tensor:
    """Write pseudo-token embeddings into the token embeddings in one vectorised operation.

    ``token_embeds`` (B, T, H); ``prompt_index`` (B, T) with -1 at ordinary tokens; ``prompt``
    (n_prompt, H), or (B, n_prompt, H) when examples use different prompts. The rows are
    looked up as an embedding table: its backward is 5x cheaper than advanced indexing's.
    """
    if prompt.numel() == 0:
        return token_embeds
    index = prompt_index.clamp(min=0)
    if prompt.dim() == 3:  # example b's rows start at b * n_prompt of the flattened table
        offsets = torch.arange(prompt.size(0), device=index.device) * prompt.size(1)
        index = index + offsets.unsqueeze(1)
    gathered = F.embedding(index, prompt.reshape(-1, prompt.size(-1)))
    is_prompt = (prompt_index >= 0).unsqueeze(-1)
    return torch.where(is_prompt, gathered.to(token_embeds.dtype), token_embeds)
