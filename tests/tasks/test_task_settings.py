"""Tasks read a job's typed settings, and validation runs the task's own refusals (one message each,
written in the task), before any work."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from ptqbench.config_store import register_configs
from ptqbench.errors import ConfigError
from ptqbench.paths import REPO_ROOT
from ptqbench.run import job_name, model_label
from ptqbench.validate import config_problems, validate_config


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides,message", [
    (["task.quantize=neck"], "task.quantize=neck: choose one of all, backbone"),
    (["quant.full=true"], "quant.full=true: the fully quantized roles exist for timm classifiers only; "
                          "use quant.full=false with task=detection"),
])
def test_detection_refusals_come_from_the_task_once(overrides, message):
    problems = config_problems(_compose("task=detection", *overrides))
    assert len(problems) == 1 and problems[0].startswith(message), problems


@pytest.mark.parametrize("method", ["gptq", "erq", "ptq4vit", "dopq", "aiq"])
def test_block_wise_methods_run_on_detection(method):
    """They walk the detector's backbone units (tests/tasks/test_detection_methods.py runs them)."""
    assert config_problems(_compose("task=detection", f"method={method}")) == []


def test_settings_are_typed_and_name_the_architecture_that_runs():
    s = validate_config(_compose("model.arch=test_vit", "model.tag=r160_in1k", "calib.size=4", "method=minmax"))
    assert (s.calib.size, s.run.seed, s.model.arch, s.method_name) == (4, 0, "test_vit", "minmax")
    assert job_name(s) == "deit_tiny[test_vit]-minmax-w4a4-c4s0"
    assert model_label("deit_tiny", "deit_tiny_patch16_224") == "deit_tiny"  # the zoo's own architecture
    assert model_label("mask_rcnn_swin_t", None) == "mask_rcnn_swin_t"
    with pytest.raises(ConfigError, match="calib.sizee"):
        validate_config(_compose("+calib.sizee=4"))
