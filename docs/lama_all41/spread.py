"""One P-Tuning row's seeds across committed ``ptl-report`` folders: each seed's macro test
P@1 and their mean ± std, the relations whose mean over seeds is below the prior's or MP's, the
collapsed runs, and the relations whose test P@1 spans more than ``WIDE`` from the lowest to
the highest seed. It reads each folder's ``table3_collapse.csv`` (a line per relation and
seed: test P@1, the prior's, the collapse rate), so seeds reported in different sessions
combine without their logs. A report without an ``encoder`` column had one encoder: name it
as ENCODER only if it is that one.

    python docs/lama_all41/spread.py lstm docs/lama_all41/seeds docs/lama_all41/seed35_mlp
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from statistics import mean, stdev

WIDE = 10.0  # points; fixed in docs/lama_all41/README.md before seeds 35 and 36 were read
PRECISION = 0.01  # points: the CSV's rounding; closer to the prior than this cannot be called


def table3_lines(folders: list[str]) -> list[tuple[Path, dict[str, str]]]:
    """Every line of the folders' table3_collapse.csv, with the file it is from."""
    out = []
    for folder in folders:
        path = Path(folder) / "table3_collapse.csv"
        with path.open(newline="") as f:
            out += [(path, line) for line in csv.DictReader(f)]
    return out


def seed_scores(encoder: str, folders: list[str]) -> dict[tuple[str, int], dict[str, str]]:
    """(relation, seed) -> its table3_collapse.csv line, for ``ptuning`` with ``encoder``."""
    lines: dict[tuple[str, int], dict[str, str]] = {}
    for path, line in table3_lines(folders):
        if line["method"] != "ptuning" or line.get("encoder", encoder) != encoder:
            continue
        key = (line["relation"], int(line["seed"]))
        if key in lines:
            raise SystemExit(f"{path}: relation {key[0]} seed {key[1]} is reported twice")
        lines[key] = line
    return lines


def manual_scores(folders: list[str]) -> dict[str, float]:
    """Relation -> MP's test P@1 (it trains nothing: every report must give the same)."""
    scores: dict[str, float] = {}
    for path, line in table3_lines(folders):
        if line["method"] == "manual":
            p1 = float(line["test_p1"])
            if scores.setdefault(line["relation"], p1) != p1:
                raise SystemExit(f"{path}: MP on {line['relation']} differs from another report")
    return scores


def main(encoder: str, folders: list[str]) -> None:
    lines = seed_scores(encoder, folders)
    seeds = sorted({seed for _, seed in lines})
    relations = sorted({relation for relation, _ in lines}, key=lambda r: int(r[1:]))
    missing = [(r, s) for r in relations for s in seeds if (r, s) not in lines]
    if missing:
        raise SystemExit(f"seeds cover different relations; missing (relation, seed): {missing}")
    p1 = {key: float(line["test_p1"]) for key, line in lines.items()}
    macro = {s: mean(p1[r, s] for r in relations) for s in seeds}
    print(f"ptuning ({encoder}), {len(relations)} relations, seeds {seeds}")
    per_seed = ", ".join(f"{s}: {m:.1f}" for s, m in macro.items())
    spread = f" ± {stdev(macro.values()):.1f}" if len(seeds) > 1 else " (one seed: no std)"
    print(f"macro test P@1: {mean(macro.values()):.1f}{spread} ({per_seed})")

    prior = {r: float(lines[r, seeds[0]]["prior_p1"]) for r in relations}
    for name, reference in (("the prior", prior), ("MP", manual_scores(folders))):
        if set(reference) < set(relations):
            print(f"\n(no {name} on {sorted(set(relations) - set(reference))}: not compared)")
            continue
        gap = {r: mean(p1[r, s] for s in seeds) - reference[r] for r in relations}
        for part, chosen in (
            (f"below {name}", [r for r in relations if gap[r] <= -PRECISION]),
            (
                f"at {name} (too close to call at the CSV's 0.01)",
                [r for r in relations if abs(gap[r]) < PRECISION],
            ),
        ):
            print(f"\nmean over seeds {part}: {len(chosen)} of {len(relations)}")
            for r in chosen:
                scores = ", ".join(f"{p1[r, s]:.2f}" for s in seeds)
                print(f"  {r}: {scores} ({name} {reference[r]:.2f})")

    collapsed = [(key, line) for key, line in lines.items() if line["collapsed"] == "True"]
    print(f"\ncollapsed runs: {len(collapsed)} of {len(lines)}")
    for (r, s), line in sorted(collapsed, key=lambda c: (int(c[0][0][1:]), c[0][1])):
        print(f'  {r} seed {s}: {line["collapse_rate"]} "{line["most_predicted"]}"')

    print(f"\nrelations spanning more than {WIDE:.0f} points between seeds:\n")
    print("| relation | test P@1 per seed | range |")
    print("|---|---|---|")
    for r in relations:
        scores = [p1[r, s] for s in seeds]
        if max(scores) - min(scores) > WIDE:
            per_seed = ", ".join(f"{s}: {p1[r, s]:.1f}" for s in seeds)
            print(f"| {r} | {per_seed} | {max(scores) - min(scores):.1f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
