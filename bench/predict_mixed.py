"""Queries per second of ``Predictor`` with many relations mixed in each batch vs the same
queries asked one relation at a time (one ``predict`` call per relation).

Every relation gets a prompt of the paper's shape (``[P*3] [X] [P*3] [Y] [P*3]``) with random
rows: the speed does not depend on what the rows hold. The queries are the first ``--facts``
test facts of each relation, shuffled (seeded) for the mixed contender. Both contenders answer
the same queries with the same batch size; they alternate in shuffled order each round, and
the median of the per-round ratios is printed (see ``common.alternate``). One relation at a
time pays one ``Trainer.predict`` setup per relation, as a caller asking relation by relation
would; the script prints that setup's cost (one query) too.

    python bench/predict_mixed.py [--relations 41] [--facts 16] [--rounds 5] [--override K=V]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch
from common import alternate, compose_train, median, paired_ratio, timed

from ptuning_lightning.lama.data import LamaDataModule, lama_relations
from ptuning_lightning.lama.predict import Predictor, quiet_trainer
from ptuning_lightning.launch.builders import load_backbone
from ptuning_lightning.prompting.encoders import export_prompt

TEMPLATE = "[P*3] [X] [P*3] [Y] [P*3]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relations", type=int, default=41, help="the first N of the 41")
    parser.add_argument("--facts", type=int, default=16, help="test facts per relation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--override", action="append", default=[], help="a Hydra override")
    args = parser.parse_args()

    cfg = compose_train(args.override)
    backbone = load_backbone(cfg)
    root, key = cfg.task.data_root, cfg.backbone.vocab_key
    torch.manual_seed(0)
    relations = lama_relations(root)[: args.relations]
    queries, folder = [], Path(tempfile.mkdtemp())
    for relation in relations:
        data = LamaDataModule(
            root, relation, backbone.tokenizer, backbone.kind, TEMPLATE, vocab_key=key
        )
        data.setup()
        rows = torch.randn(data.template.n_prompt, backbone.hidden_size)
        rows *= float(backbone.embeddings.float().std())
        export_prompt(folder / relation / "prompt.pt", rows, TEMPLATE, backbone, relation)
        facts = data.datasets["test"][: args.facts]
        queries += [{"relation": relation, "sub": f["sub"], "obj": f["obj"]} for f in facts]
    predictor = Predictor.load(folder, backbone=backbone, vocab_key=key, batch_size=args.batch_size)
    trainer = quiet_trainer()
    mixed = random.Random(0).sample(queries, len(queries))
    grouped = [[q for q in queries if q["relation"] == r] for r in relations]

    def ask_mixed(_: object) -> None:
        predictor.predict(mixed, trainer=trainer)

    def ask_grouped(_: object) -> None:
        for group in grouped:
            predictor.predict(group, trainer=trainer)

    one = [queries[0]]
    setup = median([timed(lambda: predictor.predict(one, trainer=trainer)) for _ in range(5)])
    contenders = {"mixed": ask_mixed, "one relation at a time": ask_grouped}
    rounds = [dict.fromkeys(contenders) for _ in range(args.rounds + 1)]
    times = alternate(contenders, rounds)
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"{len(queries)} queries, {len(relations)} relations, batch {args.batch_size}, {device}")
    for name, t in times.items():
        print(f"{name:24s} {len(queries) / median(t):8.1f} queries/s (median of {args.rounds})")
    print(f"one predict call of a single query: {setup * 1000:.0f} ms")
    ratio = paired_ratio(times["one relation at a time"], times["mixed"])
    print(f"time one relation at a time / mixed (median per round): {ratio:.3f}")


if __name__ == "__main__":
    main()
