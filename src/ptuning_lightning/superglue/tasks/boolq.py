"""BoolQ: a yes/no question about a passage (true -> Yes, false -> No)."""

from __future__ import annotations

from ptuning_lightning.superglue.data import SuperGlueDataModule


class BoolQDataModule(SuperGlueDataModule):
    folder = "BoolQ"
    templates = {
        0: "[passage] Question: [question]? [P] Answer: [Y].",
        1: "[P*2] [passage] Question: [question]? [P*2] Answer: [Y].",
        2: "[passage] [P*3] [question]? [P*3] [Y].",
    }
    manual_templates = {
        0: "[passage] Question: [question]? Answer: [Y].",
        1: "[passage] Based on the previous passage, [question]? Answer: [Y].",
    }
    fields = ("passage", "question")
    verbalizer = {"true": "Yes", "false": "No"}

    def clean(self, field: str, text: str) -> str:
        return text.rstrip("?") if field == "question" else text
