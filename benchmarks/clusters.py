"""Seconds for the unsupervised many-circuits pipeline (Marks et al. 2025; `feature_circuits/clusters.py`) on
the shipped sparse quickstart model with residual SAEs: collect well-predicted contexts, k-means,
one zero-ablation IG feature circuit per cluster (batched). Prints a table, writes the pipeline's
outputs (index.html, circuits/) to --out and the timings to benchmarks/results/clusters.json.

The SAEs come from `train-dict` (docs/shift.md gives the commands), e.g.

    python benchmarks/clusters.py --dicts runs/saes-qs-sparse/resid0 runs/saes-qs-sparse/resid1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "sparsecircuits/assets/quickstart/sparse")
    p.add_argument("--dicts", type=Path, nargs="+", required=True, help="SAE folders")
    p.add_argument("--out", type=Path, default=ROOT / "runs/clusters-qs", help="pipeline outputs")
    p.add_argument("--windows", type=int, default=256, help="held-out windows scanned (default: 256)")
    p.add_argument("--max-loss", type=float, default=0.3, help="context loss threshold, nats (default: 0.3)")
    p.add_argument("--clusters", type=int, default=64, help="k of k-means (default: 64)")
    p.add_argument("--per-cluster", type=int, default=8, help="contexts per circuit (default: 8)")
    p.add_argument("--ig-steps", type=int, default=5, help="integrated-gradients steps (default: 5)")
    p.add_argument("--edges", action=argparse.BooleanOptionalAction, default=False, help="edges (default: off)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/clusters.json")
    args = p.parse_args()

    from sparsecircuits.cli.clusters import run_clusters, write_outputs
    from sparsecircuits.cli.common import default_cache_dir
    from sparsecircuits.cli.loading import load_dictionaries
    from sparsecircuits.data.batches import val_windows
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.dictionaries.activations import checkpoint_tokens
    from sparsecircuits.feature_circuits.circuit import FeatureCircuitConfig
    from sparsecircuits.feature_circuits.clusters import ClusterConfig
    from sparsecircuits.feature_circuits.dictionary_graph import make_sites
    from sparsecircuits.model.checkpoint import load_checkpoint

    ck = load_checkpoint(args.model)
    model, tok = ck.model.eval(), load_tokenizer(ck.tokenizer_path)
    sites = make_sites(model, load_dictionaries(args.dicts), embed=True)
    n_ctx = model.cfg.n_ctx
    data = checkpoint_tokens(ck, default_cache_dir())
    windows = [w[:, :n_ctx] for w in val_windows(data.val, max(1, args.windows // 16), min(16, args.windows), n_ctx)]
    cfg = ClusterConfig(windows=args.windows, max_loss=args.max_loss, clusters=args.clusters, per_cluster=args.per_cluster)
    ccfg = FeatureCircuitConfig(ablation="zero", ig_steps=args.ig_steps, edges=args.edges)
    ctx, km, members, circuits, secs = run_clusters(model, tok, sites, windows, cfg, ccfg)
    notes = [f"benchmark run: {len(ctx.target)} contexts, k={km.centers.shape[0]}, {len(circuits)} circuits"]
    write_outputs(args.out, tok, ctx, km, circuits, 5, notes, {"seconds": secs})
    nodes = [c.circuit.metadata["n_nodes"] for c in circuits]
    row = {"model": str(args.model.relative_to(ROOT)) if args.model.is_relative_to(ROOT) else str(args.model),
           "sites": [s.name for s in sites], "contexts": len(ctx.target), "clusters": km.centers.shape[0],
           "circuits": len(circuits), "max_loss": args.max_loss, "windows": args.windows, "contexts_per_circuit": args.per_cluster, "ig_steps": args.ig_steps,
           "edges": args.edges, "mean_nodes": sum(nodes) / max(len(nodes), 1), "seconds": secs,
           "seconds_per_circuit": secs["circuits"] / max(len(circuits), 1),
           "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch threads {torch.get_num_threads()} (shared)",
           "date": time.strftime("%Y-%m-%d")}
    print(f"{'stage':<22}{'seconds':>10}")
    for k, v in secs.items():
        print(f"{k:<22}{v:>10.1f}")
    print(f"{len(circuits)} cluster circuits from {len(ctx.target)} contexts "
          f"({row['seconds_per_circuit']:.2f} s per circuit, {row['mean_nodes']:.1f} nodes on average)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
