"""Cost of learned-mask pruning on CPU, before/after a change, its scaling, and torch's thread count.

Three tables, each measured in fresh processes (one torch thread unless said otherwise):
  * all-in prunes of one task on the shipped sparse model (default block_colon, `PruneConfig`'s
    defaults): wall and CPU seconds from loading the checkpoint, tokenizer, task and (cached) mean
    baselines to the finished circuit. With `--base DIR` (a checkout of the previous code, e.g.
    `git worktree add /tmp/base HEAD~1`), its prunes run interleaved with this checkout's, old, new,
    old, new, ..., and the table says whether each circuit is the same: identical nodes and edges
    (`structure`) and node scores equal up to float rounding (the largest difference is reported;
    `circuit` hashes the scores too, so it shows where they are bitwise equal);
  * scaling: CPU milliseconds per gate step (batch 64, block_colon prompts) of random models built
    from the quickstart config at several layers x d_model, old and new side by side when `--base`;
  * threads: wall and CPU seconds of a prune (quickstart budget) and of training steps of the shipped
    sparse model with 1 and 2 torch threads, with the machine as it is and with one extra process
    spinning on a core (started and stopped here).
With `--quickstart`, also the README's `sparsecircuits quickstart` itself (a fresh process, pages
included), with an empty and then a warm cache. The load average is recorded with every row (other
jobs share the machine), and `_yardstick.yardstick_seconds()` (a fixed plain-torch workload) at the
start and end, so runs on CPUs of different speed compare. Prints the tables and writes JSON
(default `benchmarks/results/prune.json`).

    python benchmarks/prune.py [--base /tmp/base] [--task block_colon] [--rounds 2] [--skip-scaling]
                               [--skip-threads] [--quickstart]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "sparsecircuits" / "assets" / "quickstart" / "sparse"
SCALING = [(2, 64), (2, 128), (4, 64), (4, 128), (4, 256), (8, 128), (8, 256)]


# ----------------------------------------------------------------------------------------------
# Workers: each runs in a fresh interpreter whose PYTHONPATH picks the code under test.


def _worker_prune(job: dict) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    from sparsecircuits.ablation import checkpoint_means
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.tasks.base import load_task
    from sparsecircuits.weight_sparse.prune import PruneConfig, prune_task

    ck = load_checkpoint(Path(job["model"]))
    tok = load_tokenizer(ck.tokenizer_path)
    means = checkpoint_means(ck.model, ck.meta, tok, Path(job["cache"]))
    data = load_task(job["task"], tok, ck.model.cfg.n_ctx)
    if job.get("budget") == "quickstart":
        from sparsecircuits.weight_sparse.quickstart import QUICKSTART_PRUNE as config
    else:
        config = {}
    result = prune_task(ck.model, data, PruneConfig(**config), means)
    circuit = result.circuit
    nodes, edges = sorted(n.id for n in circuit.nodes), sorted(str(e) for e in circuit.edges)
    ident = json.dumps({"nodes": nodes, "edges": edges, "scores": circuit.scores}, sort_keys=True)
    structure = json.dumps({"nodes": nodes, "edges": edges})
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "nodes": circuit.metadata["n_nodes"], "edges": circuit.metadata["n_edges"], "scores": circuit.scores,
            "structure_sha256": hashlib.sha256(structure.encode()).hexdigest()[:16],
            "circuit_sha256": hashlib.sha256(ident.encode()).hexdigest()[:16]}


def _worker_scaling(job: dict) -> dict:
    import torch

    from sparsecircuits.ablation import mean_activations, prune_sites
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.evaluate import MaskedTask
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.model.transformer import Transformer
    from sparsecircuits.tasks.base import load_task
    from sparsecircuits.weight_sparse.prune import PruneConfig, train_gates

    shipped = load_checkpoint(Path(job["model"]))
    tok = load_tokenizer(shipped.tokenizer_path)
    cfg = {**shipped.model.cfg.to_dict(), "n_layers": job["layers"], "d_model": job["d_model"],
           "n_heads": job["d_model"] // 16, "d_mlp": 4 * job["d_model"]}
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**cfg)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = load_task(job["task"], tok, model.cfg.n_ctx)
    means = mean_activations(model, [torch.randint(0, model.cfg.d_vocab, (8, 64), generator=torch.Generator().manual_seed(1))])
    task = MaskedTask(model, data.subset(torch.arange(128)), "mean", means, prune_sites(model))
    train_gates(task, PruneConfig(steps=2))  # warm-up
    c0 = time.process_time()
    train_gates(task, PruneConfig(steps=job["steps"]))
    return {"ms_per_step": 1000 * (time.process_time() - c0) / job["steps"]}


def _worker_train(job: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from sparsecircuits.model.checkpoint import load_checkpoint

    model = load_checkpoint(Path(job["model"])).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.cfg.d_vocab, (8, model.cfg.n_ctx + 1), generator=g) for _ in range(job["steps"] + 1)]

    def step(b: torch.Tensor) -> None:
        loss = F.cross_entropy(model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches[1:]:
        step(b)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "steps": job["steps"]}


WORKERS = {"prune": _worker_prune, "scaling": _worker_scaling, "train": _worker_train}


def run_worker(job: dict, code: Path, threads: int | None = 1) -> dict:
    """Run one job in a fresh interpreter importing sparsecircuits from `code`; adds the load average."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("SPARSECIRCUITS_THREADS", None)
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, check=True,
                         capture_output=True, text=True, cwd=code)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load_1min": round((load + os.getloadavg()[0]) / 2, 2)}


# ----------------------------------------------------------------------------------------------


def all_in_rows(args: argparse.Namespace, console) -> list[dict]:
    job = {"model": str(args.model), "task": args.task, "cache": str(args.cache)}
    versions = [("new", REPO)] + ([("old", args.base)] if args.base else [])
    if args.rounds < 1:
        return []
    run_worker(job, REPO)  # fills the mean-baseline cache, so no row pays for it
    rows = []
    for r in range(args.rounds):
        for name, code in sorted(versions, key=lambda v: v[0] != "old"):  # old first in each round
            row = {"round": r + 1, "code": name, **run_worker(job, code)}
            console.log(f"prune {args.task} ({name}, round {r + 1}): {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU")
            rows.append(row)
    return rows


def scaling_rows(args: argparse.Namespace, console) -> list[dict]:
    rows = []
    for layers, d in SCALING:
        steps = max(4, int(args.scaling_steps * (4 * 128) / (layers * d)))
        job = {"model": str(args.model), "task": args.task, "layers": layers, "d_model": d, "steps": steps}
        row: dict = {"layers": layers, "d_model": d, "steps": steps}
        for name, code in ([("old", args.base)] if args.base else []) + [("new", REPO)]:
            res = run_worker({**job, "kind": "scaling"}, code)
            row[f"{name}_ms_per_step"], row["load_1min"] = res["ms_per_step"], res["load_1min"]
        console.log(f"scaling L={layers} d={d}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items() if k.endswith("step")))
        rows.append(row)
    return rows


def threads_rows(args: argparse.Namespace, console) -> list[dict]:
    jobs = {"prune (quickstart budget)": {"kind": "prune", "model": str(args.model), "task": args.task,
                                          "cache": str(args.cache), "budget": "quickstart"},
            "20 training steps, batch 8 x 128": {"kind": "train", "model": str(args.model), "steps": 20}}
    rows = []
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for what, job in jobs.items():
                for threads in (1, 2):
                    res = run_worker(job, REPO, threads)
                    rows.append({"what": what, "threads": threads, "extra_busy_core": busy,
                                 "wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "load_1min": res["load_1min"]})
                    console.log(f"{what}, {threads} thread(s), busy core {busy}: {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    return rows


def quickstart_rows(console) -> list[dict]:
    """Wall seconds of `sparsecircuits quickstart` in a fresh process, empty cache then warm."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for what in ("quickstart, empty cache (fresh machine)", "quickstart, warm cache"):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sparsecircuits", "quickstart", "--out", f"{tmp}/out",
                            "--cache-dir", f"{tmp}/cache"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
            rows.append({"what": what, "wall_s": time.perf_counter() - t0, "load_1min": (load + os.getloadavg()[0]) / 2})
            console.log(f"{what}: {rows[-1]['wall_s']:.1f} s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help="checkout of the code to compare against (old rows)")
    ap.add_argument("--model", type=Path, default=SHIPPED)
    ap.add_argument("--task", default="block_colon")
    ap.add_argument("--rounds", type=int, default=2, help="old/new pairs of all-in prunes")
    ap.add_argument("--scaling-steps", type=int, default=16, help="gate steps at 4 layers x 128 (fewer when larger)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sparsecircuits")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-threads", action="store_true")
    ap.add_argument("--quickstart", action="store_true", help="also time `sparsecircuits quickstart`")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prune.json")
    args = ap.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(WORKERS[job.get("kind", "prune")](job)))
        return

    from _yardstick import yardstick_seconds  # benchmarks/ is on the path
    from rich.console import Console
    from rich.table import Table

    console = Console()
    start_load = os.getloadavg()
    yard = [yardstick_seconds(repeats=7)]
    result: dict = {"all_in": all_in_rows(args, console)}
    result["scaling"] = [] if args.skip_scaling else scaling_rows(args, console)
    result["threads"] = [] if args.skip_threads else threads_rows(args, console)
    result["quickstart"] = quickstart_rows(console) if args.quickstart else []
    yard.append(yardstick_seconds(repeats=7))

    table = Table(title=f"prune {args.task}, shipped sparse model, all-in, one thread")
    for col in ("round", "code", "wall s", "CPU s", "nodes", "edges", "structure", "circuit", "load"):
        table.add_column(col, justify="right")
    for r in result["all_in"]:
        table.add_row(str(r["round"]), r["code"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", str(r["nodes"]),
                      str(r["edges"]), r["structure_sha256"], r["circuit_sha256"], f"{r['load_1min']:.1f}")
    console.print(table)
    cpu = {c: sum(r["cpu_s"] for r in result["all_in"] if r["code"] == c) for c in ("old", "new")}
    wall = {c: sum(r["wall_s"] for r in result["all_in"] if r["code"] == c) for c in ("old", "new")}
    summary: dict = {}
    if cpu["old"]:
        rows = result["all_in"]
        first = rows[0]["scores"]
        same = (len({r["structure_sha256"] for r in rows}) == 1
                and all(r["scores"].keys() == first.keys() for r in rows))
        score_diff = max((abs(r["scores"][k] - first[k]) for r in rows for k in first), default=0.0) if same else None
        summary = {"cpu_speedup": cpu["old"] / cpu["new"], "wall_speedup": wall["old"] / wall["new"],
                   "same_nodes_and_edges": same, "max_node_score_difference": score_diff,
                   "circuits_bitwise_identical": len({r["circuit_sha256"] for r in rows}) == 1}
        console.print(f"old/new: {summary['cpu_speedup']:.2f}x CPU, {summary['wall_speedup']:.2f}x wall; "
                      f"same nodes and edges: {same}; largest node-score difference: {score_diff}; "
                      f"bitwise identical: {summary['circuits_bitwise_identical']}")
    result["summary"] = summary
    if result["scaling"]:
        table = Table(title="CPU ms per gate step (batch 64), random models")
        for col in ("layers", "d_model", "old", "new", "old/new", "load"):
            table.add_column(col, justify="right")
        for r in result["scaling"]:
            old = r.get("old_ms_per_step")
            table.add_row(str(r["layers"]), str(r["d_model"]), f"{old:.0f}" if old else "-", f"{r['new_ms_per_step']:.0f}",
                          f"{old / r['new_ms_per_step']:.2f}" if old else "-", f"{r['load_1min']:.1f}")
        console.print(table)
    for r in result["quickstart"]:
        console.print(f"{r['what']}: {r['wall_s']:.1f} s (load {r['load_1min']:.1f})")
    if result["threads"]:
        table = Table(title="torch threads (this checkout)")
        for col in ("what", "threads", "extra busy core", "wall s", "CPU s", "load"):
            table.add_column(col, justify="left" if col == "what" else "right")
        for r in result["threads"]:
            table.add_row(r["what"], str(r["threads"]), "yes" if r["extra_busy_core"] else "no", f"{r['wall_s']:.1f}",
                          f"{r['cpu_s']:.1f}", f"{r['load_1min']:.1f}")
        console.print(table)
    result["meta"] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor()
                      or platform.machine(), "cpus": os.cpu_count(), "load_start": start_load, "load_end": os.getloadavg(),
                      "base": str(args.base) if args.base else None, "task": args.task,
                      "yardstick_seconds": {"start": yard[0], "end": yard[1]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
