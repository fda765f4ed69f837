"""WSC: does the marked pronoun refer to the given noun phrase? (true -> Yes, false -> No)

The span is handled as in PET: the pronoun (``span2``, found by its word index) is marked with
asterisks in the text, and the question names both spans."""

from __future__ import annotations

from ptuning_lightning.data.jsonl import DataError
from ptuning_lightning.superglue.data import Item, SuperGlueDataModule


class WSCDataModule(SuperGlueDataModule):
    folder = "WSC"
    templates = {
        0: '[text] Question: In the passage above, does the pronoun "*[pronoun]*" refer to'
        " [noun]? [P] Answer: [Y].",
        1: '[P*2] [text] [P*2] "*[pronoun]*" [P] [noun]? [P*2] [Y].',
    }
    manual_templates = {
        0: '[text] Question: In the passage above, does the pronoun "*[pronoun]*" refer to'
        " [noun]? Answer: [Y].",
        1: '[text] Question: In the passage above, is "*[pronoun]*" [noun]? Answer: [Y].',
    }
    verbalizer = {"true": "Yes", "false": "No"}

    def items(self, record: dict, where: str) -> list[Item]:
        target = record["target"]
        words = record["text"].split()
        at, pronoun = target["span2_index"], target["span2_text"]
        width = len(pronoun.split())
        if at + width > len(words):
            raise DataError(f"{where}: span2_index {at} is past the end of the text")
        words[at] = "*" + words[at]
        words[at + width - 1] += "*"
        inputs = {"text": " ".join(words), "pronoun": pronoun, "noun": target["span1_text"]}
        return [Item(inputs, self.label_words(), self.label_index(record, where))]
