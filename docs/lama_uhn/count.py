"""How many test facts LAMA-UHN (``task.subset=uhn``) drops, per relation, for one backbone:
the counts a run writes to results.json (``filter.test``), and a few dropped facts of each
filter. No training or scoring.

    python docs/lama_uhn/count.py [RELATION ...] [-- OVERRIDES ...]

Relations default to P19 P27 P103 P1412 P36; overrides are Hydra's (default backbone:
smollm2-135m, the person-name probe's model).
"""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ptuning_lightning.lama.uhn import NameProbe, string_match
from ptuning_lightning.launch.builders import load_backbone
from ptuning_lightning.launch.config import CONFIG_DIR

RELATIONS = ["P19", "P27", "P103", "P1412", "P36"]
SHOWN = 4


def main(relations: list[str], overrides: list[str]) -> None:
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = compose("train", overrides=["logger=none", *overrides])
    backbone = load_backbone(cfg)
    probe = NameProbe(backbone)
    print(f"backbone {backbone.name}, task.vocab={cfg.task.vocab}")
    for relation in relations:
        subsets = {}
        for subset in (None, "uhn"):
            cfg.task.relation, cfg.task.subset = relation, subset
            data = instantiate(
                cfg.task,
                tokenizer=backbone.tokenizer,
                model_kind=backbone.kind,
                name_probe=probe,
            )
            data.setup()
            subsets[subset] = data
        test = subsets["uhn"].stats["test"]
        uhn = test["uhn"]
        before = test["kept"] + uhn["string_match"] + uhn["person_name"]
        print(
            f"{relation}: {before} test facts -> {test['kept']} on LAMA-UHN "
            f"(string match {uhn['string_match']}, person name {uhn['person_name']}, "
            f"probe {uhn['probe']})"
        )
        kept = {(e["sub"], e["obj"]) for e in subsets["uhn"].datasets["test"]}
        dropped = [
            (e["sub"], e["obj"])
            for e in subsets[None].datasets["test"]
            if (e["sub"], e["obj"]) not in kept
        ]
        for name, by_string in (("string match", True), ("person name", False)):
            shown = [f for f in dropped if string_match(*f) == by_string][:SHOWN]
            print(f"  {name}: " + "; ".join(f"{s} -> {o}" for s, o in shown))


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    main(args[:split] or RELATIONS, args[split + 1 :])
