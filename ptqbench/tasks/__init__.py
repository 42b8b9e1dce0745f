"""Tasks: how a job's model is built, fed and scored (`Task`). Importing this package imports every
module in it, and each task module registers itself (`@register_task`), so adding a task is adding
one file."""

import importlib
import pkgutil

from ptqbench.tasks.base import TASKS, BuiltModel, CalibData, EvalData, Task, get_task, register_task

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "BuiltModel", "CalibData", "EvalData", "Task", "get_task", "register_task"]
