"""RTE: does the premise entail the hypothesis? (entailment -> Yes, not_entailment -> No)"""

from __future__ import annotations

from ptuning_lightning.data.superglue.base import Item, SuperGlueDataModule


class RTEDataModule(SuperGlueDataModule):
    folder = "RTE"
    patterns = {
        0: "[premise] Question: [hypothesis]? [P] Answer: [Y].",
        1: "[P*2] [premise] Question: [hypothesis]? [P*2] Answer: [Y].",
        2: '[premise] [P*3] "[hypothesis]"? [P*3] [Y].',
    }
    manual_patterns = {
        0: "[premise] Question: [hypothesis]? Answer: [Y].",
        1: '[premise] Based on the previous passage, is it true that "[hypothesis]"? Answer: [Y].',
    }
    verbalizer = {"entailment": "Yes", "not_entailment": "No"}

    def items(self, record: dict, where: str) -> list[Item]:
        inputs = {"premise": record["premise"], "hypothesis": record["hypothesis"].rstrip(".?!")}
        return [Item(inputs, self.label_words(), self.label_index(record, where))]
