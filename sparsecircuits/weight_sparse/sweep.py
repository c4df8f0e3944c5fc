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
  3. prune every task on every model once per pruning seed (`weight_sparse.prune.prune_task`, the
     CLI's code and defaults, mean ablation over the pretraining corpus, the same `PruneConfig` for
     all but its seed) and save `runs/<name>/circuits/<task>-s<seed>.json`; a circuit file made with
     the same pruning settings is reused, a deleted one is recomputed;
  4. summarise (`sweep_results.py`): a task is *reached* by a model when its circuits hit the absolute target loss
     (`PruneConfig.target_loss`) at every pruning seed; pruning a model that cannot reach it aims for
     its own loss + slack, and that circuit is recorded but not counted as reached. A task's size is
     the geometric mean of its edges over the seeds. Two geometric means of edges per model:
     `geomean_common` over the tasks that *every* model reaches and on which every full model has
     held-out accuracy >= `min_accuracy` (the headline and the frontier's y axis: same tasks for
     every point; its spread over pruning seeds, `geomean_common_by_seed`, gives the error bars) and
     `geomean_all` over every task, unreached ones at their relaxed-target size (not comparable
     across models; shown for completeness);
  5. after every trained run and every circuit, `sweep.json` (config, per-run state and results)
     is rewritten atomically. The files are the source of truth, so a rerun skips finished work.
With `workers` > 1 the trainings and prunes run in that many spawned processes (`sweep_workers.py`;
one torch thread each; a model's prunes start when it is trained); every job writes the same files
as the serial path, so the results do not depend on the number of workers.
The library never prints: progress goes to `on_event(message)` and `on_step(run_name, StepReport)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.config_utils import config_diff
from sparsecircuits.graph import Circuit
from sparsecircuits.model import checkpoint as ckpt
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.weight_sparse.config import SweepConfig  # torch-free, for the CLI
from sparsecircuits.weight_sparse.presets import get_preset
from sparsecircuits.weight_sparse.prune import PruneConfig
from sparsecircuits.weight_sparse.run import RESUMABLE, RunSpec, StepReport, train_run
from sparsecircuits.weight_sparse.sweep_results import RunRow, frontier_key, summarise, task_result
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
    lr = cfg.lr_by_width[cfg.widths.index(run.width)] if cfg.lr_by_width else cfg.lr
    if lr:
        train["lr"] = lr
    if not run.dense:
        train.update(weight_frac=run.weight_frac, embed_frac=run.embed_frac)
    return RunSpec(ModelConfig(**model), TrainConfig(**train), cfg.data)


@dataclass
class SweepResult:
    out_dir: Path
    config: SweepConfig
    rows: list[RunRow]
    common_tasks: list[str]  # reached by every model, every full model accurate enough
    complete: bool  # every run trained and every task pruned at every seed
    seconds: float  # this invocation
    # Every invocation of the sweep on this folder, oldest first (`_invocation`): when, how long, on
    # what machine under what load, and what it trained and pruned; a killed one keeps its last save.
    invocations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = dataclasses.asdict(r)
            d["n_reached"] = r.n_reached
            rows.append(d)
        return {"format": FORMAT, "config": self.config.to_dict(), "complete": self.complete,
                "common_tasks": self.common_tasks, "seconds": self.seconds, "invocations": self.invocations, "runs": rows,
                "geomean_note": "geomean_common: edges over tasks every model reaches at prune.target_loss at every "
                                "pruning seed, with every full model's accuracy >= min_accuracy; per task the geometric "
                                "mean over seeds; geomean_common_by_seed: the same per seed; geomean_all: over every "
                                "task, unreached ones at their relaxed target (full loss + slack)"}


def load_state(out_dir: Path) -> dict[str, Any] | None:
    """The saved `sweep.json` of a sweep folder, or None."""
    path = Path(out_dir) / STATE
    return ckpt.read_json(path) if path.exists() else None


# Fields that may differ from a saved sweep's: the grid may grow, and these do not change any result.
_MAY_CHANGE = ("widths", "weight_fracs", "act_sparsities", "dense_baselines", "tasks", "pruning_seeds",
               "workers", "min_accuracy", "lr_by_width", "frontier_target")


def _check_compatible(cfg: SweepConfig, out_dir: Path) -> None:
    saved = load_state(out_dir)
    if saved is None:
        return
    old = SweepConfig(**saved["config"])
    diffs = config_diff(old, cfg, ignore=_MAY_CHANGE)
    if diffs:
        raise ValueError(f"{str(out_dir)!r} holds a sweep with other settings ({'; '.join(diffs)}); "
                         "use another --out or the same settings (only the grid, tasks and seeds may change)")


def _final_checkpoint(spec: RunSpec, run_dir: Path) -> tuple[Path | None, int]:
    """The newest checkpoint of a run and its step; a saved run with other settings is an error
    (this also catches a per-width learning rate changed under a trained run)."""
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


def circuit_path(run_dir: Path, task: str, seed: int) -> Path:
    """Where a run's circuit for one task and pruning seed is saved."""
    return Path(run_dir) / "circuits" / f"{task}-s{seed}.json"


def _seed_cfg(cfg: SweepConfig, seed: int) -> PruneConfig:
    return dataclasses.replace(cfg.prune, seed=seed)


def _reusable(path: Path, cfg: SweepConfig, seed: int) -> Circuit | None:
    """A saved circuit made with this sweep's pruning settings (at this seed) and example count, else None."""
    if not path.exists():
        return None
    try:
        c = Circuit.load(path)
    except ValueError:
        return None  # unreadable: recompute
    md = c.metadata
    settings = json.loads(json.dumps(dataclasses.asdict(_seed_cfg(cfg, seed))))  # as saved: lists, not tuples
    same = md.get("hyperparameters") == settings and md.get("sweep_n_examples") == cfg.n_examples
    return c if same else None


Event = Callable[[str], None]


class _Loaded:
    """A trained run's model, tokenizer and mean baselines, loaded on first use."""

    def __init__(self, run_dir: Path, cache_dir: Path) -> None:
        self.run_dir, self.cache_dir = run_dir, cache_dir
        self.value: tuple[Any, Any, Any] | None = None

    def get(self) -> tuple[Any, Any, Any]:
        if self.value is None:
            from sparsecircuits.ablation import checkpoint_means
            from sparsecircuits.data.tokenizer import load_tokenizer

            ck = ckpt.load_checkpoint(self.run_dir)
            assert ck.tokenizer_path is not None  # train_run always saves it
            tok = load_tokenizer(ck.tokenizer_path)
            self.value = (ck.model.eval(), tok, checkpoint_means(ck.model, ck.meta, tok, self.cache_dir))
        return self.value


def _prune_one(loaded: _Loaded, run_name: str, task: str, seed: int, cfg: SweepConfig) -> str | None:
    """Prune one task at one seed and save its circuit; returns why it could not be pruned, or None."""
    from sparsecircuits.tasks.base import TaskError, load_task
    from sparsecircuits.weight_sparse.prune import prune_task

    model, tok, means = loaded.get()
    t0 = time.perf_counter()
    try:
        data = load_task(task, tok, model.cfg.n_ctx, n=cfg.n_examples)
    except TaskError as e:
        return str(e)
    circuit = prune_task(model, data, _seed_cfg(cfg, seed), means=means).circuit
    circuit.metadata.update(model=str(loaded.run_dir), sweep_run=run_name, sweep_n_examples=cfg.n_examples,
                            sweep_seconds=time.perf_counter() - t0)
    circuit.save(circuit_path(loaded.run_dir, task, seed))
    return None


def _collect(row: RunRow, cfg: SweepConfig, run_dir: Path) -> list[tuple[str, int]]:
    """Fill `row.tasks` from the circuit files there are; returns the (task, seed) pairs still to prune."""
    todo = []
    for task in cfg.tasks:
        if task in row.errors:
            continue
        have = []
        for seed in cfg.pruning_seeds:
            c = _reusable(circuit_path(run_dir, task, seed), cfg, seed)
            if c is None:
                todo.append((task, seed))
            else:
                have.append((seed, c))
        if len(have) == len(cfg.pruning_seeds):
            row.tasks[task] = task_result(task, have, cfg.prune)
    return todo


def _done_message(row: RunRow, task: str, cfg: SweepConfig) -> str:
    t = row.tasks[task]
    seeds = f" (seeds {', '.join(map(str, t.edges_by_seed))})" if len(t.seeds) > 1 else ""
    return (f"{row.run.name}: {task} {t.n_nodes:.0f} nodes, {t.n_edges:.0f} edges{seeds}, circuit loss "
            f"{t.circuit_loss:.3f} ({'reached' if t.reached else 'NOT reached'} {cfg.prune.target_loss:g})")


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _invocation(cfg: SweepConfig) -> dict[str, Any]:
    """The record of this invocation in sweep.json (updated at every save)."""
    import datetime

    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0,
            "cpu": _cpu_name(), "cores": os.cpu_count(), "workers": n_workers(cfg), "load_start": list(os.getloadavg()),
            "load_last": list(os.getloadavg()), "load_1min_max": os.getloadavg()[0], "trained": [], "pruned": 0}


def n_workers(cfg: SweepConfig) -> int:
    """Processes the sweep uses: `cfg.workers`, 0 = one per CPU core."""
    return cfg.workers or os.cpu_count() or 1


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
    `out_dir`. `should_stop(run_name, step)` ends the sweep early as a kill would (`complete` False;
    it needs the serial path, so it forces one worker); `on_run_done(row)` is called when a model
    is trained and all its tasks are pruned."""
    t0 = time.perf_counter()
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    _check_compatible(cfg, out_dir)
    rows = [RunRow(run, 0, False, None, None) for run in expand_grid(cfg)]
    saved = load_state(out_dir)
    now = _invocation(cfg)
    result = SweepResult(out_dir, cfg, rows, [], False, 0.0, [*(saved or {}).get("invocations", []), now])

    def log(msg: str) -> None:
        """on_event, counting what this invocation trains and prunes."""
        name, _, what = msg.partition(": ")
        if what == "training" or what.startswith("resuming"):
            now["trained"].append(name)
        elif what.startswith("pruning"):
            now["pruned"] += 1
        on_event(msg)

    def save() -> None:
        result.common_tasks = summarise(rows, cfg.tasks, cfg.min_accuracy, frontier_key(cfg))
        result.seconds = time.perf_counter() - t0
        load = os.getloadavg()
        now.update(seconds=round(result.seconds, 1), load_last=list(load), load_1min_max=max(now["load_1min_max"], load[0]))
        atomic_write_text(out_dir / STATE, json.dumps(result.to_dict(), indent=1))

    def trained(row: RunRow, spec: RunSpec, run_dir: Path) -> None:
        last, step = _final_checkpoint(spec, run_dir)
        assert last is not None
        ck = ckpt.load_checkpoint(last)
        row.step, row.trained = step, True
        row.val_loss = ck.meta.get("metrics", {}).get("val_loss")
        row.hidden_kept = _hidden_kept(ck.model)
        save()

    workers = 1 if should_stop is not None else n_workers(cfg)
    if workers > 1:
        from sparsecircuits.weight_sparse.sweep_workers import run_parallel

        run_parallel(cfg, rows, out_dir, cache_dir, workers, save, trained, log, on_step, on_run_done)
    else:
        for row in rows:
            spec, run_dir = run_spec(cfg, row.run), out_dir / "runs" / row.run.name
            last, step = _final_checkpoint(spec, run_dir)
            if step < cfg.steps:
                log(f"{row.run.name}: resuming from step {step}" if last else f"{row.run.name}: training")
                stop = None if should_stop is None else (lambda s, n=row.run.name: should_stop(n, s))
                step_cb = None if on_step is None else (lambda r, n=row.run.name: on_step(n, r))
                res = train_run(spec, run_dir, cache_dir, resume=last is not None, on_step=step_cb, should_stop=stop)
                if res.stopped_early:
                    row.step = res.step
                    save()
                    log(f"{row.run.name}: stopped at step {res.step}; rerun to resume")
                    return result
            trained(row, spec, run_dir)
            loaded = _Loaded(run_dir, cache_dir)
            for task, seed in _collect(row, cfg, run_dir):
                log(f"{row.run.name}: pruning {task} (seed {seed})")
                err = _prune_one(loaded, row.run.name, task, seed, cfg)
                if err is not None:
                    row.errors[task] = err
                    log(f"{row.run.name}: {task} skipped ({err})")
                    continue
                had = task in row.tasks
                _collect(row, cfg, run_dir)
                if task in row.tasks and not had:
                    log(_done_message(row, task, cfg))
                save()
            if on_run_done is not None:
                on_run_done(row)
    result.complete = all(r.trained and len(r.tasks) + len(r.errors) == len(cfg.tasks) for r in rows)
    save()
    return result
