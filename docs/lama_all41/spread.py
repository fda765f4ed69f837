"""Seed-to-seed spread per relation: for every ptl-report row with several seeds, the relations
whose test P@1 ranges over more than ``WIDE`` (lowest to highest seed), with each seed's
score.

    python docs/lama_all41/spread.py logs/cpu_all41_s34 logs/cpu_all41_s36
"""

from __future__ import annotations

import sys

from ptuning_lightning import reporting
from ptuning_lightning.lama import report

WIDE = 0.10  # fixed in docs/lama_all41/README.md before seeds 35 and 36 were read


def main(folders: list[str]) -> None:
    t = report.tables(reporting.load_runs(folders)[0])
    for row in t.rows:
        if len(row.seeds) < 2:
            continue
        wide = []
        for relation in t.relations:
            by_seed = {
                seed: r[relation]["test_p1"]
                for seed, r in sorted(row.seeds.items())
                if relation in r
            }
            scores = list(by_seed.values())
            if len(scores) > 1 and max(scores) - min(scores) > WIDE:
                wide.append((relation, by_seed))
        print(f"\n{row.key.backbone} / {row.key.label()}: {len(row.seeds)} seeds")
        span_text = f"span more than {100 * WIDE:.0f} points from the lowest to the highest seed"
        print(f"{len(wide)} of {len(row.relations)} relations {span_text}:\n")
        print("| relation | test P@1 per seed | range |")
        print("|---|---|---|")
        for relation, by_seed in wide:
            per_seed = ", ".join(f"{seed}: {100 * s:.1f}" for seed, s in by_seed.items())
            span = max(by_seed.values()) - min(by_seed.values())
            print(f"| {relation} | {per_seed} | {100 * span:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
