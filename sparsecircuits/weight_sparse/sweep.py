"""Sweeps for the capability-interpretability frontier of Gao et al. (2025), "Weight-sparse
transformers have interpretable circuits" (arXiv 2511.13653): pretraining loss vs the geometric mean
over tasks of the circuit size (edges) that pruning needs to reach a target task loss.

`run_sweep(cfg, out_dir, cache_dir)` steps:
  1. expand the grid (`expand_grid`): one weight-sparse model per (width, weight L0 fraction,
     activation sparsity), plus a dense baseline per width; each run has a stable name
     (`d64-w0.0625-a0.25`, `d64-dense`) and a `RunSpec` built from the base preset;
  2. for each run, train it in `out_dir/runs/<name>/` with the ordinary `run.train_run`, resuming
     from its newest checkpoint when a previous sweep was killed half way; a run whose final
     checkpoint exists is not touched. Validation loss is read from the final checkpoint;
  3. prune every task on every model (`weight_sparse.prune.prune_task`, mean ablation over the
     pretraining corpus, same `PruneConfig` for all) and save `runs/<name>/circuits/<task>.json`; a
     circuit file made with the same pruning settings is reused, a deleted one is recomputed;
  4. summarise: a task is *reached* by a model when its circuit hits the absolute target loss
     (`PruneConfig.target_loss`); pruning a model that cannot reach it aims for its own loss + slack,
     and that circuit is recorded but not counted as reached. Two geometric means of edges per model:
     `geomean_common` over the tasks that *every* model of the sweep reaches (the headline and the
     frontier's y axis: same tasks for every point) and `geomean_all` over every task, unreached
     ones at their relaxed-target size (not comparable across models; shown for completeness);
  5. after every trained run and every circuit, `sweep.json` (config, per-run state and results)
     is rewritten atomically. The files are the source of truth, so a rerun skips finished work.
The library never prints: progress goes to `on_event(message)` and `on_step(run_name, StepReport)`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.config_utils import config_diff
from sparsecircuits.graph import Circuit, geometric_mean
from sparsecircuits.model import checkpoint as ckpt
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.weight_sparse.config import SweepConfig  # torch-free, for the CLI
from sparsecircuits.weight_sparse.presets import get_preset
from sparsecircuits.weight_sparse.prune import PruneConfig
from sparsecircuits.weight_sparse.run import RESUMABLE, RunSpec, StepReport, train_run
from sparsecircuits.weight_sparse.train import TrainConfig

STATE = "sweep.json"
FORMAT = "sparsecircuits-sweep-v1"


@dataclass(frozen=True)
class SweepRun:
    """One model of the grid."""

    name: str
    width: int
    weight_frac: float  # target kept fraction of hidden matrices (1.0 for dense)
    embed_frac: float
    act_sparsity: float  # AbsTopK kept fraction; 1.0 = off
    dense: bool


def _name(width: int, frac: float, act: float, dense: bool) -> str:
    a = "" if dense and act >= 1 else f"-a{act:g}" if act < 1 else "-aoff"
    return f"d{width}-dense{a}" if dense else f"d{width}-w{frac:.4g}{a}"


def expand_grid(cfg: SweepConfig) -> list[SweepRun]:
    """Step 1: the runs of a sweep, by width; at each width the sparse models, then the dense one."""
    runs, ref = [], min(cfg.widths)
    for w in cfg.widths:
        for frac in cfg.weight_fracs:
            hidden = frac * (ref / w) ** 2 if cfg.match_nonzeros else frac
            embed = min(1.0, cfg.embed_ratio * frac) * ((ref / w) if cfg.match_nonzeros else 1.0)
            for act in cfg.act_sparsities:
                runs.append(SweepRun(_name(w, hidden, act, False), w, hidden, embed, act, False))
        if cfg.dense_baselines:
            runs.append(SweepRun(_name(w, 1.0, cfg.dense_act_sparsity, True), w, 1.0, 1.0, cfg.dense_act_sparsity, True))
    return runs


def run_spec(cfg: SweepConfig, run: SweepRun) -> RunSpec:
    """The `RunSpec` of one run: the preset's defaults, the sweep's shared settings, the run's grid point."""
    preset = get_preset(cfg.preset)
    model = {**preset.model, "n_layers": cfg.n_layers, "d_model": run.width, "n_heads": run.width // cfg.d_head,
             "d_head": cfg.d_head, "d_mlp": cfg.mlp_ratio * run.width, "n_ctx": cfg.n_ctx,
             "act_sparsity": run.act_sparsity, "d_vocab": cfg.data.vocab_size}
    train = {**preset.train, "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
             "dense": run.dense, "val_every": 0, "val_batches": cfg.val_batches, "ckpt_every": cfg.ckpt_every,
             "keep_checkpoints": 1, "log_every": 10}
    if cfg.lr:
        train["lr"] = cfg.lr
    if not run.dense:
        train.update(weight_frac=run.weight_frac, embed_frac=run.embed_frac)
    return RunSpec(ModelConfig(**model), TrainConfig(**train), cfg.data)


@dataclass
class TaskResult:
    task: str
    n_nodes: int
    n_edges: int
    reached: bool  # circuit loss <= the absolute target (prune.target_loss)
    target_used: float  # the target bisection aimed for (relaxed when the model cannot reach the absolute one)
    circuit_loss: float
    full_loss: float
    full_accuracy: float
    empty_loss: float  # every node mean-ablated: below the target, the task needs no circuit (bigram table, biases)
    seconds: float


@dataclass
class RunRow:
    run: SweepRun
    step: int  # training steps done
    trained: bool
    val_loss: float | None
    hidden_kept: float | None  # measured nonzero fraction of the hidden matrices
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # task -> why it could not be pruned
    geomean_common: float | None = None  # over the tasks every model reaches (the frontier's y axis)
    geomean_all: float | None = None  # over every pruned task, unreached at their relaxed-target size

    @property
    def n_reached(self) -> int:
        return sum(t.reached for t in self.tasks.values())


@dataclass
class SweepResult:
    out_dir: Path
    config: SweepConfig
    rows: list[RunRow]
    common_tasks: list[str]  # reached by every model
    complete: bool  # every run trained and every task pruned
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = dataclasses.asdict(r)
            d["n_reached"] = r.n_reached
            rows.append(d)
        return {"format": FORMAT, "config": self.config.to_dict(), "complete": self.complete,
                "common_tasks": self.common_tasks, "seconds": self.seconds, "runs": rows,
                "geomean_note": "geomean_common: edges over tasks every model reaches at prune.target_loss; "
                                "geomean_all: over every task, unreached ones at their relaxed target (full loss + slack)"}


def load_state(out_dir: Path) -> dict[str, Any] | None:
    """The saved `sweep.json` of a sweep folder, or None."""
    path = Path(out_dir) / STATE
    return ckpt.read_json(path) if path.exists() else None


def _check_compatible(cfg: SweepConfig, out_dir: Path) -> None:
    saved = load_state(out_dir)
    if saved is None:
        return
    old = SweepConfig(**saved["config"])
    keep = ("widths", "weight_fracs", "act_sparsities", "dense_baselines", "tasks")  # the grid may grow
    diffs = config_diff(old, cfg, ignore=keep)
    if diffs:
        raise ValueError(f"{str(out_dir)!r} holds a sweep with other settings ({'; '.join(diffs)}); "
                         "use another --out or the same settings (only the grid and tasks may change)")


def _final_checkpoint(spec: RunSpec, run_dir: Path) -> tuple[Path | None, int]:
    """The newest checkpoint of a run and its step; a saved run with other settings is an error."""
    steps = ckpt.list_steps(run_dir)
    if not steps:
        return None, 0
    meta = ckpt.read_json(steps[-1] / ckpt.META)
    saved = RunSpec.from_dict(meta["spec"])
    diffs = config_diff(saved.train, spec.train, ignore=RESUMABLE) + config_diff(saved.model, spec.model, ignore=("d_vocab",))
    if diffs:
        raise ValueError(f"{str(run_dir)!r} was trained with other settings: {'; '.join(diffs)}")
    return steps[-1], int(meta["step"])


def _hidden_kept(model: Any) -> float:
    params = dict(model.named_parameters())
    ws = [params[s.name] for s in model.sparse_weights() if s.group == "hidden"]
    return float(sum(int((w != 0).sum()) for w in ws) / max(1, sum(w.numel() for w in ws)))


def _task_result(circuit: Circuit, cfg: PruneConfig) -> TaskResult:
    md = circuit.metadata
    target = float(md["target_loss_used"])
    reached = bool(md["reached_target"]) and md["losses"]["circuit"] <= cfg.target_loss
    return TaskResult(str(md["task"]), int(md["n_nodes"]), int(md["n_edges"]), reached, target,
                      float(md["losses"]["circuit"]), float(md["losses"]["full"]), float(md["accuracy"]["full"]),
                      float(md["losses"]["empty"]), float(md.get("sweep_seconds", 0.0)))


def _reusable(path: Path, cfg: SweepConfig) -> Circuit | None:
    """A saved circuit made with this sweep's pruning settings and example count, else None."""
    if not path.exists():
        return None
    try:
        c = Circuit.load(path)
    except ValueError:
        return None  # unreadable: recompute
    md = c.metadata
    same = md.get("hyperparameters") == dataclasses.asdict(cfg.prune) and md.get("sweep_n_examples") == cfg.n_examples
    return c if same else None


Event = Callable[[str], None]


def _prune_run(row: RunRow, cfg: SweepConfig, run_dir: Path, cache_dir: Path, on_event: Event,
               save: Callable[[], None]) -> None:
    """Step 3 for one trained run: prune every task whose circuit file is missing or stale."""
    from sparsecircuits.ablation import checkpoint_means
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.tasks.base import TaskError, load_task
    from sparsecircuits.weight_sparse.prune import prune_task

    loaded = None
    for task in cfg.tasks:
        path = run_dir / "circuits" / f"{task}.json"
        circuit = _reusable(path, cfg)
        if circuit is not None:
            row.tasks[task] = _task_result(circuit, cfg.prune)
            continue
        if loaded is None:
            ck = ckpt.load_checkpoint(run_dir)
            assert ck.tokenizer_path is not None  # train_run always saves it
            tok = load_tokenizer(ck.tokenizer_path)
            loaded = (ck.model.eval(), tok, checkpoint_means(ck.model, ck.meta, tok, cache_dir))
        model, tok, means = loaded
        on_event(f"{row.run.name}: pruning {task}")
        t0 = time.perf_counter()
        try:
            data = load_task(task, tok, model.cfg.n_ctx, n=cfg.n_examples)
        except TaskError as e:
            row.errors[task] = str(e)
            on_event(f"{row.run.name}: {task} skipped ({e})")
            continue
        circuit = prune_task(model, data, cfg.prune, means=means).circuit
        circuit.metadata.update(model=str(run_dir), sweep_run=row.run.name, sweep_n_examples=cfg.n_examples,
                                sweep_seconds=time.perf_counter() - t0)
        circuit.save(path)
        row.tasks[task] = res = _task_result(circuit, cfg.prune)
        on_event(f"{row.run.name}: {task} {res.n_nodes} nodes, {res.n_edges} edges, circuit loss "
                 f"{res.circuit_loss:.3f} ({'reached' if res.reached else 'NOT reached'} {cfg.prune.target_loss:g})")
        save()


def summarise(rows: list[RunRow], tasks: tuple[str, ...]) -> list[str]:
    """Step 4: fill the geometric means of every row; returns the tasks every model reaches."""
    common = [t for t in tasks if rows and all(t in r.tasks and r.tasks[t].reached for r in rows)]
    for r in rows:
        r.geomean_common = geometric_mean([float(r.tasks[t].n_edges) for t in common]) if common else None
        r.geomean_all = geometric_mean([float(t.n_edges) for t in r.tasks.values()]) if r.tasks else None
    return common


def run_sweep(
    cfg: SweepConfig,
    out_dir: Path,
    cache_dir: Path,
    *,
    on_event: Event = lambda msg: None,
    on_step: Callable[[str, StepReport], None] | None = None,
    should_stop: Callable[[str, int], bool] | None = None,
    on_run_done: Callable[[RunRow], None] | None = None,
) -> SweepResult:
    """Train, prune and summarise a sweep (see the module docstring), resuming whatever is in
    `out_dir`. `should_stop(run_name, step)` ends the sweep early as a kill would (`complete` False);
    `on_run_done(row)` is called when a model is trained and all its tasks are pruned."""
    t0 = time.perf_counter()
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    _check_compatible(cfg, out_dir)
    rows = [RunRow(run, 0, False, None, None) for run in expand_grid(cfg)]
    result = SweepResult(out_dir, cfg, rows, [], False, 0.0)

    def save() -> None:
        result.common_tasks = summarise(rows, cfg.tasks)
        result.seconds = time.perf_counter() - t0
        atomic_write_text(out_dir / STATE, json.dumps(result.to_dict(), indent=1))

    for row in rows:
        spec, run_dir = run_spec(cfg, row.run), out_dir / "runs" / row.run.name
        last, step = _final_checkpoint(spec, run_dir)
        if step < cfg.steps:
            on_event(f"{row.run.name}: resuming from step {step}" if last else f"{row.run.name}: training")
            stop = None if should_stop is None else (lambda s, n=row.run.name: should_stop(n, s))
            step_cb = None if on_step is None else (lambda r, n=row.run.name: on_step(n, r))
            res = train_run(spec, run_dir, cache_dir, resume=last is not None, on_step=step_cb, should_stop=stop)
            if res.stopped_early:
                row.step = res.step
                save()
                on_event(f"{row.run.name}: stopped at step {res.step}; rerun to resume")
                return result
            last, step = _final_checkpoint(spec, run_dir)
        assert last is not None
        ck = ckpt.load_checkpoint(last)
        row.step, row.trained = step, True
        row.val_loss = ck.meta.get("metrics", {}).get("val_loss")
        row.hidden_kept = _hidden_kept(ck.model)
        save()
        _prune_run(row, cfg, run_dir, cache_dir, on_event, save)
        if on_run_done is not None:
            on_run_done(row)
    result.complete = all(r.trained and len(r.tasks) + len(r.errors) == len(cfg.tasks) for r in rows)
    save()
    return result
