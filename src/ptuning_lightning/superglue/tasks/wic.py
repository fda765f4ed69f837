"""WiC: is the word used in the same sense in both sentences? (true -> Yes, false -> No)"""

from __future__ import annotations

from ptuning_lightning.superglue.data import SuperGlueDataModule


class WiCDataModule(SuperGlueDataModule):
    folder = "WiC"
    templates = {
        0: '"[sentence1]" / "[sentence2]" Question: Is the word "[word]" used in the same sense'
        " in both sentences? [P] Answer: [Y].",
        1: '[P*2] "[sentence1]" / "[sentence2]" [P*2] "[word]"? [P*2] [Y].',
    }
    manual_templates = {
        0: '"[sentence1]" / "[sentence2]" Question: Is the word "[word]" used in the same sense'
        " in both sentences? Answer: [Y].",
        1: '[sentence1] [sentence2] Does "[word]" have the same meaning in both sentences?'
        " Answer: [Y].",
    }
    fields = ("sentence1", "sentence2", "word")
    verbalizer = {"true": "Yes", "false": "No"}
