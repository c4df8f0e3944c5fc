"""Binary next-token contrast tasks; importing this package registers the built-in tasks.

`base` holds examples, the registry, tokenizer checks, task loss and metric; the Python-code tasks
(Gao et al. 2025 and more) are in `python_syntax`, `python_names` and `python_statements` (shared
pieces in `python_code`); `sequences` holds Lan et al. 2024's sequence continuation, IOI and
greater-than; `agreement` the subject-verb agreement tasks of Marks et al. 2025."""

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
