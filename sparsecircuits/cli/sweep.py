"""CLI command `sweep`: train a grid of weight-sparse and dense models, prune every task on every model
and draw the capability-interpretability frontier (rendering only; the work is in `weight_sparse/sweep.py` and
`viz/frontier.py`). Rerunning the same command resumes a killed sweep."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    cache_dir,
    check_output_path,
    check_tasks,
    collect,
    command_parser,
)
from sparsecircuits.data.config import DataConfig
from sparsecircuits.weight_sparse.config import PruneConfig, SweepConfig

if TYPE_CHECKING:
    from sparsecircuits.weight_sparse.run import StepReport


def _sweep_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("--out", type=Path, required=True,
                   help="sweep folder (sweep.json, runs/<name>/, frontier.png, frontier.html); rerun to resume")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="tokenizer/token/mean cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                   help="write frontier.png and frontier.html at the end (default: on)")
    add_config_flags(p, SweepConfig, "sweep grid and training")
    add_config_flags(p, DataConfig, "data (shared by every model; default vocab 1024)")
    add_config_flags(p, PruneConfig, "pruning (every task on every model)", prefix="prune-")


def build_config(args: argparse.Namespace) -> Any:
    """SweepConfig from the flags: dataclass defaults < explicit flags, for the grid, data and pruning."""

    base = SweepConfig.__dataclass_fields__["data"].default_factory()  # type: ignore[misc]
    data = collect(args, DataConfig, dataclasses.asdict(base))
    prune = collect(args, PruneConfig, {})
    return collect(args, SweepConfig, {"data": data, "prune": prune})  # validated with its own data and prune


class SweepProgress:
    """Rich progress: a bar over models, one for the current model's training steps, event lines."""

    def __init__(self, console: Console, n_runs: int) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[stats]}", markup=False),
                                 TimeElapsedColumn(), console=console)
        self.models = self.progress.add_task("models", total=n_runs, stats="")
        self.train: dict[str, TaskID] = {}
        self.logged: dict[str, int] = {}  # the last step printed per run (logs without a live bar)

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def on_step(self, name: str, r: StepReport) -> None:
        if name not in self.train:
            self.train[name] = self.progress.add_task(f"train {name}", total=r.total, completed=r.step - 1, stats="")
        val = f" val {r.val_loss:.3f}" if r.val_loss is not None else ""
        stats = f"loss {r.loss:.3f}{val}  L0 {r.kept_hidden:.3f}  {r.tokens_per_s:,.0f} tok/s"
        self.progress.update(self.train[name], completed=r.step, stats=stats)
        quarter = r.step % max(1, r.total // 4) == 0 or r.step == r.total
        if not self.console.is_terminal and quarter and self.logged.get(name) != r.step:
            # Logs (nohup, CI) get no live bar: a plain line every quarter of a run instead (once: with
            # workers, the same step is polled from metrics.jsonl until the next one is logged).
            self.logged[name] = r.step
            self.console.print(f"{name}: step {r.step}/{r.total}  {stats}")

    def on_event(self, msg: str) -> None:
        self.progress.console.print(msg)

    def on_run_done(self, row: Any) -> None:
        if row.run.name in self.train:
            self.progress.remove_task(self.train.pop(row.run.name))
        self.progress.advance(self.models)


def sweep_table(result: Any) -> Table:
    from sparsecircuits.viz.frontier import table_rows
    from sparsecircuits.viz.html import _cell

    columns, rows = table_rows(result)
    table = Table(title=f"sweep {result.out_dir} ({'complete' if result.complete else 'incomplete'}, "
                        f"{result.seconds:.0f} s this invocation)")
    for c in columns:
        table.add_column(c, justify="left" if c == "run" else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.weight_sparse.sweep import expand_grid, run_sweep

    cfg = build_config(args)
    check_tasks(cfg.tasks)
    check_output_path(args.out, "dir")
    runs = expand_grid(cfg)
    console.print(Text.assemble(("Sweep", "bold"), f" of {len(runs)} models ({', '.join(r.name for r in runs)}), "
                                f"{cfg.steps} steps each, tasks {', '.join(cfg.tasks)} -> {args.out}"))
    with SweepProgress(console, len(runs)) as prog:
        result = run_sweep(cfg, args.out, cache_dir(args), on_event=prog.on_event,
                           on_step=prog.on_step, on_run_done=prog.on_run_done)
    console.print(sweep_table(result))
    console.print(f"frontier tasks (reached by every model at target loss {cfg.frontier_target or cfg.prune.target_loss:g}, "
                  f"every full model's accuracy >= {cfg.min_accuracy:g}): {', '.join(result.common_tasks) or 'none'}")
    if args.plot:
        from sparsecircuits.viz.frontier import write_frontier_report

        page = write_frontier_report(result)
        console.print(f"frontier -> {page}" + (f" and {args.out / 'frontier.png'}" if (args.out / "frontier.png").exists() else ""))
    return 0 if result.complete else 1


PARSERS: dict[str, ParserBuilder] = {"sweep": _sweep_parser}
COMMANDS = {"sweep": cmd_sweep}
