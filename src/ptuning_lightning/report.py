"""ptl-report: gather ``results.json`` of finished runs into the paper's comparison table.

Rows are backbone x method; columns are test P@1 per relation and the macro average over the
relations. Runs of several seeds are averaged per cell.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean


def load_runs(dirs: list[str | Path]) -> list[dict]:
    """Every ``results.json`` found under the given run or sweep folders."""
    runs = []
    for folder in map(Path, dirs):
        if not folder.exists():
            raise FileNotFoundError(f"no such run folder: {folder}")
        runs += [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]
    return runs


def comparison(runs: list[dict]) -> tuple[list[str], dict[tuple[str, str], dict[str, float]]]:
    """(relations, {(backbone, method): {relation: test P@1, "macro": ...}}), seeds averaged."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for relation, r in run["relations"].items():
            cells[run["backbone"], run["method"]][relation].append(r["test_p1"])
    relations = sorted({rel for row in cells.values() for rel in row})
    table = {}
    for key, row in sorted(cells.items()):
        scores = {rel: mean(values) for rel, values in row.items()}
        scores["macro"] = mean(scores[rel] for rel in relations if rel in scores)
        table[key] = scores
    return relations, table


def markdown(relations: list[str], table: dict[tuple[str, str], dict[str, float]]) -> str:
    head = ["backbone", "method", *relations, "macro"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (backbone, method), scores in table.items():
        cells = [f"{100 * scores[c]:.1f}" if c in scores else "—" for c in [*relations, "macro"]]
        lines.append("| " + " | ".join([backbone, method, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run or sweep folders holding results.json")
    args = parser.parse_args(argv)
    runs = load_runs(args.dirs)
    if not runs:
        raise SystemExit(f"no results.json under {', '.join(args.dirs)}")
    print("Test P@1 (%)\n")
    print(markdown(*comparison(runs)))


if __name__ == "__main__":
    main()
