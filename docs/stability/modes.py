"""One pass vs separate runs of the same P-Tuning setting, per relation: is the one pass's mean
over seeds within the seed spread (lowest to highest seed) of the separate runs? Reads the
results.json under the folders with ptl-report's own rows; compares every two P-Tuning rows
whose settings differ in ``multi_relation`` alone.

    python docs/stability/modes.py logs/stability
"""

from __future__ import annotations

import sys
from statistics import mean

from ptuning_lightning import reporting
from ptuning_lightning.lama import report


def main(folders: list[str]) -> None:
    t = report.tables(reporting.load_runs(folders)[0])
    pairs: dict[tuple, dict[str, report.Row]] = {}
    for row in t.rows:
        setting = dict(row.key.setting)
        mode = setting.pop("multi_relation", None)
        if row.key.method == "ptuning" and mode is not None:
            pairs.setdefault(tuple(sorted(setting.items())), {})[mode] = row
    for setting, modes in pairs.items():
        if set(modes) != {"false", "true"}:
            continue
        separate, one_pass = modes["false"], modes["true"]
        print(f"\n{separate.key.backbone}, ptuning {dict(setting) or ''}\n")
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
