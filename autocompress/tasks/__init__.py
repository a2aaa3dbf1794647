"""Tasks: what a network is trained and scored for (loss, distillation loss, metrics with their
directions, the primary metric), a registry of them and user tasks by import string."""

from ._base import Task, create_task, list_tasks, register_task, to_device
from .builtin import Classification, Regression, Segmentation

__all__ = [
    "Classification",
    "Regression",
    "Segmentation",
    "Task",
    "create_task",
    "list_tasks",
    "register_task",
    "to_device",
]
