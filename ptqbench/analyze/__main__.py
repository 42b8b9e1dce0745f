"""`python -m ptqbench.analyze model=... method=... bits=... [analyze.granularity=role]`: where a
method loses its accuracy (see ptqbench.analyze.app). Uses the main config (conf/config.yaml)
plus the `analyze` block of conf/analyze.yaml."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from ptqbench.config_store import register_configs

log = logging.getLogger("ptqbench")
register_configs()  # the schemas conf/ builds on, before Hydra composes


@hydra.main(version_base="1.3", config_path="../../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    from ptqbench.analyze.app import run_analysis
    from ptqbench.errors import PTQBenchError

    try:
        run_analysis(cfg)
    except PTQBenchError as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
