"""The sweep's jobs in worker processes (`SweepConfig.workers` > 1; see `weight_sparse/sweep.py`).

Trainings and prunes run in spawned processes, the widest models first (they take longest); a
model's prunes are queued as soon as it is trained. Each job writes the files the serial path
writes (checkpoints, `circuits/<task>-s<seed>.json`), and the parent reads them back, so results do
not depend on the number of workers. Training progress is read from each run's metrics.jsonl.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from sparsecircuits.weight_sparse.config import SweepConfig
from sparsecircuits.weight_sparse.run import RunSpec, StepReport, train_run
from sparsecircuits.weight_sparse.sweep import (
    Event,
    _collect,
    _done_message,
    _final_checkpoint,
    _Loaded,
    _prune_one,
    run_spec,
)
from sparsecircuits.weight_sparse.sweep_results import RunRow


def _train_job(spec: dict[str, Any], run_dir: str, cache_dir: str, resume: bool) -> None:
    """One training in a worker process (spawned: top level, plain arguments)."""
    train_run(RunSpec.from_dict(spec), Path(run_dir), Path(cache_dir), resume=resume)


def _prune_job(cfg: dict[str, Any], run_name: str, run_dir: str, cache_dir: str, task: str, seed: int) -> str | None:
    """One prune in a worker process; the circuit is saved where the serial path saves it."""
    return _prune_one(_Loaded(Path(run_dir), Path(cache_dir)), run_name, task, seed, SweepConfig(**cfg))


def _last_step_report(run_dir: Path, total: int) -> StepReport | None:
    """The newest line of a run's metrics.jsonl as a StepReport (progress of a run in a worker)."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
        rec = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None  # not written yet, or a line being written
    if not rec:
        return None
    return StepReport(int(rec["step"]), total, float(rec["loss"]), float(rec["lr"]), float(rec["kept_hidden"]),
                      float(rec["tokens_per_s"]), rec.get("val_loss"))


def run_parallel(cfg: SweepConfig, rows: list[RunRow], out_dir: Path, cache_dir: Path, workers: int,
                  save: Callable[[], None], trained: Callable[[RunRow, RunSpec, Path], None], on_event: Event,
                  on_step: Callable[[str, StepReport], None] | None,
                  on_run_done: Callable[[RunRow], None] | None) -> None:
    """Trainings and prunes in `workers` spawned processes; the widest models train first (they take
    longest), and a model's prunes are queued as soon as it is trained."""
    from sparsecircuits.data.batches import prepare_data

    prepare_data(cfg.data, cache_dir)  # tokenizer and token files once, before the workers read them
    cfg_dict = cfg.to_dict()
    pending: dict[Future[Any], tuple[str, RunRow, str, int]] = {}
    open_prunes: dict[str, int] = {}
    specs = {r.run.name: run_spec(cfg, r.run) for r in rows}
    dirs = {r.run.name: out_dir / "runs" / r.run.name for r in rows}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:

        def queue_prunes(row: RunRow) -> None:
            todo = _collect(row, cfg, dirs[row.run.name])
            open_prunes[row.run.name] = len(todo)
            for task, seed in todo:
                on_event(f"{row.run.name}: pruning {task} (seed {seed})")
                fut = pool.submit(_prune_job, cfg_dict, row.run.name, str(dirs[row.run.name]), str(cache_dir), task, seed)
                pending[fut] = ("prune", row, task, seed)
            if not todo and on_run_done is not None:
                on_run_done(row)

        for row in sorted(rows, key=lambda r: -r.run.width):  # stable: grid order within a width
            name = row.run.name
            last, step = _final_checkpoint(specs[name], dirs[name])
            if step < cfg.steps:
                on_event(f"{name}: resuming from step {step}" if last else f"{name}: training")
                fut = pool.submit(_train_job, specs[name].to_dict(), str(dirs[name]), str(cache_dir), last is not None)
                pending[fut] = ("train", row, "", 0)
            else:
                trained(row, specs[name], dirs[name])
                queue_prunes(row)
        while pending:
            done, _ = wait(list(pending), timeout=2.0, return_when=FIRST_COMPLETED)
            if on_step is not None:
                for kind, row, _, _ in pending.values():
                    if kind == "train":
                        rep = _last_step_report(dirs[row.run.name], cfg.steps)
                        if rep is not None:
                            on_step(row.run.name, rep)
            for fut in done:
                kind, row, task, _ = pending.pop(fut)
                name = row.run.name
                if kind == "train":
                    fut.result()  # a failed training raises here, as it would in the serial path
                    trained(row, specs[name], dirs[name])
                    queue_prunes(row)
                    continue
                err = fut.result()
                if err is not None:
                    row.errors[task] = err
                    on_event(f"{name}: {task} skipped ({err})")
                else:
                    had = task in row.tasks
                    _collect(row, cfg, dirs[name])
                    if task in row.tasks and not had:  # its last seed just finished
                        on_event(_done_message(row, task, cfg))
                save()
                open_prunes[name] -= 1
                if open_prunes[name] == 0 and on_run_done is not None:
                    on_run_done(row)
