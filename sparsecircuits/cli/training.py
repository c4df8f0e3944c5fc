"""CLI commands for models: `train`, `info`, `export`, `average` (rendering and files only; the work is
in `weight_sparse/run.py`, `weight_sparse/info.py`, `model/checkpoint.py` and `weight_sparse/average.py`).

The flags of `train` are generated from `ModelConfig`, `TrainConfig` and `DataConfig`; a `--preset`
sets their defaults and explicit flags override it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    cache_dir,
    check_output_path,
    command_parser,
    train_model,
)
from sparsecircuits.data.config import DataConfig
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.weight_sparse.config import TrainConfig
from sparsecircuits.weight_sparse.presets import PRESETS


def _train_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    presets_help = "; ".join(f"{n}: {pr.summary}" for n, pr in PRESETS.items())
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help=f"size preset ({presets_help}) (default: tiny)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<preset>[-dense])")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the newest checkpoint in --out (default: off)")
    p.add_argument("--cache-dir", type=Path, default=None, help="tokenizer/token cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")
    add_config_flags(p, ModelConfig, "model")
    add_config_flags(p, TrainConfig, "training")
    add_config_flags(p, DataConfig, "data")


def _info_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder (its newest checkpoint)")


def _export_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder (its newest checkpoint)")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="storage precision of the weights (default: float32)")


def _average_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("checkpoints", type=Path, nargs="+", help="two or more checkpoint folders of the same run")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--val", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute the validation loss on the run's data and store it in meta.json (default: on)")
    p.add_argument("--cache-dir", type=Path, default=None, help="tokenizer/token cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.cli.console import info_table
    from sparsecircuits.weight_sparse.info import checkpoint_info

    for table in info_table(checkpoint_info(args.checkpoint)):
        console.print(table)
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.model.checkpoint import export_checkpoint

    check_output_path(args.out, "dir", replaces=("config.json",))  # the folder is replaced whole
    path = export_checkpoint(args.checkpoint, args.out, args.dtype)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    console.print(f"exported {args.checkpoint} -> {path} ({args.dtype}, {size:.1f} MB)")
    return 0


def cmd_average(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.weight_sparse.average import average_checkpoints, record_validation_loss

    if len(args.checkpoints) < 2:
        raise ValueError("average needs two or more checkpoints")
    check_output_path(args.out, "dir", replaces=("config.json",))  # the folder is replaced whole
    with console.status("averaging checkpoints"):
        res = average_checkpoints(args.checkpoints, args.out)
    kept = f", sparse matrices projected {res.nonzeros_before:,} -> {res.nonzeros_after:,} nonzeros" if res.projected else ""
    console.print(f"averaged {len(res.sources)} checkpoints -> {res.path}{kept}")
    if args.val:
        with console.status("validation loss"):
            val = record_validation_loss(res.path, cache_dir(args))
        console.print(f"validation loss {val:.4f} nats/token")
    return 0


PARSERS: dict[str, ParserBuilder] = {"train": _train_parser, "info": _info_parser, "export": _export_parser,
                                     "average": _average_parser}
COMMANDS = {"train": train_model, "info": cmd_info, "export": cmd_export, "average": cmd_average}
