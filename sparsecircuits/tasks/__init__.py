"""Binary next-token contrast tasks; importing this package registers the built-in tasks."""

from sparsecircuits.tasks import agreement, python_names, python_statements, python_syntax, sequences  # noqa: F401  (registers the tasks)
from sparsecircuits.tasks.base import (
    TASKS,
    Example,
    TaskData,
    TaskError,
    TaskSpec,
    get_task,
    last_logits,
    load_jsonl_task,
    load_task,
    logit_diff,
    read_jsonl_task,
    register_task,
    task_loss,
    tokenize_task,
)

__all__ = ["TASKS", "Example", "TaskData", "TaskError", "TaskSpec", "get_task", "last_logits", "load_jsonl_task",
           "load_task", "logit_diff", "read_jsonl_task", "register_task", "task_loss", "tokenize_task"]
