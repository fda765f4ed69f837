"""BoolQ: a yes/no question about a passage (true -> Yes, false -> No)."""

from __future__ import annotations

from ptuning_lightning.data.superglue.base import Item, SuperGlueDataModule


class BoolQDataModule(SuperGlueDataModule):
    folder = "BoolQ"
    patterns = {
        0: "[passage] Question: [question]? [P] Answer: [Y].",
        1: "[P*2] [passage] Question: [question]? [P*2] Answer: [Y].",
        2: "[passage] [P*3] [question]? [P*3] [Y].",
    }
    manual_patterns = {
        0: "[passage] Question: [question]? Answer: [Y].",
        1: "[passage] Based on the previous passage, [question]? Answer: [Y].",
    }
    verbalizer = {"true": "Yes", "false": "No"}

    def items(self, record: dict, where: str) -> list[Item]:
        inputs = {"passage": record["passage"], "question": record["question"].rstrip("?")}
        return [Item(inputs, self.label_words(), self.label_index(record, where))]
