"""Prompt methods as objects: ``conf/prompt/<name>.yaml`` names its class with ``_target_``
and the runners build it with ``hydra.utils.instantiate``. A runner never asks for a method
by name; it asks the method:

- ``prompt(target, backbone)``: the template(s) and any fixed embeddings for one target (a
  LAMA relation): the configured template, published ones, an exported file...;
- ``trains_backbone``: whether the backbone trains too (a trainable copy, ``backbone_lr``);
- ``module(backbone, data, seed)``: a LightningModule of its own instead of the family's
  (LAMA's prior and AutoPrompt search), or None;
- ``families`` / ``one_pass`` / ``single_process``: where it applies (SuperGLUE tasks,
  LAMA's one pass, DDP); ``model_free``: its answers need no model (the prior), so LAMA's
  one pass has nothing to share and its relations run one by one;
- ``uses_pseudo_tokens`` / ``head``: for SuperGLUE, which of the task's templates it takes
  (P-Tuning's or the manual one) and whether a classifier reads the answer slot;
- ``label``: its name in ``results.json`` (``method``) and in the report.

Adding a method is one class (here, or in a task family's ``methods.py`` when it needs that
family's modules) and one YAML file in ``conf/prompt/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.encoders import FixedPrompt, load_prompt
from ptuning_lightning.prompting.templates import fill_relation

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule, LightningModule


@dataclass(frozen=True)
class Target:
    """What a method may ask about the target of its prompt: its ``name`` (a LAMA relation),
    the task family's ``data_root`` and, read on demand, its ``manual`` template."""

    name: str
    data_root: str
    manual: Callable[[], str]


@dataclass
class Prompt:
    """What a method puts around one target's input: ``template`` (None: the task's manual
    one; a list: an ensemble, with ``weights``) and, for an exported prompt, the encoder that
    serves its fixed embeddings."""

    template: str | list[str] | None
    weights: list[float] | None = None
    encoder: nn.Module | None = None


class PromptMethod:
    """A template from the config (None: the task's manual one), whose pseudo tokens, if any,
    come from the prompt encoder (``conf/encoder/``); the backbone stays frozen unless
    ``finetune``."""

    families: ClassVar[tuple[str, ...]] = ("lama", "superglue")
    single_process: ClassVar[bool] = False  # refuses trainer=ddp
    uses_pseudo_tokens: ClassVar[bool] = True  # SuperGLUE: the P-Tuning template, not the manual
    head: ClassVar[bool] = False  # SuperGLUE: a classifier on the answer slot, not label words
    model_free: ClassVar[bool] = False  # answers without calling the model (the prior)

    def __init__(
        self,
        name: str,
        template: str | None = None,
        loss_over: str = "vocab",
        finetune: bool = False,
        backbone_lr: float | None = None,
        batch_size: int | None = None,
        trainer: dict | None = None,
    ) -> None:
        """``loss_over``: ``vocab`` (the paper: softmax over the whole vocabulary) or
        ``candidates``; ``finetune``: the backbone trains too, at ``backbone_lr`` (LAMA; the
        SuperGLUE protocol has its own rates); ``batch_size`` and ``trainer``: the method's
        own training batch and trainer settings (None: the task's and the trainer's)."""
        self.name, self.template, self.loss_over = name, template, loss_over
        self.finetune, self.backbone_lr = finetune, backbone_lr
        self.batch_size, self.trainer = batch_size, dict(trainer or {})

    @property
    def label(self) -> str:
        """The method's row in results and reports."""
        return self.name

    @property
    def trains_backbone(self) -> bool:
        return self.finetune

    @property
    def one_pass(self) -> bool:
        """Whether its prompts can share LAMA's one pass over one frozen backbone."""
        return not self.trains_backbone

    def prompt(self, target: Target, backbone: Backbone) -> Prompt:
        """The configured template; ``{manual}`` and ``{relation}`` become the target's manual
        template and its relation words."""
        template = self.template
        if template and ("{manual}" in template or "{relation}" in template):
            template = fill_relation(template, target.manual())
        return Prompt(template)

    def module(
        self, backbone: Backbone, data: LightningDataModule, seed: int
    ) -> LightningModule | None:
        """A module of the method's own instead of the task family's (None: the family's)."""
        return None


class Prior(PromptMethod):
    """The training prior: every example gets the answer most frequent in training (a LAMA
    relation's most frequent object, a SuperGLUE task's majority label), with no model call.
    The floor a learned prompt must beat. Each family's data module builds it
    (``prior_module``): it holds the training answers."""

    uses_pseudo_tokens = False
    model_free = True

    @property
    def one_pass(self) -> bool:
        return False

    def module(
        self, backbone: Backbone, data: LightningDataModule, seed: int
    ) -> LightningModule | None:
        return data.prior_module(backbone)


class Manual(PromptMethod):
    """MP: the task's manual template (or ``prompt.template``), evaluated as it is."""

    uses_pseudo_tokens = False


class ManualFineTune(Manual):
    """MP+FT (LAMA): the manual template with the backbone trained."""

    families = ("lama",)


class PTuning(PromptMethod):
    """P-Tuning: pseudo tokens from the prompt encoder; with ``finetune`` the backbone trains
    too (P-Tuning+FT, two learning rates)."""


class Mixed(PTuning):
    """Pseudo tokens around the manual template's words (LAMA: ``{relation}``)."""

    families = ("lama",)


class FineTune(PromptMethod):
    """FT: the backbone trains. LAMA: the LM fills ``[X] [Y]``; SuperGLUE: a classifier head
    on the manual template's answer slot."""

    uses_pseudo_tokens = False
    head = True


class Exported(PromptMethod):
    """Prompts exported by ptl-train: template and embeddings from ``path`` (a run folder
    holding ``<target>/prompt.pt``, or one file); evaluation only."""

    families = ("lama",)

    def __init__(self, name: str, path: str, template: str | None = None) -> None:
        super().__init__(name, template)
        self.path = Path(path)

    def prompt(self, target: Target, backbone: Backbone) -> Prompt:
        refuse_template(self, "prompt.path")
        path = self.path / target.name / "prompt.pt" if self.path.is_dir() else self.path
        embeddings, template = load_prompt(path, backbone, target.name)
        return Prompt(template, encoder=FixedPrompt(embeddings))


def refuse_template(method: PromptMethod, origin: str) -> None:
    """A method that brings its own templates (from ``origin``) would silently ignore
    ``prompt.template``."""
    if method.template:
        raise ValueError(
            f"prompt.template is not used by prompt={method.name} (its templates come from "
            f"{origin}); to evaluate your own template use prompt=manual "
            f"prompt.template='{method.template}'"
        )
