"""Dashboards: Lightning callbacks that log tables to Weights & Biases (no-ops for any other
logger), and ``nearest_tokens``, which reads a continuous prompt as vocabulary words.

- ``PredictionTable``: one row per test fact (relation, subject, gold object, the top-k
  candidates with their probabilities over the candidate words, correct or not).
- ``PromptNeighbours``: for each pseudo token of each tested relation's prompt, its nearest
  token embeddings of the backbone by cosine similarity.

Both serve one relation (``LamaDataModule``) and many in one pass (``OnePassData``, whose
examples carry ``relation``, their relation's position in the data module's ``names``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from ptuning_lightning.prompting.backbones import Backbone


def nearest_tokens(
    prompt: torch.Tensor, backbone: Backbone, k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each row of ``prompt`` (n, H): the ``k`` tokens whose input embeddings are nearest
    by cosine similarity, best first, as (decoded token, similarity)."""
    weights = backbone.model.get_input_embeddings().weight.detach()
    rows = F.normalize(prompt.detach().float().to(weights.device), dim=-1)
    similarity = rows @ F.normalize(weights.float(), dim=-1).T
    values, ids = similarity.topk(min(k, weights.size(0)), dim=-1)
    decode = backbone.tokenizer.decode
    return [
        [(decode([i]), v) for i, v in zip(row_ids.tolist(), row_values.tolist(), strict=True)]
        for row_ids, row_values in zip(ids, values, strict=True)
    ]


def wandb_loggers(trainer: Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def relation_names(trainer: Trainer) -> list[str]:
    """The relations of the data module, in the order of the examples' ``relation`` index:
    ``OnePassData.names``, or the one relation of a ``LamaDataModule``."""
    data = trainer.datamodule
    return list(getattr(data, "names", None) or [data.relation])


class PredictionTable(Callback):
    """Logs ``test/predictions``: a row per test example, from the candidate scores that
    ``PromptModule.test_step`` returns."""

    def __init__(self, key: str = "test/predictions", top_k: int = 5) -> None:
        self.key, self.top_k = key, top_k
        self.rows: list[list] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        dataset = getattr(trainer.datamodule, "datasets", {}).get("test")
        if not wandb_loggers(trainer) or not isinstance(outputs, torch.Tensor) or not dataset:
            return
        probs = outputs.detach().float().softmax(-1)
        top = probs.topk(min(self.top_k, probs.size(-1)), dim=-1)
        words = self._words(pl_module, top.indices)
        names = relation_names(trainer)
        padding = batch.get("padding", torch.zeros_like(batch["index"])).tolist()
        for row, index in enumerate(batch["index"].tolist()):
            if padding[row]:  # a copy that pads the split across DDP ranks
                continue
            example = dataset[index]
            ranked = ", ".join(
                f"{w} {p:.3g}" for w, p in zip(words[row], top.values[row].tolist(), strict=True)
            )
            correct = int(top.indices[row, 0]) == int(batch["target_index"][row])
            relation = names[example.get("relation", 0)]
            self.rows.append([relation, example["sub"], example["obj"], ranked, correct])

    @staticmethod
    def _words(pl_module: LightningModule, indices: torch.Tensor) -> list[list[str]]:
        token_ids = pl_module.candidate_ids[indices.to(pl_module.candidate_ids.device)]
        decode = pl_module.backbone.tokenizer.decode
        return [[decode([t]).strip() for t in row] for row in token_ids.tolist()]

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.rows:
            return
        columns = ["relation", "subject", "gold", f"top-{self.top_k} (p over candidates)"]
        columns.append("correct")
        for logger in wandb_loggers(trainer):
            logger.log_table(self.key, columns=columns, data=self.rows, step=trainer.global_step)
        self.rows = []


class PromptNeighbours(Callback):
    """Logs ``prompt/neighbours``: for each relation's tested prompt (after dev selection),
    each pseudo token's ``k`` nearest vocabulary tokens. Prompts without pseudo tokens log
    nothing."""

    def __init__(self, key: str = "prompt/neighbours", k: int = 5) -> None:
        self.key, self.k = key, k

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        rows = []
        with torch.no_grad():
            prompts = pl_module.prompts()
        for relation, prompt in zip(relation_names(trainer), prompts, strict=True):
            nearest = nearest_tokens(prompt, pl_module.backbone, self.k) if prompt.numel() else []
            rows += [
                [relation, position, ", ".join(f"{token!r} {sim:.3f}" for token, sim in tokens)]
                for position, tokens in enumerate(nearest)
            ]
        if not rows:
            return
        for logger in loggers:
            logger.log_table(
                self.key,
                columns=["relation", "pseudo_token", f"nearest {self.k} tokens (cosine)"],
                data=rows,
                step=trainer.global_step,
            )
