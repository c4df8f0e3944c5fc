"""Cost of the main job on CPU: pruning one task circuit, and the whole quickstart.

Measures, on the models shipped for `sparsecircuits quickstart` (or `--sparse/--dense` checkpoints):
  * prune one task (default `single_double_quote`) on the sparse and on the dense model: wall
    seconds of `prune_task` (gate optimisation + bisection + node effects + edges), with the mean
    baselines already cached, with `PruneConfig`'s defaults (batch 64, as `sparsecircuits prune`)
    and with the quickstart's budget (`QUICKSTART_PRUNE`: batch 16, effects on 16 examples);
  * the README's `sparsecircuits quickstart` itself (a fresh process, circuit pages included) twice:
    with an empty cache (a fresh machine: tokenizing the corpus, mean baselines) and a warm one.
Targets (issue 3): pruning one task < 60 s; quickstart on a fresh machine < 3 min on 2 CPU cores.
Every row is also given in units of `_yardstick.yardstick_seconds()`, a fixed plain-torch workload
timed at the start and the end of the same run, so runs on CPUs of different speed compare.
Prints a table and writes JSON (default `benchmarks/results/prune.json`).

    python benchmarks/prune.py [--task single_double_quote] [--threads 0] [--skip-quickstart]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _yardstick import yardstick_seconds
from rich.console import Console
from rich.table import Table

from sparsecircuits.ablation import checkpoint_means
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.model.checkpoint import load_checkpoint
from sparsecircuits.tasks.base import load_task
from sparsecircuits.weight_sparse.prune import PruneConfig, prune_task
from sparsecircuits.weight_sparse.quickstart import ASSETS, QUICKSTART_PRUNE


def time_prune(path: Path, task: str, cache: Path, cfg: PruneConfig) -> dict:
    ck = load_checkpoint(path)
    tok = load_tokenizer(ck.tokenizer_path)
    means = checkpoint_means(ck.model, ck.meta, tok, cache)
    data = load_task(task, tok, ck.model.cfg.n_ctx)
    t0 = time.perf_counter()
    result = prune_task(ck.model, data, cfg, means)
    md = result.circuit.metadata
    return {"model": str(path), "task": task, "seconds": time.perf_counter() - t0, "nodes": md["n_nodes"],
            "edges": md["n_edges"], "circuit_loss": md["losses"]["circuit"]}


def time_quickstart(cache: Path) -> float:
    """Wall seconds of the README's command itself, `sparsecircuits quickstart` (a fresh interpreter,
    the circuit pages included), with `cache` as its cache."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sparsecircuits", "quickstart", "--out", out, "--cache-dir", str(cache)],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="single_double_quote")
    ap.add_argument("--sparse", type=Path, default=ASSETS / "sparse")
    ap.add_argument("--dense", type=Path, default=ASSETS / "dense")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/prune.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    rows = []
    yard = [yardstick_seconds(repeats=7)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        if not args.skip_quickstart:
            rows.append({"what": "quickstart, empty cache (fresh machine)", "seconds": time_quickstart(cache)})
            rows.append({"what": "quickstart, warm cache", "seconds": time_quickstart(cache)})
        for budget, cfg in (("defaults", PruneConfig()), ("quickstart budget", PruneConfig(**QUICKSTART_PRUNE))):
            for kind, path in (("sparse", args.sparse), ("dense", args.dense)):
                r = time_prune(path, args.task, cache, cfg)
                rows.append({"what": f"prune {args.task} ({kind}, {budget})", **r})
    yard.append(yardstick_seconds(repeats=7))
    unit = sum(yard) / 2
    for r in rows:
        r["yardsticks"] = r["seconds"] / unit
    table = Table(title=f"main-job cost on CPU ({torch.get_num_threads()} threads); "
                        f"yardstick {unit:.3f} s (start {yard[0]:.3f}, end {yard[1]:.3f})")
    for col in ("what", "seconds", "yardsticks", "nodes", "edges"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in rows:
        table.add_row(r["what"], f"{r['seconds']:.1f}", f"{r['yardsticks']:.0f}", str(r.get("nodes", "")), str(r.get("edges", "")))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "yardstick_seconds": {"start": yard[0], "end": yard[1]}}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
