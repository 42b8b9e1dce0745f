"""Tasks: how a job's model is built, fed and scored (`Task`); the built-in ones register here."""

from ptqbench.tasks.base import TASKS, BuiltModel, CalibData, EvalData, Task, get_task, register_task
from ptqbench.tasks import classification, detection  # noqa: F401,E402  (register the built-in tasks)

__all__ = ["TASKS", "BuiltModel", "CalibData", "EvalData", "Task", "get_task", "register_task"]
