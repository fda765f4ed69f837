"""COPA: which alternative is the cause (or effect) of the premise? Each alternative is
scored by its LM likelihood after the premise and "because" (cause) or "so" (effect)."""

from __future__ import annotations

from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.superglue.data import Item, SuperGlueDataModule

CONNECTIVES = {"cause": "because", "effect": "so"}


class COPADataModule(SuperGlueDataModule):
    folder = "COPA"
    templates = {
        0: '"[choice1]" or "[choice2]"? [premise] [P*2] [connective] [Y].',
        1: "[P*2] [premise] [P*2] [connective] [Y].",
    }
    manual_templates = {
        0: '"[choice1]" or "[choice2]"? [premise], [connective] [Y].',
        1: "[premise], [connective] [Y].",
    }
    choice_labels = ("0", "1")

    def items(self, record: dict, where: str) -> list[Item]:
        label = self.label_index(record, where)
        if record.get("question") not in CONNECTIVES:
            raise DataError(
                f"{where}: unknown question {record.get('question')!r}; known: {list(CONNECTIVES)}"
            )
        choices = [_lower_first(record[k].rstrip(".")) for k in ("choice1", "choice2")]
        inputs = {
            "premise": record["premise"].rstrip("."),
            "connective": CONNECTIVES[record["question"]],
            "choice1": choices[0],
            "choice2": choices[1],
        }
        return [Item(inputs, choices, label)]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
