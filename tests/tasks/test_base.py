"""The task registry: every task is found by `task.name`, an unknown one is refused with the list."""

import pytest

from ptqbench.errors import ConfigError
from ptqbench.tasks import TASKS, Task, get_task, register_task


def test_registered_tasks_and_their_headline_metrics():
    assert {name: get_task(name).headline for name in ("classification", "detection")} == {
        "classification": "top1", "detection": "coco/bbox_mAP"}
    assert all(isinstance(get_task(name), Task) for name in TASKS)


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"task='segmentation' is unknown; registered tasks: classification, detection"):
        get_task("segmentation")


def test_a_second_task_under_a_taken_name_is_refused():
    class Other(Task):
        name = "classification"

    with pytest.raises(ValueError, match="registered twice"):
        register_task(Other)
    assert TASKS["classification"].__name__ == "Classification"
