"""P-Tuning minus MP on seen and on unseen objects, with paired 95% bootstrap intervals.

ptl-report splits its paired bootstrap by seen / unseen objects for results that record
each fact's flag (``test_seen``); this sweep's results were written before that field. This
script recomputes the flags: from each row's per-fact hits (``test_hits`` in results.json,
in split order) and each test fact's object (the same LAMA filter as the runs), the macro
difference between two rows on the facts whose object is (seen) or is not (unseen) among the
relation's training objects. Macro as in results.json: the mean over the relations with facts
in the part. Facts are resampled within each relation, 2000 samples, seeded.

    python docs/knowledge_controls/unseen_gain.py logs/knowledge_controls \
        knowledge_row=ptuning knowledge_row=manual
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.run import training_objects
from ptuning_lightning.launch.builders import load_backbone
from ptuning_lightning.launch.config import CONFIG_DIR

SAMPLES = 2000


def main(sweep: str, a: str, b: str) -> None:
    rows = {name: json.loads((Path(sweep) / name / "results.json").read_text()) for name in (a, b)}
    relations = list(rows[a]["relations"])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=."])
    backbone = load_backbone(cfg)
    rng = np.random.default_rng(0)
    parts: dict[str, list[np.ndarray]] = {"seen": [], "unseen": []}
    points: dict[str, list[float]] = {"seen": [], "unseen": []}
    for relation in relations:
        data = LamaDataModule(
            cfg.task.data_root,
            relation,
            backbone.tokenizer,
            backbone.kind,
            vocab_key=cfg.backbone.vocab_key,
        )
        data.setup()
        train = training_objects(data)
        seen = np.array([e["obj"] in train for e in data.datasets["test"]])
        hits = {
            n: np.array([c == "1" for c in r["relations"][relation]["test_hits"]])
            for n, r in rows.items()
        }
        assert len(seen) == len(hits[a]) == len(hits[b]), relation
        assert seen.sum() == rows[a]["relations"][relation]["test_seen_n"], relation
        for part, mask in (("seen", seen), ("unseen", ~seen)):
            n = int(mask.sum())
            if n == 0:
                continue
            diff = hits[a][mask].astype(float) - hits[b][mask].astype(float)
            points[part].append(diff.mean())
            parts[part].append(diff[rng.integers(0, n, size=(SAMPLES, n))].mean(1))
    for part in ("seen", "unseen"):
        samples = np.mean(parts[part], axis=0)
        low, high = np.percentile(samples, [2.5, 97.5])
        print(
            f"{part:6s} {a} - {b}: {100 * np.mean(points[part]):+.1f} points "
            f"[{100 * low:+.1f}, {100 * high:+.1f}] over {len(parts[part])} relations"
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
