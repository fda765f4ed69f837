"""One pass vs separate runs of the same P-Tuning recipe, per relation: is the one pass's mean
over seeds within the seed spread (lowest to highest seed) of the separate runs? Reads the
results.json under the folders with ptl-report's own rows (a row per ``multi_relation``).

    python docs/stability/modes.py logs/stability
"""

from __future__ import annotations

import sys
from statistics import mean

from ptuning_lightning import reporting
from ptuning_lightning.lama import report


def main(folders: list[str]) -> None:
    t = report.tables(reporting.load_runs(folders)[0])
    modes = {
        dict(row.key.setting).get("multi_relation"): row
        for row in t.rows
        if row.key.method == "ptuning"
    }
    separate, one_pass = modes["false"], modes["true"]
    print("| relation | separate, per seed | one pass, per seed | one pass mean in spread |")
    print("|---|---|---|---|")
    inside = 0
    for relation in t.relations:
        each, joint = separate.scores(relation), one_pass.scores(relation)
        ok = min(each) <= mean(joint) <= max(each)
        inside += ok
        cells = [" / ".join(f"{100 * s:.1f}" for s in scores) for scores in (each, joint)]
        print(f"| {relation} | {cells[0]} | {cells[1]} | {'yes' if ok else 'no'} |")
    print(f"\nOne pass mean within the separate runs' spread: {inside} of {len(t.relations)}.")


if __name__ == "__main__":
    main(sys.argv[1:])
