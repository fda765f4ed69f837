"""RTE: does the premise entail the hypothesis? (entailment -> Yes, not_entailment -> No)"""

from __future__ import annotations

from ptuning_lightning.superglue.data import SuperGlueDataModule


class RTEDataModule(SuperGlueDataModule):
    folder = "RTE"
    templates = {
        0: "[premise] Question: [hypothesis]? [P] Answer: [Y].",
        1: "[P*2] [premise] Question: [hypothesis]? [P*2] Answer: [Y].",
        2: '[premise] [P*3] "[hypothesis]"? [P*3] [Y].',
    }
    manual_templates = {
        0: "[premise] Question: [hypothesis]? Answer: [Y].",
        1: '[premise] Based on the previous passage, is it true that "[hypothesis]"? Answer: [Y].',
    }
    fields = ("premise", "hypothesis")
    verbalizer = {"entailment": "Yes", "not_entailment": "No"}

    def clean(self, field: str, text: str) -> str:
        return text.rstrip(".?!") if field == "hypothesis" else text
