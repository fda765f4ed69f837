"""ReCoRD: which entity of the passage fills ``@placeholder`` in the query? Every entity is
a candidate scored by its LM likelihood in the placeholder's place (for a causal LM the
query's rest after the placeholder is not seen). FewGLUE ships no ReCoRD val set: the
default ``test_split`` is dev32."""

from __future__ import annotations

from ptuning_lightning.superglue.data import Item, SuperGlueDataModule


class ReCoRDDataModule(SuperGlueDataModule):
    folder = "ReCoRD"
    templates = {
        0: "[passage] [P*3] [query] [Y] [rest]",
        1: "[P*2] [passage] [P*2] [query] [Y] [rest]",
    }
    manual_templates = {0: "[passage] [query] [Y] [rest]"}
    metrics = ("record_f1", "record_em")
    test_split_default = "dev32"
    after_answer = ("rest",)

    def items(self, record: dict, where: str) -> list[Item]:
        text = record["passage"]["text"]
        entities = list(
            dict.fromkeys(text[e["start"] : e["end"] + 1] for e in record["passage"]["entities"])
        )
        passage = text.replace("@highlight\n", "- ")
        out = []
        for qa in record["qas"]:
            query, _, rest = qa["query"].partition("@placeholder")
            golds = [a["text"] for a in qa.get("answers", [])]
            label = next((i for i, e in enumerate(entities) if e in golds), -1)
            if label < 0 and self._training_split(where):
                continue  # no candidate to learn from
            inputs = {"passage": passage, "query": query.strip(), "rest": rest.strip()}
            out.append(Item(inputs, entities, max(label, 0), golds=golds))
        return out

    def _training_split(self, where: str) -> bool:
        return f"{self.splits['train']}.jsonl," in where
