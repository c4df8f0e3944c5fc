"""What every command module of the CLI shares: the rich `console`, flags generated from config
dataclasses (`add_config_flags`, `collect`), the cache folder, the error handling around a command
(`run`) and the training run that `train` and `quickstart --retrain` both do (`train_model`).

Flags generated from a config: every field is a kebab-case flag with its help text and default,
booleans are negatable (`--bigram-table / --no-bigram-table`), tuples take several values. A preset
(or a command's own defaults) sets values; explicit flags override them.

This module loads at start-up (`sparsecircuits --help`), so it imports neither torch nor anything
that does; library code is imported inside the functions that use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()

Command = Callable[[argparse.Namespace, Console], int]  # runs a command; returns the exit code
ParserBuilder = Callable[[argparse._SubParsersAction, str, str], None]  # adds a command's sub-parser

# ModelConfig fields that are not flags: the vocabulary comes from the tokenizer (--vocab-size).
HIDDEN_FIELDS = {"d_vocab"}


def command_parser(sub: argparse._SubParsersAction, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    """The sub-parser of command `name`; its one-line help (from the command table) is also the
    description that `sparsecircuits <name> --help` shows."""
    return sub.add_parser(name, help=help, description=help, **kw)


def default_cache_dir() -> Path:
    """Cache for tokenizers and token files: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits."""
    env = os.environ.get("SPARSECIRCUITS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparsecircuits"


def cache_dir(args: argparse.Namespace) -> Path:
    """The command's --cache-dir, else the default cache."""
    return args.cache_dir or default_cache_dir()


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                     defaults: dict[str, Any] | None = None) -> None:
    """One flag per dataclass field (`--{prefix}{field}`); defaults are SUPPRESSed so we can tell what
    the user set. Nested config dataclasses are not flags: give them their own call (with a prefix).
    `defaults` overrides the help's default of some fields (a command's own preset, see `collect`).
    Placeholders are the field's name in capitals (`--steps STEPS`, `--widths [WIDTHS ...]`)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in HIDDEN_FIELDS:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = (defaults or {}).get(f.name, default)
        if dataclasses.is_dataclass(default):
            continue
        help_text = f"{f.metadata.get('help', '')} (default: {_show(default)})"
        kind = str(f.type)
        kw: dict[str, Any] = dict(dest=f"{cls.__name__}.{f.name}", default=argparse.SUPPRESS, help=help_text)
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif kind.startswith("tuple"):
            group.add_argument(flag, nargs="*", metavar=f.name.upper(), **kw)
        else:
            group.add_argument(flag, type={"int": int, "float": float}.get(kind, str), metavar=f.name.upper(), **kw)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    return str(value)


def collect(args: argparse.Namespace, cls: type, preset: dict[str, Any]) -> Any:
    """Build a config: dataclass defaults < preset < explicit flags."""
    values = dict(preset)
    prefix = cls.__name__ + "."
    for key, value in vars(args).items():
        if key.startswith(prefix):
            values[key[len(prefix) :]] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def run(command: Command, args: argparse.Namespace) -> int:
    """Run a command: bad input (a ValueError, which CheckpointError and TaskError are, or a missing
    file) is one red line and exit code 2 (a traceback with SPARSECIRCUITS_DEBUG=1); Ctrl-C is 130."""
    # Under torchrun only rank 0 talks; training commands start the process group themselves.
    console.quiet = os.environ.get("RANK", "0") != "0" or console.quiet
    try:
        return command(args, console)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("SPARSECIRCUITS_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {e}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the newest checkpoint is intact; rerun with --resume to continue")
        return 130
    finally:
        if "torch" in sys.modules:  # without torch there is no process group (and no need to load it to see)
            from sparsecircuits import distributed

            distributed.shutdown()


def train_model(args: argparse.Namespace, console: Console) -> int:
    """The `train` command, also run by `quickstart --retrain`: a model from a preset and the config
    flags in `args` (preset, out, resume, cache_dir, `TrainConfig.*` ...), with a progress bar and a
    result table."""
    from rich.table import Table

    from sparsecircuits.cli.console import TrainProgress
    from sparsecircuits.data.config import DataConfig
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.weight_sparse.config import TrainConfig
    from sparsecircuits.weight_sparse.presets import get_preset
    from sparsecircuits.weight_sparse.run import RunSpec, train_run

    preset = get_preset(args.preset)
    data = collect(args, DataConfig, preset.data)
    model = collect(args, ModelConfig, {**preset.model, "d_vocab": data.vocab_size})
    train = collect(args, TrainConfig, preset.train)
    out = args.out or Path("runs") / (args.preset + ("-dense" if train.dense else ""))
    spec = RunSpec(model, train, data)
    kind = "dense twin" if train.dense else "weight-sparse model"
    console.print(f"[bold]Training a {kind}[/] ({args.preset}: {model.n_layers} layers, d_model {model.d_model}, "
                  f"{train.steps} steps of {train.batch_size}x{model.n_ctx} tokens) -> {out}")
    t0 = time.perf_counter()
    with TrainProgress(console) as progress:
        result = train_run(spec, out, cache_dir(args), resume=args.resume, on_step=progress.on_step,
                           on_data=progress.on_data)
    table = Table(title=f"{kind} trained in {time.perf_counter() - t0:.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("steps", str(result.step))
    table.add_row("train loss (last step)", f"{result.train_loss:.3f}" if result.train_loss is not None else "-")
    table.add_row("validation loss", f"{result.val_loss:.3f}" if result.val_loss is not None else "-")
    table.add_row("bigram-only baseline (val)", f"{result.bigram_baseline:.3f}")
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)
    return 0
