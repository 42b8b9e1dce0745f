"""The paper-table experiments live in experiments/ and are found through Hydra's search path from
any working directory; experiments/README.md has one row per experiment with its command."""

import re

import pytest
from hydra import compose, initialize_config_dir
from tests.conftest import REPO

from ptqbench.paths import EXPERIMENT_CONFIGS, experiment_names

NAMES = experiment_names()


def test_experiments_are_in_experiments_not_conf():
    assert NAMES and not (REPO / "conf" / "experiment").exists()


@pytest.mark.parametrize("name", NAMES)
def test_experiment_composes_from_another_working_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a file:// search path relative to the cwd would not be found here
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert cfg.report.name == name
    assert cfg.hydra.sweeper.params.model  # the table's grid came with it
    assert f"+experiment=NAME, NAME one of {', '.join(NAMES)} " in cfg.hydra.help.footer  # --help lists them


def test_readme_has_one_row_with_the_command_per_experiment():
    text = (EXPERIMENT_CONFIGS.parent / "README.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", text, re.M)}
    assert sorted(rows) == NAMES
    for name, row in rows.items():
        assert f"python -m ptqbench -m +experiment={name}" in row, row
