"""The main job: task circuits in a shipped weight-sparse model and its dense twin (Gao et al. 2025).

`run_quickstart` steps:
  1. load the sparse model and its dense twin (shipped with the package under `assets/quickstart/`,
     or any two checkpoints) and check they share a tokenizer and shapes;
  2. tokenize the pretraining corpus recorded in the sparse model's metadata (the stdlib; cached)
     and compute each model's mean activations over it (the pruning baseline; cached);
  3. evaluate every registered task on both models (accuracy, task loss);
  4. for each task the sparse model solves (accuracy >= `solve_threshold`), prune a circuit in both
     models with the same `PruneConfig` (default: `QUICKSTART_PRUNE`, a smaller batch) and save
     them as `circuits/{sparse,dense}/<task>.json` (the prunes run in parallel processes, one per
     core by default, each starting as soon as its task is evaluated: pruning overlaps steps 3 and
     4, and `on_circuit(task, kind)` gets each saved circuit while later ones are still
     being pruned: the CLI writes its HTML page there);
  5. return a `QuickstartReport` (and write `report.json`): per task accuracy, loss, circuit nodes
     and edges in both models and the dense/sparse edge ratio, with the geometric mean over tasks.
The library never prints: progress goes to an `on_event(message)` callback.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.ablation import checkpoint_means
from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.evaluate import Evaluation, evaluate_task
from sparsecircuits.graph import geometric_mean
from sparsecircuits.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TASKS, TaskData, TaskError, get_task, load_task
from sparsecircuits.weight_sparse.config import QUICKSTART_PRUNE  # torch-free, for the CLI
from sparsecircuits.weight_sparse.prune import PruneConfig, PruneResult, prune_task

ASSETS = Path(__file__).parents[1] / "assets" / "quickstart"


@dataclass
class TaskRow:
    task: str
    answers: tuple[str, str]  # typical answer tokens (correct, incorrect)
    n_examples: int
    sparse: Evaluation
    dense: Evaluation
    solved: bool
    sparse_circuit: dict[str, Any] | None = None  # n_nodes, n_edges, losses, reached_target, seconds
    dense_circuit: dict[str, Any] | None = None


@dataclass
class QuickstartReport:
    sparse_model: str
    dense_model: str
    rows: list[TaskRow]
    geomean_sparse_edges: float
    geomean_dense_edges: float
    seconds: float
    prune_config: dict[str, Any]
    out_dir: str
    notes: list[str] = field(default_factory=list)

    @property
    def geomean_ratio(self) -> float:
        return self.geomean_dense_edges / max(self.geomean_sparse_edges, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "geomean_ratio": self.geomean_ratio}


def _load_pair(sparse: Path, dense: Path) -> tuple[Checkpoint, Checkpoint]:
    s, d = load_checkpoint(sparse), load_checkpoint(dense)
    if s.tokenizer_path is None or d.tokenizer_path is None:
        raise CheckpointError("both checkpoints need a tokenizer.json")
    if s.tokenizer_path.read_text() != d.tokenizer_path.read_text():
        raise CheckpointError(f"{s.path} and {d.path} have different tokenizers; a twin must share it")
    if {k: v.shape for k, v in s.model.state_dict().items()} != {k: v.shape for k, v in d.model.state_dict().items()}:
        raise CheckpointError(f"{s.path} and {d.path} are not twins: their parameter shapes differ")
    return s, d


def run_quickstart(
    out_dir: Path,
    cache_dir: Path,
    sparse_path: Path = ASSETS / "sparse",
    dense_path: Path = ASSETS / "dense",
    tasks: list[str] | None = None,
    prune_cfg: PruneConfig | None = None,
    n_examples: int = 256,
    solve_threshold: float = 0.9,
    on_event: Callable[[str], None] = lambda msg: None,
    workers: int = 0,
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
    on_circuit: Callable[[str, str], None] = lambda task, kind: None,
) -> QuickstartReport:
    """See the module docstring. `on_event(message)` gets one line per finished piece of work and
    `progress(stage, done, total)` the counts of the two long stages (task evaluation, pruning);
    `on_circuit(task, kind)` is called in this process as each circuit is saved."""
    t0 = time.perf_counter()
    cfg = prune_cfg or PruneConfig(**QUICKSTART_PRUNE)
    out_dir = Path(out_dir)
    s, d = _load_pair(sparse_path, dense_path)
    tok = load_tokenizer(s.tokenizer_path)  # type: ignore[arg-type]
    on_event("mean baselines over the pretraining corpus (tokenized and cached on first use)")
    means = {ck.path: checkpoint_means(ck.model, ck.meta, tok, cache_dir) for ck in (s, d)}
    import sparsecircuits.tasks  # noqa: F401  (registers the built-in tasks)

    names = tasks or sorted(n for n, spec in TASKS.items() if spec.domain == "python")  # not the language tasks
    rows: list[TaskRow] = []
    models = {s.path: s.model, d.path: d.model}
    with _Pruner(models, means, cfg, workers) as pruner:
        for i, name in enumerate(names):  # prunes start in the workers while later tasks are evaluated
            progress("evaluate tasks", i, len(names))
            get_task(name)
            try:
                data = load_task(name, tok, s.model.cfg.n_ctx, n=n_examples)
            except TaskError as e:
                on_event(f"skipping {name}: {e}")
                continue
            ev_s, ev_d = evaluate_task(s.model, data), evaluate_task(d.model, data)
            row = TaskRow(name, data.answer_strings, len(data), ev_s, ev_d, ev_s.accuracy >= solve_threshold)
            on_event(f"{name}: accuracy sparse {ev_s.accuracy:.2f}, dense {ev_d.accuracy:.2f}")
            if row.solved:
                for kind, ck in (("dense", d), ("sparse", s)):
                    pruner.submit(_PruneJob(row, kind, ck.path, data))
            rows.append(row)
        progress("evaluate tasks", len(names), len(names))
        progress("prune circuits", 0, len(pruner.jobs))
        for done, (job, result, seconds) in enumerate(pruner.results(), 1):
            result.circuit.metadata["model"] = str(job.path)
            path = out_dir / "circuits" / job.kind / f"{job.row.task}.json"
            result.circuit.save(path)
            md = result.circuit.metadata
            summary = {k: md[k] for k in ("n_nodes", "n_edges", "losses", "reached_target")}
            summary["seconds"] = seconds
            setattr(job.row, f"{job.kind}_circuit", summary)
            on_event(f"{job.row.task}: {job.kind} circuit {md['n_nodes']} nodes, {md['n_edges']} edges")
            on_circuit(job.row.task, job.kind)
            progress("prune circuits", done, len(pruner.jobs))
    return _finish(rows, s, d, cfg, out_dir, time.perf_counter() - t0)


@dataclass
class _PruneJob:
    row: TaskRow
    kind: str  # "sparse" | "dense"
    path: Path  # the checkpoint (key of the models and means)
    data: TaskData


def _prune_in_worker(model: Transformer, data: TaskData, cfg: PruneConfig, means: dict[str, Tensor],
                     threads: int) -> tuple[PruneResult, float]:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = prune_task(model, data, cfg, means=means)
    return result, time.perf_counter() - t0


class _Pruner:
    """Prunes jobs `workers` at a time in spawned processes (0 = one per CPU core; 1 = in this process,
    when `results()` is iterated). Small models use cores better as separate single-threaded prunes
    than as one multi-threaded one. A job starts as soon as it is submitted, so pruning overlaps the
    rest of the quickstart; while the pool runs, this process uses one thread (its own work, task
    evaluation and pages, is light). Results come back as the jobs finish, so a quick circuit's page
    is not held up behind a slow one (pruning is seeded: the same circuits whatever the schedule)."""

    def __init__(self, models: dict[Path, Transformer], means: dict[Path, dict[str, Tensor]], cfg: PruneConfig,
                 workers: int) -> None:
        self.models, self.means, self.cfg = models, means, cfg
        self.workers = workers or os.cpu_count() or 1
        self.jobs: list[_PruneJob] = []
        self.futures: list[Future] = []
        self.pool: ProcessPoolExecutor | None = None
        self.threads = torch.get_num_threads()

    def __enter__(self) -> _Pruner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self.threads)

    def submit(self, job: _PruneJob) -> None:
        self.jobs.append(job)
        if self.workers == 1:
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            torch.set_num_threads(1)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        self.futures.append(self.pool.submit(_prune_in_worker, self.models[job.path], job.data, self.cfg,
                                             self.means[job.path], threads))

    def results(self) -> Iterator[tuple[_PruneJob, PruneResult, float]]:
        if self.workers == 1:
            for job in self.jobs:
                yield job, *_prune_in_worker(self.models[job.path], job.data, self.cfg, self.means[job.path],
                                             self.threads)
            return
        job_of = dict(zip(self.futures, self.jobs))
        for future in as_completed(self.futures):
            yield job_of[future], *future.result()


def _finish(rows: list[TaskRow], s: Checkpoint, d: Checkpoint, cfg: PruneConfig, out_dir: Path,
            seconds: float) -> QuickstartReport:
    pruned = [r for r in rows if r.sparse_circuit and r.dense_circuit]
    notes = []
    if any(r.dense_circuit and not r.dense_circuit["reached_target"] for r in pruned):
        notes.append("some dense circuits did not reach the target loss: their size is the whole model")
    report = QuickstartReport(
        str(s.path), str(d.path), rows,
        geometric_mean([float(r.sparse_circuit["n_edges"]) for r in pruned]),  # type: ignore[index]
        geometric_mean([float(r.dense_circuit["n_edges"]) for r in pruned]),  # type: ignore[index]
        seconds, dataclasses.asdict(cfg), str(out_dir), notes,
    )
    atomic_write_text(out_dir / "report.json", json.dumps(report.to_dict(), indent=1))
    return report

