"""The results of a sweep and their frontier summary (step 4 of `sweep.py`): per task over pruning
seeds (`TaskResult`), per model (`RunRow`), and the frontier at any target the circuits were bisected
to (`frontier_at`, `summarise`), after Gao et al. (2025), "Weight-sparse transformers have
interpretable circuits" (arXiv 2511.13653): the geometric mean over tasks of pruned-circuit edges.

A task is *reached* by a model when its circuits hit the target loss at every pruning seed; a task's
size is the geometric mean of its edges over the seeds (an empty circuit counts as 1). The frontier's
tasks are those every model reaches with every full model's held-out accuracy >= `min_accuracy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sparsecircuits.graph import Circuit, geometric_mean
from sparsecircuits.weight_sparse.config import PruneConfig, SweepConfig

if TYPE_CHECKING:
    from sparsecircuits.weight_sparse.sweep import SweepRun


@dataclass
class TaskResult:
    """One task on one model, over the sweep's pruning seeds (one circuit each)."""

    task: str
    n_nodes: float  # mean over seeds
    n_edges: float  # geometric mean over seeds (an empty circuit counts as 1)
    reached: bool  # circuit loss <= the absolute target (prune.target_loss) at every seed
    target_used: float  # the target bisection aimed for (relaxed when the model cannot reach the absolute one)
    circuit_loss: float  # mean over seeds
    full_loss: float
    full_accuracy: float  # held-out accuracy of the full model
    empty_loss: float  # every node mean-ablated: below the target, the task needs no circuit (bigram table, biases)
    seconds: float  # pruning time, all seeds
    main_target: float = 0.15  # prune.target_loss (the absolute target `reached` refers to)
    seeds: list[int] = field(default_factory=list)
    edges_by_seed: list[int] = field(default_factory=list)
    circuit_loss_by_seed: list[float] = field(default_factory=list)
    reached_by_seed: list[bool] = field(default_factory=list)
    # Per extra target loss ("0.3", prune.extra_targets; the main target is the fields above): edges
    # per seed (None where the full model is above that loss) and whether every seed reached it.
    edges_at_targets: dict[str, list[int | None]] = field(default_factory=dict)
    reached_at_targets: dict[str, bool] = field(default_factory=dict)


@dataclass
class RunRow:
    run: SweepRun
    step: int  # training steps done
    trained: bool
    val_loss: float | None
    hidden_kept: float | None  # measured nonzero fraction of the hidden matrices
    tasks: dict[str, TaskResult] = field(default_factory=dict)  # tasks with a circuit for every pruning seed
    errors: dict[str, str] = field(default_factory=dict)  # task -> why it could not be pruned
    geomean_common: float | None = None  # over the tasks every model reaches (the frontier's y axis)
    geomean_common_by_seed: list[float] = field(default_factory=list)  # the same per pruning seed (error bars)
    geomean_all: float | None = None  # over every pruned task, unreached at their relaxed-target size

    @property
    def n_reached(self) -> int:
        return sum(t.reached for t in self.tasks.values())


def task_result(task: str, circuits: list[tuple[int, Circuit]], cfg: PruneConfig) -> TaskResult:
    """Aggregate one task's circuits over pruning seeds."""
    mds = [c.metadata for _, c in circuits]
    reached = [bool(md["reached_target"]) and md["losses"]["circuit"] <= cfg.target_loss for md in mds]
    edges = [int(md["n_edges"]) for md in mds]
    losses = [float(md["losses"]["circuit"]) for md in mds]
    first = mds[0]
    size = float(edges[0]) if len(edges) == 1 else geometric_mean([float(e) for e in edges])
    at_edges: dict[str, list[int | None]] = {}
    at_reached: dict[str, bool] = {}
    for md in mds:
        for entry in md.get("sizes_at_targets", []):
            key = target_key(float(entry["target"]))
            if key == target_key(cfg.target_loss):
                continue
            at_edges.setdefault(key, []).append(entry["n_edges"])
            at_reached[key] = at_reached.get(key, True) and bool(entry["reached"])
    return TaskResult(task, sum(int(md["n_nodes"]) for md in mds) / len(mds), size,
                      all(reached), float(first["target_loss_used"]), sum(losses) / len(losses),
                      float(first["losses"]["full"]), float(first["accuracy"]["full"]), float(first["losses"]["empty"]),
                      sum(float(md.get("sweep_seconds", 0.0)) for md in mds), cfg.target_loss, [s for s, _ in circuits],
                      edges, losses, reached, at_edges, at_reached)


def target_key(loss: float) -> str:
    """How a target loss is named in `TaskResult.edges_at_targets` and sweep.json."""
    return f"{loss:g}"


def frontier_key(cfg: SweepConfig) -> str:
    """The target the frontier is drawn at (`SweepConfig.frontier_target`, default the pruning target)."""
    return target_key(cfg.frontier_target or cfg.prune.target_loss)


def at_target(t: TaskResult, key: str) -> tuple[bool, list[int | None]]:
    """Whether every seed reached the target named `key` (`target_key`; "" = the pruning target itself)
    and the edges per seed there."""
    if key in t.edges_at_targets:
        return t.reached_at_targets[key], t.edges_at_targets[key]
    return (t.reached, list(t.edges_by_seed)) if key in ("", target_key(t.main_target)) else (False, [])


def frontier_at(rows: list[RunRow], tasks: tuple[str, ...], min_accuracy: float, key: str
                ) -> tuple[list[str], dict[str, tuple[float | None, list[float]]]]:
    """The frontier at one target (`target_key`; "" = the pruning target itself): the tasks every
    model reaches there at every seed,
    with every full model's accuracy >= min_accuracy, and per run (geomean edges over them, the same
    per seed)."""

    common = [t for t in tasks if rows and all(t in r.tasks and at_target(r.tasks[t], key)[0]
                                               and r.tasks[t].full_accuracy >= min_accuracy for r in rows)]
    out: dict[str, tuple[float | None, list[float]]] = {}
    for r in rows:
        if not common:
            out[r.run.name] = (None, [])
            continue
        per_task = [[float(e or 0) for e in at_target(r.tasks[t], key)[1]] for t in common]
        n_seeds = min(len(e) for e in per_task)
        out[r.run.name] = (geometric_mean([geometric_mean(e) if len(e) > 1 else max(e[0], 1.0) for e in per_task]),
                           [geometric_mean([e[i] for e in per_task]) for i in range(n_seeds)])
    return common, out


def summarise(rows: list[RunRow], tasks: tuple[str, ...], min_accuracy: float = 0.0, key: str | None = None) -> list[str]:
    """Step 4: fill the geometric means of every row at target `key` (default: each row's main
    pruning target); returns the tasks of the frontier (reached by every model, and every full
    model's held-out accuracy >= min_accuracy)."""
    common, sizes = frontier_at(rows, tasks, min_accuracy, "" if key is None else key)
    for r in rows:
        r.geomean_common, r.geomean_common_by_seed = sizes[r.run.name]
        r.geomean_all = geometric_mean([float(t.n_edges) for t in r.tasks.values()]) if r.tasks else None
    return common


@dataclass
class PairedRatio:
    """A weight-sparse model against the dense one of its width, over the tasks both reach at a target
    (each full model's accuracy >= min_accuracy): per task (sparse edges, dense edges), geomean over seeds."""

    sparse: str
    dense: str
    tasks: dict[str, tuple[float, float]]
    ratio: float | None  # geometric mean over tasks of dense / sparse edges (> 1: the sparse circuit is smaller)


def paired_ratios(rows: list[RunRow], key: str, min_accuracy: float) -> list[PairedRatio]:
    """Sparse vs dense at the same width, task by task (`key` as in `frontier_at`). Each pair uses every
    task both models reach, so pairs can use different tasks; the frontier uses the tasks every model
    reaches. Gao et al. compare at matched pretraining loss; at one width the dense model is usually
    more capable, so this ratio understates the sparse models' advantage at matched loss."""

    def size(edges: list[int | None]) -> float:
        return geometric_mean([float(e or 0) for e in edges])

    out = []
    for r in rows:
        dense = next((d for d in rows if d.run.dense and d.run.width == r.run.width), None)
        if r.run.dense or dense is None:
            continue
        both = {}
        for task, t in r.tasks.items():
            d = dense.tasks.get(task)
            if d is None or min(t.full_accuracy, d.full_accuracy) < min_accuracy:
                continue
            (ok_s, e_s), (ok_d, e_d) = at_target(t, key), at_target(d, key)
            if ok_s and ok_d:
                both[task] = (size(e_s), size(e_d))
        ratio = geometric_mean([d / max(s, 1.0) for s, d in both.values()]) if both else None
        out.append(PairedRatio(r.run.name, dense.run.name, both, ratio))
    return out
