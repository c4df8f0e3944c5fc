"""Terminal output for the CLI (rich): training progress and report tables. Only the CLI uses this."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # types only: this module loads with the CLI, before (and often without) torch
    from sparsecircuits.weight_sparse.info import CheckpointInfo
    from sparsecircuits.weight_sparse.run import StepReport


class TrainProgress:
    """Rich progress for `train_run`: a bar for data preparation, then one for the steps."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.data_tasks: dict[str, TaskID] = {}
        self.train_task: TaskID | None = None
        self.val: float | None = None

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(t, e, tb)

    def on_data(self, stage: str, done: int, total: int) -> None:
        if stage not in self.data_tasks:
            self.data_tasks[stage] = self.progress.add_task(stage, total=max(total, 1), stats="")
        self.progress.update(self.data_tasks[stage], completed=done, total=max(total, 1))

    def on_step(self, r: StepReport) -> None:
        if self.train_task is None:
            self.train_task = self.progress.add_task("train", total=r.total, completed=r.step - 1, stats="")
        if r.val_loss is not None:
            self.val = r.val_loss
        val = f" val {self.val:.3f}" if self.val is not None else ""
        stats = f"loss {r.loss:.3f}{val}  L0 {r.kept_hidden:.3f}  {r.tokens_per_s:,.0f} tok/s"
        self.progress.update(self.train_task, completed=r.step, stats=stats)
        if not self.console.is_terminal and (r.val_loss is not None or r.step == r.total):
            # Logs (CI, nohup) get no live bar: write a plain line at every validation instead.
            self.console.print(f"step {r.step}/{r.total}  {stats}")


def info_table(info: CheckpointInfo) -> list[Table]:
    """Tables for `sparsecircuits info`: summary, config, per-matrix L0."""
    summary = Table(title=f"checkpoint {info.path}", show_header=False)
    rows = [
        ("step", info.step),
        ("kind", "dense" if info.dense else f"weight-sparse (min {info.min_per_neuron} per neuron)"),
        ("parameters", f"{info.n_params:,}"),
        ("validation loss", _fmt(info.val_loss)),
        ("train loss (last step)", _fmt(info.train_loss)),
        ("bigram-only baseline", _fmt(info.bigram_baseline)),
        ("all matrices at target L0", "yes" if info.all_at_target else "NO"),
    ]
    for k, v in rows:
        summary.add_row(k, str(v))
    cfg = Table(title="model config", show_header=False)
    for k, v in info.model_config.items():
        cfg.add_row(k, str(v))
    l0 = Table(title="weight sparsity per matrix")
    for col in ("matrix", "shape", "nonzeros", "target", "kept", "neurons < min"):
        l0.add_column(col, justify="left" if col == "matrix" else "right")
    for m in info.matrices:
        numel = m.shape[0] * m.shape[1]
        nonzeros = Text(f"{m.nonzeros:,}") if m.nonzeros == m.target else Text.assemble(f"{m.nonzeros:,} ", ("!=", "red"))
        l0.add_row(m.name, "x".join(map(str, m.shape)), nonzeros, f"{m.target:,}",
                   f"{m.nonzeros / numel:.4f}", str(m.neurons_below_min))
    return [summary, cfg, l0]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


class StageBars:
    """One rich progress bar per stage, fed by a library's `progress(stage, done, total)` callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.tasks = progress, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=max(total, 1))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))


def stage_progress(console: Console) -> Progress:
    """The transient bar layout that `StageBars` fills (use as a context manager)."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=True)
