"""CommitmentBank: entailment -> Yes, contradiction -> No, neutral -> Maybe (RTE's templates)."""

from __future__ import annotations

from ptuning_lightning.superglue.tasks.rte import RTEDataModule


class CBDataModule(RTEDataModule):
    folder = "CB"
    verbalizer = {"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"}
    metrics = ("acc", "f1")
