"""Loading what several commands take: a model (one of our checkpoints or a Hugging Face model), a
task for it (`--task` / `--task-file`, flags from `model_task_flags`) and dictionary folders. Library
code is imported inside the functions, so the CLI starts without torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sparsecircuits.cli.common import at_least


def model_task_flags(p: argparse.ArgumentParser) -> None:
    """--model, --task / --task-file and --n-examples (read by `load_model` and `load_task`)."""
    p.add_argument("--model", required=True, help="our checkpoint / run folder, or a Hugging Face folder or cached name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a built-in task (see `sparsecircuits tasks`)")
    src.add_argument("--task-file", type=Path, help="a JSONL task: prompt, correct, incorrect[, counterfactual]")
    p.add_argument("--n-examples", type=at_least(1), default=64, help="examples of a built-in task (default: 64)")


def load_model(name: str | Path) -> tuple[Any, Any, Any]:
    """(model, tokenizer, checkpoint-or-None) from our checkpoint or a Hugging Face folder / name."""
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.model.load import load_pretrained

    path = Path(name)
    cfg = path / "config.json"
    ours = path.exists() and (not cfg.exists() or "model_type" not in _read_config(cfg))
    if ours:
        ck = load_checkpoint(path)
        if ck.tokenizer_path is None:
            raise ValueError(f"{ck.path} has no tokenizer.json; tasks need the model's tokenizer")
        return ck.model.eval(), load_tokenizer(ck.tokenizer_path), ck
    pre = load_pretrained(name)
    if pre.tokenizer is None:
        raise ValueError(f"{pre.path} has no tokenizer.json; tasks need the model's tokenizer")
    return pre.model.eval(), pre.tokenizer, None


def precheck_task_file(task_file: Path | None, source: str | Path | None) -> None:
    """Read and validate `--task-file` before torch is imported or a model loaded, so a malformed or
    oversized file fails in milliseconds: the line cap comes from the context length in `source`'s
    config.json (ours: `n_ctx`; HF: `n_positions` / `max_position_embeddings`). Without a readable
    context length the check waits for the model (`tasks.base.load_jsonl_task` checks again)."""
    if task_file is None or source is None:
        return
    from sparsecircuits.task_files import max_line_bytes, read_jsonl_lines

    cfg = Path(source) / "config.json"
    if not cfg.is_file():
        return
    raw = _read_config(cfg)
    n_ctx = next((raw[k] for k in ("n_ctx", "n_positions", "max_position_embeddings") if isinstance(raw.get(k), int)), 0)
    if n_ctx > 0:
        read_jsonl_lines(Path(task_file), max_line_bytes(n_ctx))


def _read_config(path: Path) -> dict[str, Any]:
    """A config.json as a dict; unreadable or broken JSON is an error naming the file and line."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not UTF-8 text, not a model config") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(raw).__name__}, not a model config")
    return raw


def load_task(args: argparse.Namespace, model: Any, tok: Any, name: str | None = None) -> Any:
    """The task of `--task-file`, else the built-in task `name` (default `--task`), for the model."""
    from sparsecircuits.tasks.base import load_jsonl_task
    from sparsecircuits.tasks.base import load_task as load_builtin

    if name is None and getattr(args, "task_file", None):
        return load_jsonl_task(args.task_file, tok, model.cfg.n_ctx)
    return load_builtin(name or args.task, tok, model.cfg.n_ctx, args.n_examples)


def load_dictionaries(paths: list[Path]) -> list[Any]:
    """Every dictionary folder named, or found one level below a named folder."""
    from sparsecircuits.dictionaries.formats import CFG, load_dictionary

    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"dictionary path {str(path)!r} does not exist")
        folders = [path] if (path / CFG).exists() else sorted(p for p in path.iterdir() if (p / CFG).exists())
        if not folders:
            raise ValueError(f"{str(path)!r} holds no dictionary ({CFG}) and no folders with one")
        out += [load_dictionary(f) for f in folders]
    return out
