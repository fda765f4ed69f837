"""ptl-eval: score a manual template or exported prompts (prompt=exported prompt.path=RUN)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ptuning_lightning.experiment import CONFIG_DIR, run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
