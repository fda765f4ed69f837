"""MultiRC: for each answer option of each question, is it right? (1 -> Yes, 0 -> No).

One decision per answer option; ``group`` ties the options of a question together for the
per-question exact match."""

from __future__ import annotations

from ptuning_lightning.superglue.data import Item, SuperGlueDataModule


class MultiRCDataModule(SuperGlueDataModule):
    folder = "MultiRC"
    templates = {
        0: "[paragraph] Question: [question] Is it [answer]? [P] Answer: [Y].",
        1: "[P*2] [paragraph] [P*2] [question] [P*2] [answer]? [P*2] [Y].",
    }
    manual_templates = {
        0: "[paragraph] Question: [question] Is it [answer]? Answer: [Y].",
        1: '[paragraph] Question: [question] Is the correct answer "[answer]"? Answer: [Y].',
    }
    verbalizer = {"0": "No", "1": "Yes"}  # class 1 ("true") is the one F1a scores
    metrics = ("f1a", "em")

    def items(self, record: dict, where: str) -> list[Item]:
        passage = record["passage"]
        out = []
        for q, question in enumerate(passage["questions"]):
            group = int(record["idx"]) * 1000 + q
            for answer in question["answers"]:
                inputs = {
                    "paragraph": passage["text"],
                    "question": question["question"],
                    "answer": answer["text"],
                }
                label = self.label_index(answer, f"{where} (question {q})")
                out.append(Item(inputs, self.label_words(), label, group=group))
        return out
