"""The prompt methods that only LAMA has (``conf/prompt/``): published discrete prompts, the
training prior and the AutoPrompt search. The methods both families share are in
``prompting.methods``."""

from __future__ import annotations

from ptuning_lightning.lama.autoprompt import AutoPromptModule
from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.discrete import published_templates
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.methods import (
    Prompt,
    PromptMethod,
    Target,
    refuse_template,
)


class Discrete(PromptMethod):
    """A published discrete prompt per relation (``source``: LPAQA's or AutoPrompt's), evaluated
    as it is; ``top_k`` > 1 is LPAQA's weighted ensemble of its k top-weighted prompts."""

    families = ("lama",)

    def __init__(self, name: str, source: str, top_k: int, template: str | None = None) -> None:
        super().__init__(name, template)
        self.source, self.top_k = source, top_k

    @property
    def label(self) -> str:
        """The source (``lpaqa_mine``), with ``_top<k>`` for an ensemble."""
        return f"{self.source}_top{self.top_k}" if self.top_k > 1 else self.source

    @property
    def one_pass(self) -> bool:
        return self.top_k == 1  # an ensemble scores k templates per fact

    def prompt(self, target: Target, backbone: Backbone) -> Prompt:
        refuse_template(self, "prompt.source")
        causal = backbone.kind == "causal"
        templates, weights = published_templates(
            target.data_root, self.source, target.name, causal, self.top_k
        )
        return Prompt(templates, weights) if self.top_k > 1 else Prompt(templates[0])


class AutoPrompt(PromptMethod):
    """AutoPrompt's trigger-token search for the backbone at hand (``lama.autoprompt``)."""

    families = ("lama",)
    single_process = True

    def __init__(self, name: str, candidates: int, init_token: str, **options) -> None:
        """``candidates``: tokens the gradient proposes per iteration; ``init_token``: every
        trigger's first word; ``options``: as every method's."""
        super().__init__(name, **options)
        self.candidates, self.init_token = candidates, init_token

    @property
    def one_pass(self) -> bool:
        return False

    def module(self, backbone: Backbone, data: LamaDataModule, seed: int) -> AutoPromptModule:
        return AutoPromptModule(
            backbone,
            data.candidate_ids,
            data.template,
            candidates=self.candidates,
            init_token=self.init_token,
            seed=seed,
            loss_over=self.loss_over,
        )
