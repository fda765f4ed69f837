"""Dev selection with the paper's tie rule: Lightning's checkpoint and early stopping callbacks
where a dev score *equal* to the best so far counts as an improvement (``ties_improve``).

The paper's LAMA loop keeps the later prompt on a tie (``>=``) and restarts patience, while
Lightning's callbacks need a strict improvement. On small dev sets (P37 has 60 facts) ties
are common, so the rule changes which prompt is tested and when training stops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

TIE_OPS = {"max": torch.ge, "min": torch.le}


def improves(current: float, best: float, ties_improve: bool) -> bool:
    """Whether a dev score (higher is better) replaces the best so far."""
    return current >= best if ties_improve else current > best


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (``save_top_k=1``) that also saves on a tie with the kept score
    when ``ties_improve`` (the paper's rule); ``False``: Lightning's strict improvement.
    ``last.ckpt`` follows every dev evaluation: Lightning 2.6 writes it only when the best
    checkpoint changed, so an interrupted job would resume from its best epoch, not its last."""

    def __init__(self, ties_improve: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if ties_improve and self.save_top_k != 1:
            raise ValueError("callbacks.model_checkpoint: ties_improve needs save_top_k=1")
        self.ties_improve = ties_improve

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        if self.ties_improve and current is not None and self.best_k_models:
            kept = self.best_k_models[self.kth_best_model_path]
            decision = bool(TIE_OPS[self.mode](current, kept))
            return trainer.strategy.reduce_boolean_decision(decision)  # the same on every rank
        return super().check_monitor_top_k(trainer, current)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last(trainer, at_epoch_end=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last(trainer, at_epoch_end=True)

    def _save_last(self, trainer: Trainer, at_epoch_end: bool) -> None:
        """Write ``last.ckpt`` where Lightning saves (after validation, or at the epoch's
        end), unless it already saved at this step."""
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)
            and self._should_save_on_train_epoch_end(trainer) == at_epoch_end
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PatientStopping(EarlyStopping):
    """``EarlyStopping`` whose patience restarts on a tie with the best score when
    ``ties_improve`` (the paper's rule); ``False``: Lightning's strict improvement."""

    def __init__(self, ties_improve: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ties_improve = ties_improve

    @property
    def monitor_op(self) -> Callable:
        # EarlyStopping reads monitor_op while it initialises, before ties_improve is set
        if getattr(self, "ties_improve", False):
            return TIE_OPS[self.mode]
        return super().monitor_op
