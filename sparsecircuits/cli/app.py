"""`sparsecircuits <command>`: the command line. It owns all output (rich) and all file choices.

Flags of `train` are generated from the config dataclasses (`ModelConfig`, `TrainConfig`,
`DataConfig`): every field is a kebab-case flag with its help text and default, booleans are
negatable (`--bigram-table / --no-bigram-table`), tuples take several values. A `--preset` sets
defaults; explicit flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sparsecircuits.weight_sparse.presets import PRESETS, get_preset

console = Console()

# ModelConfig fields that are not flags: the vocabulary comes from the tokenizer (--vocab-size).
HIDDEN_FIELDS = {"d_vocab"}


def default_cache_dir() -> Path:
    """Cache for tokenizers and token files: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits."""
    env = os.environ.get("SPARSECIRCUITS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparsecircuits"


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                     defaults: dict[str, Any] | None = None) -> None:
    """One flag per dataclass field (`--{prefix}{field}`); defaults are SUPPRESSed so we can tell what
    the user set. Nested config dataclasses are not flags: give them their own call (with a prefix).
    `defaults` overrides the help's default of some fields (a command's own preset, see `collect`)."""
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
            group.add_argument(flag, nargs="*", metavar="VALUE", **kw)
        else:
            group.add_argument(flag, type={"int": int, "float": float}.get(kind, str), **kw)


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


def build_parser() -> argparse.ArgumentParser:
    from sparsecircuits.data.corpus import DataConfig
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.weight_sparse.prune import PruneConfig
    from sparsecircuits.weight_sparse.quickstart import QUICKSTART_PRUNE
    from sparsecircuits.weight_sparse.train import TrainConfig

    parser = argparse.ArgumentParser(prog="sparsecircuits", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a weight-sparse transformer (or its dense twin) on code",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    presets_help = "; ".join(f"{n}: {pr.summary}" for n, pr in PRESETS.items())
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help=f"size preset ({presets_help})")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<preset>[-dense])")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the newest checkpoint in --out")
    p.add_argument("--cache-dir", type=Path, default=None, help="tokenizer/token cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")
    add_config_flags(p, ModelConfig, "model")
    add_config_flags(p, TrainConfig, "training")
    add_config_flags(p, DataConfig, "data")
    i = sub.add_parser("info", help="show a checkpoint: config, per-matrix L0, validation loss")
    i.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder (its newest checkpoint)")
    e = sub.add_parser("export", help="copy a checkpoint without its optimizer state, optionally in float16")
    e.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder (its newest checkpoint)")
    e.add_argument("--out", type=Path, required=True, help="folder to write")
    e.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="storage precision of the weights (default: float32)")
    a = sub.add_parser("average", help="average the weights of checkpoints of one run (sparse runs: projected back to top-k)")
    a.add_argument("checkpoints", type=Path, nargs="+", help="two or more checkpoint folders of the same run")
    a.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    a.add_argument("--val", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute the validation loss on the run's data and store it in meta.json (default: on)")
    a.add_argument("--cache-dir", type=Path, default=None, help="tokenizer/token cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")
    q = sub.add_parser("quickstart", help="the main job: task circuits in a shipped sparse model vs its dense twin")
    q.add_argument("--out", type=Path, default=Path("quickstart-report"), help="report folder")
    q.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                   help="train both models from scratch (preset quickstart, ~1 h each on 2 CPU cores) instead of the shipped ones")
    q.add_argument("--tasks", nargs="*", default=None, help="tasks to run (default: all)")
    q.add_argument("--n-examples", type=int, default=256, help="examples per task (half train, half held out)")
    q.add_argument("--solve-threshold", type=float, default=0.9,
                   help="accuracy of the sparse model from which a task counts as solved and is pruned")
    q.add_argument("--cache-dir", type=Path, default=None, help="cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")
    q.add_argument("--workers", type=int, default=0,
                   help="prunes run at once, each in its own process (default: 0 = one per CPU core; 1 = in-process)")
    add_config_flags(q, PruneConfig, "pruning", defaults=QUICKSTART_PRUNE)
    pr = sub.add_parser("prune", help="prune a task circuit in a checkpoint (Gao et al. learned masks)")
    pr.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a built-in task (see `sparsecircuits tasks`)")
    src.add_argument("--task-file", type=Path, help="a JSONL task: prompt, correct, incorrect[, counterfactual]")
    pr.add_argument("--out", type=Path, required=True, help="circuit JSON to write")
    pr.add_argument("--n-examples", type=int, default=256, help="examples of a built-in task")
    pr.add_argument("--cache-dir", type=Path, default=None, help="cache for tokens and mean activations")
    add_config_flags(pr, PruneConfig, "pruning")
    c = sub.add_parser("compare", help="circuit sizes of a sparse model vs its dense twin, per task")
    c.add_argument("sparse", type=Path, help="folder of the sparse model's circuit JSONs")
    c.add_argument("dense", type=Path, help="folder of the dense model's circuit JSONs")
    t = sub.add_parser("tasks", help="list the tasks; with a checkpoint, evaluate it on each")
    t.add_argument("checkpoint", type=Path, nargs="?", default=None, help="checkpoint to evaluate")
    t.add_argument("--n-examples", type=int, default=256, help="examples per task")
    t.add_argument("--seed", type=int, default=0, help="seed the task examples are drawn with")
    t.add_argument("--exclude-seed", type=int, default=None,
                   help="leave out every example whose prompt or counterfactual occurs among the candidates of the "
                        "--exclude-n examples drawn at this seed (a validation set disjoint from the default evaluation)")
    t.add_argument("--exclude-n", type=int, default=256, help="size of the excluded set (with --exclude-seed)")
    t.add_argument("--json", type=Path, default=None,
                   help="with a checkpoint or --model: also write each task's accuracy, loss and answer tokens to this JSON file")
    t.add_argument("--model", default=None,
                   help="evaluate a Hugging Face model instead: a local folder or a name in the HF cache "
                        "(downloaded only if online and huggingface_hub is installed)")
    for module_name in COMMAND_MODULES:
        before = set(sub.choices)
        importlib.import_module(f"sparsecircuits.{module_name}").add_parsers(sub)
        for command in set(sub.choices) - before:
            _MODULE_OF[command] = module_name
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    from sparsecircuits.model.checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.dtype)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    console.print(f"exported {args.checkpoint} -> {path} ({args.dtype}, {size:.1f} MB)")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from sparsecircuits.weight_sparse.average import average_checkpoints, record_validation_loss

    with console.status("averaging checkpoints"):
        res = average_checkpoints(args.checkpoints, args.out)
    kept = f", sparse matrices projected {res.nonzeros_before:,} -> {res.nonzeros_after:,} nonzeros" if res.projected else ""
    console.print(f"averaged {len(res.sources)} checkpoints -> {res.path}{kept}")
    if args.val:
        with console.status("validation loss"):
            val = record_validation_loss(res.path, args.cache_dir or default_cache_dir())
        console.print(f"validation loss {val:.4f} nats/token")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sparsecircuits.cli.console import TrainProgress
    from sparsecircuits.data.corpus import DataConfig
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.weight_sparse.run import RunSpec, train_run
    from sparsecircuits.weight_sparse.train import TrainConfig

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
        result = train_run(spec, out, args.cache_dir or default_cache_dir(), resume=args.resume,
                           on_step=progress.on_step, on_data=progress.on_data)
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


def cmd_info(args: argparse.Namespace) -> int:
    from sparsecircuits.cli.console import info_table
    from sparsecircuits.weight_sparse.info import checkpoint_info

    for table in info_table(checkpoint_info(args.checkpoint)):
        console.print(table)
    return 0


def _circuit_command(name: str):  # noqa: ANN202
    def run(args: argparse.Namespace) -> int:
        from sparsecircuits.cli import circuits as cli_circuits

        return getattr(cli_circuits, f"cmd_{name}")(args, console)

    return run


COMMANDS = {"train": cmd_train, "info": cmd_info, "export": cmd_export, "average": cmd_average,
            **{n: _circuit_command(n) for n in ("quickstart", "prune", "compare", "tasks")}}

# Command families: each is a module `sparsecircuits.<name>` with `add_parsers(sub)` and
# `COMMANDS = {command: fn(args, console) -> exit code}`. Add a family by adding its module here.
COMMAND_MODULES = ("cli.view", "cli.dictionaries", "cli.discover", "cli.sweep", "cli.bridges", "cli.feature_circuits",
                   "cli.graph", "cli.shift", "cli.clusters", "cli.corpus")
_MODULE_OF: dict[str, str] = {}  # command -> module, filled by build_parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    module = importlib.import_module(f"sparsecircuits.{_MODULE_OF[args.command]}")
    return module.COMMANDS[args.command](args, console)


def main(argv: list[str] | None = None) -> int:
    from sparsecircuits import distributed
    from sparsecircuits.model.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 talks; training commands start the process group themselves.
    console.quiet = os.environ.get("RANK", "0") != "0" or console.quiet
    try:
        return _dispatch(args)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        if os.environ.get("SPARSECIRCUITS_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {e}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the newest checkpoint is intact; rerun with --resume to continue")
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
