"""The first cross-paper comparison (issue 24): Gao et al.'s learned-mask pruning next to the
component-circuit methods of the field (EAP-IG, ACDC) and Lan et al. (iterative pruning), on the
shipped weight-sparse model and its dense twin, for every Python task the sparse model solves.

One command (wall time: tens of minutes on 2 CPU cores):

    python scripts/cross_paper.py --out runs/cross-paper

It drives the CLI (so it measures what a user gets): per model and task, `sparsecircuits prune`
(quickstart budget) and `sparsecircuits discover --method eap-ig|acdc|iterative --ablation mean`
(mean ablation, as pruning uses), then `sparsecircuits check` on every circuit. It writes
`summary.json` and prints Markdown tables (paste them into docs/results.md):

* size per task, method and model: components (heads, MLPs; the embedding is not counted) and
  edges, and the dense/sparse ratio of edges. Pruning's edges are weight-level edges between
  channels (Gao et al. count those); the component methods' edges are component-graph edges, so
  edge counts compare models within a method, never methods with each other;
* agreement between methods: IoU of the sets of heads and MLPs. Pruning's channels are mapped to
  components: a q/k/v channel to its head, an MLP neuron to its MLP; residual-stream and
  attention-output channels belong to no single component and are left out of that set;
* `check`: Pearson / Spearman of each circuit's scores against exact patching of a stratified sample
  of its items, and sign agreement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sparsecircuits.graph import geometric_mean  # Gao et al.'s summary; an empty circuit counts as 1

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "sparsecircuits" / "assets" / "quickstart"
COMPONENT_METHODS = ("eap-ig", "acdc", "iterative")
METHODS = ("prune",) + COMPONENT_METHODS


def solved_tasks() -> list[str]:
    rec = json.loads((ASSETS / "tasks-sparse.json").read_text())["tasks"]
    return sorted(t for t, r in rec.items() if (r.get("accuracy") or 0) >= 0.9)


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def components(circuit: dict, method: str) -> set[str]:
    """Heads and MLPs of a circuit ("L3.h5", "L2.mlp"); pruning's channels mapped to their component."""
    out = set()
    for n in circuit["nodes"]:
        site, kind, layer, idx = n["site"], n["kind"], n["layer"], n["index"]
        if method != "prune":
            if kind == "head":
                out.add(f"L{layer}.h{idx}")
            elif kind == "mlp":
                out.add(f"L{layer}.mlp")
            continue
        if site.endswith(("attn.hook_q", "attn.hook_k", "attn.hook_v")):
            out.add(f"L{layer}.h{idx // circuit['metadata'].get('d_head', 16)}")
        elif site.endswith(("mlp.hook_post", "mlp.hook_pre")):
            out.add(f"L{layer}.mlp")
    return out


def iou(a: set[str], b: set[str]) -> float | None:
    return len(a & b) / len(a | b) if a | b else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/cross-paper"))
    ap.add_argument("--tasks", nargs="*", default=None, help="default: every task the shipped sparse model solves")
    ap.add_argument("--n-examples", type=int, default=64, help="examples per task for discover and check")
    ap.add_argument("--check-n", type=int, default=48, help="items `check` samples per circuit")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                    help="run only these now (the tables need all: finished circuits are reused)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: print the tables from the circuits already in --out (missing cells: -)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    tasks = args.tasks or solved_tasks()
    exe = [sys.executable, "-m", "sparsecircuits"]
    d_head = json.loads((ASSETS / "sparse" / "config.json").read_text())["d_head"]
    t_start = time.perf_counter()
    rows = []
    for task, kind, method in itertools.product(tasks, ("sparse", "dense"), METHODS):
        model = str(ASSETS / kind)
        path = out / f"{task}-{kind}-{method}.json"
        if not path.exists() and (method not in args.methods or args.report_only):
            continue
        if not path.exists():
            if method == "prune":
                cmd = exe + ["prune", model, "--task", task, "--out", str(path), "--batch-size", "16",
                             "--effect-examples", "16"]
            else:
                cmd = exe + ["discover", "--model", model, "--task", task, "--method", method, "--out", str(path),
                             "--n-examples", str(args.n_examples), "--ablation", "mean", "--no-curve",
                             "--bootstrap", "0"]
            secs = run(cmd, log)
            run(exe + ["check", str(path), "--model", model, "--task", task, "--n", str(args.check_n),
                       "--n-examples", str(args.n_examples)], log)
            print(f"{task:22s} {kind:6s} {method:9s} {secs:6.1f} s", flush=True)
        c = json.loads(path.read_text())
        c["metadata"].setdefault("d_head", d_head)
        chk = c["metadata"].get("check") or {}
        rows.append({"task": task, "model": kind, "method": method, "components": sorted(components(c, method)),
                     "n_components": len(components(c, method)), "n_nodes": len(c["nodes"]),
                     "n_edges": len(c["edges"]), "pearson": chk.get("pearson"), "spearman": chk.get("spearman"),
                     "sign_agreement": chk.get("sign_agreement"), "check_items": chk.get("items")})
    wall = time.perf_counter() - t_start
    complete = len(rows) == len(tasks) * 2 * len(METHODS)
    if not complete and not args.report_only:
        print(f"{len(rows)} of {len(tasks) * 2 * len(METHODS)} circuits done; rerun with every method for the tables")
        return 0
    by = {(r["task"], r["model"], r["method"]): r for r in rows}
    agreement = []
    for task, kind in itertools.product(tasks, ("sparse", "dense")):
        for a, b in itertools.combinations(METHODS, 2):
            if (task, kind, a) in by and (task, kind, b) in by:
                agreement.append({"task": task, "model": kind, "a": a, "b": b, "iou": iou(
                    set(by[task, kind, a]["components"]), set(by[task, kind, b]["components"]))})
    summary = {"tasks": tasks, "complete": complete, "rows": rows, "agreement": agreement, "wall_s": round(wall, 1),
               "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
               "note": "edges: prune = weight edges between channels; component methods = component-graph edges"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    def f(x: float | None, nd: int = 2) -> str:
        return "–" if x is None else f"{x:.{nd}f}"

    def g(x: int | None) -> str:
        return "–" if x is None else str(x)

    print("\n| task | method | components sparse / dense | edges sparse / dense | dense/sparse edges | check r sparse / dense |")
    print("|---|---|---|---|---|---|")
    missing = {"n_components": None, "n_edges": None, "pearson": None}
    for task, method in itertools.product(tasks, METHODS):
        s, d = by.get((task, "sparse", method), missing), by.get((task, "dense", method), missing)
        ratio = d["n_edges"] / s["n_edges"] if s["n_edges"] and d["n_edges"] is not None else None
        print(f"| {task} | {method} | {g(s['n_components'])} / {g(d['n_components'])} | {g(s['n_edges'])} / "
              f"{g(d['n_edges'])} | {f(ratio, 1)} | {f(s['pearson'])} / {f(d['pearson'])} |")
    print("\n| method | geometric mean edges, sparse / dense (tasks with both) | dense/sparse | components, sparse / dense |")
    print("|---|---|---|---|")
    for method in METHODS:
        both = [t for t in tasks if (t, "sparse", method) in by and (t, "dense", method) in by]
        if not both:
            print(f"| {method} | – | – | – |")
            continue
        gs, gd = (geometric_mean([by[t, k, method]["n_edges"] for t in both]) for k in ("sparse", "dense"))
        cs, cd = (geometric_mean([by[t, k, method]["n_components"] for t in both]) for k in ("sparse", "dense"))
        print(f"| {method} | {gs:,.0f} / {gd:,.0f} ({len(both)} tasks) | {gd / gs:.1f} | {cs:.1f} / {cd:.1f} |")
    print("\n| methods | component IoU, sparse (mean over tasks) | dense |")
    print("|---|---|---|")
    for a, b in itertools.combinations(METHODS, 2):
        vals = {k: [g["iou"] for g in agreement if g["a"] == a and g["b"] == b and g["model"] == k and g["iou"] is not None]
                for k in ("sparse", "dense")}
        print(f"| {a} vs {b} | {f(sum(vals['sparse']) / len(vals['sparse']) if vals['sparse'] else None)} | "
              f"{f(sum(vals['dense']) / len(vals['dense']) if vals['dense'] else None)} |")
    print(f"\nwall {wall:.0f} s, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
