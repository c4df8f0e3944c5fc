"""`sparsecircuits task-corpus`: write a training corpus of sequence-continuation documents in the form
of Lan et al. (2024), optionally mixed with stdlib code (rendering and files only; the work is in
`data/task_corpus.py`). Train on it with `sparsecircuits train --sources OUT.jsonl` (docs/seqcont.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    check_output_path,
    collect,
    command_parser,
)
from sparsecircuits.data.config import TaskCorpusConfig


def _task_corpus_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write (one {\"text\": ...} document per line)")
    add_config_flags(p, TaskCorpusConfig, "corpus")


def cmd_task_corpus(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.data.task_corpus import write_task_corpus

    cfg = collect(args, TaskCorpusConfig, {})
    check_output_path(args.out, "file")
    stats = write_task_corpus(cfg, args.out)
    per_task = ", ".join(f"{t} {n}" for t, n in stats.docs_per_task.items())
    total = stats.sequence_chars + stats.stdlib_chars
    console.print(f"{stats.sequence_docs} sequence documents ({per_task}) and {stats.stdlib_docs} stdlib chunks; "
                  f"{total / 1e6:.2f} M characters, {100 * stats.stdlib_chars / max(total, 1):.0f}% code -> {args.out}")
    console.print("evaluation prompts are held out: the corpus uses subjects disjoint from the tasks' "
                  "(see `sparsecircuits.data.task_corpus`)")
    return 0


PARSERS: dict[str, ParserBuilder] = {"task-corpus": _task_corpus_parser}
COMMANDS = {"task-corpus": cmd_task_corpus}
