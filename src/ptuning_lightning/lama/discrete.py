"""Published discrete prompts for LAMA relations (``prompt=discrete``), evaluated as they are.

Sources under ``<data_root>/prompts``:

- ``autoprompt_bert`` / ``autoprompt_roberta``: AutoPrompt's searched trigger tokens
  (``autoprompt/{bert,roberta}.jsonl``, one ``{"relation", "template"}`` line per relation);
- ``lpaqa_mine`` / ``lpaqa_paraphrase``: LPAQA's mined and paraphrased prompts
  (``lpaqa_*/<relation>.jsonl``, ``{"template", "weight"}`` lines); we use the top-weighted
  one (on a tie, the first in the file). A causal LM reads the answer as the next token, so
  for it we take the top-weighted template with context before ``[Y]`` and its input before
  ``[Y]`` too (about a quarter of LPAQA's top templates start with ``[Y]``; a few paraphrases,
  e.g. "artists [Y] [X]." of P136, put ``[X]`` after it). ``top_k`` > 1 is LPAQA's ensemble: the k
  top-weighted usable templates (those whose answer slot is spaced like the top one's, so that
  every template scores the same answer tokens) with their weights.
"""

from __future__ import annotations

from pathlib import Path

from ptuning_lightning.data.jsonl import DataError, read_jsonl
from ptuning_lightning.prompting.templates import Template, TemplateError

AUTOPROMPT = {"autoprompt_bert": "bert", "autoprompt_roberta": "roberta"}
LPAQA = ("lpaqa_mine", "lpaqa_paraphrase")
SOURCES = (*AUTOPROMPT, *LPAQA)


def published_template(
    data_root: str | Path, source: str, relation: str, causal: bool = False
) -> str:
    """The published discrete template of ``relation`` from ``source`` (see the module doc);
    ``causal``: one that a causal LM can read out (context before ``[Y]``)."""
    return published_templates(data_root, source, relation, causal)[0][0]


def published_templates(
    data_root: str | Path, source: str, relation: str, causal: bool = False, top_k: int = 1
) -> tuple[list[str], list[float]]:
    """The ``top_k`` published templates of ``relation`` from ``source`` and their weights
    (see the module doc); ``causal``: only ones a causal LM can read out."""
    prompts = Path(data_root) / "prompts"
    if top_k < 1 or (top_k > 1 and source not in LPAQA):
        raise DataError(
            f"prompt.top_k={top_k}: must be 1, or more for an LPAQA ensemble "
            f"({', '.join(LPAQA)}); {source} publishes one prompt per relation"
        )
    if source in AUTOPROMPT:
        path = prompts / "autoprompt" / f"{AUTOPROMPT[source]}.jsonl"
        rows = read_jsonl(path, required=("relation", "template"))
        templates = [r["template"] for r in rows if r["relation"] == relation]
        if not templates:
            raise _missing(source, relation, path)
        return templates[:1], [1.0]
    if source in LPAQA:
        path = prompts / source / f"{relation}.jsonl"
        if not path.is_file():
            raise _missing(source, relation, path)
        rows = read_jsonl(path, required=("template", "weight"))
        ranked = sorted(rows, key=lambda r: -float(r["weight"]))  # stable: first of equal ones
        usable = [r for r in ranked if not causal or _causal_ready(r["template"])]
        if not rows:
            raise _missing(source, relation, path)
        if not usable:
            raise DataError(
                f"prompt.source={source}: every prompt for relation {relation} starts with [Y] or"
                f" puts [X] after it, which a causal LM cannot read out ({path}); use a masked LM"
                " or another source"
            )
        space = _answer_space(usable[0]["template"])
        chosen = [r for r in usable if _answer_space(r["template"]) == space][:top_k]
        return [r["template"] for r in chosen], [float(r["weight"]) for r in chosen]
    raise DataError(f"prompt.source: unknown source {source!r}; valid: {', '.join(SOURCES)}")


def _causal_ready(template: str) -> bool:
    """Whether a causal LM can read the template out (``Template.for_causal``)."""
    try:
        Template.parse(template).for_causal()
    except TemplateError:
        return False
    return True


def _answer_space(template: str) -> bool:
    return Template.parse(template).answer_space


def _missing(source: str, relation: str, path: Path) -> DataError:
    return DataError(f"prompt.source={source} has no prompt for relation {relation} ({path})")
