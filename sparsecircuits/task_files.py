"""User task files (JSONL) read and validated without torch: one JSON object per line with `prompt`,
`correct`, `incorrect` and optional `counterfactual` (DESIGN.md "Tasks"; `tasks.base` tokenizes them).

The file is read once, line by line, in bytes: a line longer than `max_line_bytes(n_ctx)` (the most a
prompt that fits the model's context can take) is refused after reading that many bytes, so a 50 MB
line costs milliseconds and no memory; non-UTF-8 text, broken JSON and malformed objects are errors
naming the file and line. Torch-free, so the CLI checks a `--task-file` before it imports torch or
loads a model (`cli.loading.precheck_task_file`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class TaskError(ValueError):
    """A task or one of its examples is malformed or does not fit the tokenizer."""


@dataclass(frozen=True)
class Example:
    prompt: str
    correct: str  # continuation whose first token is the correct answer
    incorrect: str  # continuation whose first token is the incorrect answer
    counterfactual: str | None = None  # a prompt whose correct continuation is `incorrect`



CHARS_PER_TOKEN = 64  # no BPE token of a real vocabulary is longer: a text over CHARS_PER_TOKEN x n_ctx characters cannot fit


def max_prompt_chars(n_ctx: int) -> int:
    """The longest prompt (characters) that could still fit a context of `n_ctx` tokens; a longer
    one is refused before BPE (encoding megabytes only to find they do not fit costs minutes)."""
    return CHARS_PER_TOKEN * n_ctx


def max_line_bytes(n_ctx: int) -> int:
    """The longest task-file line (bytes) worth reading: a prompt and a counterfactual of
    `max_prompt_chars` each, in UTF-8 (up to 4 bytes a character), plus the answers and the JSON."""
    return 2 * 4 * max_prompt_chars(n_ctx) + 4096


def read_jsonl_task(path: Path, max_line: int | None = None) -> list[Example]:
    """User task: one JSON object per line with `prompt`, `correct`, `incorrect`, optional
    `counterfactual`. `max_line`: refuse a line longer than this many bytes (see `max_line_bytes`)."""
    return [ex for _, ex in read_jsonl_lines(path, max_line)]


def read_jsonl_lines(path: Path, max_line: int | None) -> list[tuple[int, Example]]:
    """(line number, example) of each non-blank line. The file is read once, line by line, in bytes:
    a line over `max_line` bytes is refused after reading `max_line` + 2 bytes of it (a 50 MB line
    costs no memory); every error names the file and the line."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"task file {str(path)!r} does not exist")
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} is not a file")
    out = []
    try:
        f = path.open("rb")
    except OSError as e:
        raise TaskError(f"cannot read task file {str(path)!r} ({(e.strerror or str(e)).lower()})") from None
    with f:
        n = 0
        while raw := (f.readline(max_line + 2) if max_line is not None else f.readline()):
            n += 1
            body = raw.rstrip(b"\r\n")
            if max_line is not None and len(body) > max_line:
                raise TaskError(f"{path}:{n}: line longer than {max_line:,} bytes, the most a prompt that fits the "
                                "model's context can take; refused before reading the rest")
            try:
                line = body.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise TaskError(f"{path}:{n}: not UTF-8 text (byte 0x{body[e.start]:02x} at column {e.start + 1})") from None
            if line.strip():
                out.append((n, _parse_line(path, n, line)))
    if not out:
        raise TaskError(f"task file {str(path)!r} holds no examples")
    return out


def _parse_line(path: Path, n: int, line: str) -> Example:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise TaskError(f"{path}:{n}: not a task example (JSON nested too deeply)") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("prompt", "correct", "incorrect") if not isinstance(obj.get(k), str) or not obj[k]]
    if missing:
        raise TaskError(f"{path}:{n}: missing or empty string field(s) {missing}")
    unknown = sorted(set(obj) - {"prompt", "correct", "incorrect", "counterfactual"})
    if unknown:
        raise TaskError(f"{path}:{n}: unknown field(s) {[u[:40] for u in unknown[:5]]}")
    cf = obj.get("counterfactual")
    if cf is not None and not isinstance(cf, str):
        raise TaskError(f"{path}:{n}: counterfactual must be a string, got {type(cf).__name__}")
    return Example(obj["prompt"], obj["correct"], obj["incorrect"], cf)
