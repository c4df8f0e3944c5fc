"""Cost of weight sparsity per training step: `train_step` of the sparse model vs its dense twin.

For each preset (model sizes and batch from `sparsecircuits.weight_sparse.presets.PRESETS`, vocabulary 2048,
random tokens, fp32 on CPU) three variants are timed, each with its own model and Adam state:

* `dense`     — `TrainConfig(dense=True)`: no projection, the baseline;
* `annealing` — the sparse model at the middle of the L0 annealing window (kept fraction between 1
  and the target; every step projects every matrix onto its scheduled top-k);
* `annealed`  — the sparse model after the window (at the target kept fraction; still projects
  every step, since Adam revives pruned weights).

Variants are interleaved — each round runs one step of each, in an order that rotates between
rounds — so machine load drifts over all of them alike. After `--warmup` rounds, `--steps` rounds
are timed; the table shows the median ms/step, tokens/s (batch x n_ctx predicted tokens per step),
the ratio to the dense step of the same run, and the median time spent in `project_weights` and
its share of the step (measured inside the real step by wrapping `train.project_weights`).

    python benchmarks/train_step.py [--presets tiny small] [--steps 5] [--warmup 1]
                                    [--threads 0] [--out benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

import sparsecircuits.weight_sparse.train as train
from sparsecircuits.model import ModelConfig, Transformer
from sparsecircuits.weight_sparse.presets import PRESETS
from sparsecircuits.weight_sparse.train import (
    StepInput,
    TrainConfig,
    autocast_for,
    make_optimizer,
    train_step,
)

D_VOCAB = 2048
VARIANTS = ("dense", "annealing", "annealed")


@dataclass
class VariantResult:
    preset: str
    variant: str
    step: int  # schedule step the variant is evaluated at
    kept: dict[str, float]  # scheduled kept fraction per weight group at that step
    step_ms_samples: list[float] = field(default_factory=list)  # one entry per timed step
    project_ms_samples: list[float] = field(default_factory=list)  # time in project_weights, same steps

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms_samples)

    @property
    def median_project_ms(self) -> float:
        return statistics.median(self.project_ms_samples)


@contextlib.contextmanager
def timed_projection(sink: list[float]) -> Iterator[None]:
    """Wrap `train.project_weights` (looked up at call time by `train_step`) to record its ms."""
    original = train.project_weights

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        original(*args, **kwargs)
        sink.append((time.perf_counter() - t0) * 1e3)

    train.project_weights = wrapper
    try:
        yield
    finally:
        train.project_weights = original


def eval_steps(cfg: TrainConfig) -> dict[str, int]:
    """Schedule step of each variant: mid-window for `annealing`, 3/4 of training for `annealed`."""
    mid = round((cfg.anneal_start + cfg.anneal_end) / 2 * cfg.steps)
    after = max(round(0.75 * cfg.steps), round(cfg.anneal_end * cfg.steps) + 1)
    return {"dense": mid, "annealing": mid, "annealed": after}


def bench_preset(name: str, steps: int, warmup: int) -> tuple[list[VariantResult], int]:
    """Time the three variants of one preset; returns the results and tokens per step."""
    preset = PRESETS[name]
    mcfg = ModelConfig(**{**preset.model, "d_vocab": D_VOCAB})
    base = TrainConfig(**{**preset.train, "precision": "fp32", "device": "cpu"})
    at = eval_steps(base)
    cpu = torch.device("cpu")
    runs = {}
    for variant in VARIANTS:
        cfg = TrainConfig(
            **{**preset.train, "precision": "fp32", "device": "cpu", "dense": variant == "dense"}
        )
        torch.manual_seed(cfg.seed)
        model = Transformer(mcfg)  # the same initialisation for all three
        runs[variant] = (model, make_optimizer(model, cfg), cfg)
    results = {v: VariantResult(name, v, at[v], runs[v][2].kept(at[v])) for v in VARIANTS}
    g = torch.Generator().manual_seed(0)
    for round_ in range(warmup + steps):
        tokens_BT = torch.randint(0, D_VOCAB, (base.batch_size, mcfg.n_ctx + 1), generator=g)
        shift = round_ % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            model, opt, cfg = runs[variant]
            res = results[variant]
            inp = StepInput(tokens_BT, res.step, cfg.lr_at(res.step), res.kept)
            proj: list[float] = []
            with timed_projection(proj):
                t0 = time.perf_counter()
                train_step(model, opt, cfg, inp, lambda: autocast_for(cpu, "fp32"))
                elapsed = (time.perf_counter() - t0) * 1e3
            if round_ >= warmup:
                res.step_ms_samples.append(elapsed)
                res.project_ms_samples.append(sum(proj))
    return [results[v] for v in VARIANTS], base.batch_size * mcfg.n_ctx


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def render(rows: list[dict]) -> Table:
    table = Table(title="train_step on CPU, fp32 (medians over timed steps)", box=box.SIMPLE_HEAD)
    for col in ("preset", "variant", "step", "kept h/e", "ms/step", "tok/s", "x dense", "proj ms", "proj %"):
        table.add_column(col, justify="left" if col in ("preset", "variant") else "right")
    for r in rows:
        table.add_row(
            r["preset"],
            r["variant"],
            str(r["step"]),
            f"{r['kept']['hidden']:.2f}/{r['kept']['embed']:.2f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['vs_dense']:.2f}",
            f"{r['project_ms']:.1f}",
            f"{r['project_share']:.1%}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["tiny", "small"],
        choices=list(PRESETS),
        help="presets to time (default: tiny small; the paper-* ones are GPU-sized)",
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="timed rounds, one step per variant each (default: 5)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: 0 = torch's default)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/train_step.json"),
        help="JSON file to write (default: benchmarks/results/train_step.json)",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    console = Console(width=None if Console().is_terminal else 100)  # no 80-column cut when piped
    rows = []
    t_start = time.perf_counter()
    for name in args.presets:
        with console.status(f"timing preset {name} ({args.warmup} + {args.steps} rounds)"):
            results, tokens_per_step = bench_preset(name, args.steps, args.warmup)
        dense_ms = results[0].median_ms
        for r in results:
            rows.append(
                dict(
                    asdict(r),
                    ms_per_step=r.median_ms,
                    tokens_per_s=tokens_per_step / (r.median_ms / 1e3),
                    vs_dense=r.median_ms / dense_ms,
                    project_ms=r.median_project_ms,
                    project_share=r.median_project_ms / r.median_ms,
                )
            )
    console.print(render(rows))
    report = dict(
        benchmark="train_step",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=cpu_model(),
        python=platform.python_version(),
        d_vocab=D_VOCAB,
        steps=args.steps,
        warmup=args.warmup,
        wall_s=round(time.perf_counter() - t_start, 1),
        results=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
