"""Where the configs live, and the resolvers they use (registered on import, before Hydra
composes a config).

- ``${ptl_root:}``: the repository, where ``conf/`` and ``data/`` ship;
- ``${ptl_unset:VAR}``: true when the environment variable is unset or empty (W&B's offline
  mode without an API key);
- ``${ptl_subdir:...}`` (``launch.sweeps``): a sweep job's folder, named after its overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[3]  # src/ptuning_lightning/launch/ -> the repository
CONFIG_DIR = str(ROOT / "conf")

OmegaConf.register_new_resolver("ptl_root", lambda: str(ROOT), replace=True)
OmegaConf.register_new_resolver("ptl_unset", lambda name: not os.environ.get(name), replace=True)
