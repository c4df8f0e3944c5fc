"""CLI command `clusters`: the unsupervised many-circuits pipeline (Marks et al. 2025; rendering and
files only, the work is in `feature_circuits/clusters.py`). Writes circuits/cluster-NNN.json (each opens with
`sparsecircuits view`), clusters.json and index.html into --out."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    cache_dir,
    check_output_path,
    collect,
    command_parser,
)
from sparsecircuits.cli.console import StageBars, stage_progress
from sparsecircuits.cli.loading import load_dictionaries
from sparsecircuits.feature_circuits.config import ClusterConfig, FeatureCircuitConfig


def _clusters_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder (our format, with tokenizer.json)")
    p.add_argument("--dicts", type=Path, nargs="+", required=True,
                   help="dictionary folders (e.g. from `train-dict`), or folders holding several")
    p.add_argument("--out", type=Path, required=True, help="output folder (index.html, clusters.json, circuits/)")
    p.add_argument("--contexts-shown", type=int, default=5, help="contexts per cluster on the index page (default: 5)")
    p.add_argument("--cache-dir", type=Path, default=None, help="token cache (default: $SPARSECIRCUITS_CACHE)")
    add_config_flags(p, ClusterConfig, "clusters")
    add_config_flags(p, FeatureCircuitConfig, "circuits (ablation is zero)", defaults={"ablation": "zero"})


def run_clusters(model, tok, sites, windows, cfg, ccfg, progress=None, status=None):  # noqa: ANN001, ANN201
    """Steps 1-4 of `feature_circuits/clusters.py` with timings: (contexts, k-means, members, circuits, seconds)."""
    from sparsecircuits.feature_circuits.clusters import (
        cluster_circuits,
        cluster_members,
        collect_contexts,
        context_features,
        kmeans,
    )

    t = {"start": time.perf_counter()}
    if status:
        status("collecting well-predicted contexts")
    ctx = collect_contexts(model, windows, cfg)
    t["contexts"] = time.perf_counter()
    if status:
        status(f"clustering {len(ctx.target)} contexts")
    x = context_features(model, sites, ctx.tokens, cfg.batch)
    km = kmeans(x, min(cfg.clusters, len(x)), cfg.kmeans_iters, cfg.seed)
    members = cluster_members(x, km, cfg.per_cluster, cfg.min_size)
    t["kmeans"] = time.perf_counter()
    circuits = cluster_circuits(model, sites, ctx, members, ccfg, cfg.batch, progress)
    t["circuits"] = time.perf_counter()
    secs = {"contexts": t["contexts"] - t["start"], "clustering": t["kmeans"] - t["contexts"],
            "circuits": t["circuits"] - t["kmeans"], "total": t["circuits"] - t["start"]}
    return ctx, km, members, circuits, secs


def write_outputs(out: Path, tok, ctx, km, circuits, n_shown: int, notes: list[str], extra: dict) -> Path:  # noqa: ANN001
    """circuits/cluster-NNN.json, clusters.json and index.html; returns the index path."""
    from sparsecircuits.atomic import atomic_write_text
    from sparsecircuits.viz.cluster_index import ClusterRow, render_cluster_index

    (out / "circuits").mkdir(parents=True, exist_ok=True)
    for stale in (out / "circuits").glob("cluster-*.json"):  # from an earlier run into the same folder
        stale.unlink()
    rows, summary = [], []
    sizes = km.labels.bincount(minlength=km.centers.shape[0]).tolist()
    for cc in circuits:
        rel = f"circuits/cluster-{cc.cluster:03d}.json"
        cc.circuit.metadata["top_contexts"] = [tok.decode(ctx.tokens[i].tolist()) for i in cc.members[:n_shown]]
        cc.circuit.save(out / rel)
        shown = [(tok.decode(ctx.tokens[i].tolist()), tok.decode([int(ctx.target[i])])) for i in cc.members[:n_shown]]
        md = cc.circuit.metadata
        rows.append(ClusterRow(cc.cluster, sizes[cc.cluster], md["n_nodes"], md["n_edges"], md["full_metric"], rel, shown))
        summary.append({"cluster": cc.cluster, "size": sizes[cc.cluster], "circuit": rel, "n_nodes": md["n_nodes"],
                        "n_edges": md["n_edges"], "mean_log_p": md["full_metric"], "members": cc.members})
    atomic_write_text(out / "clusters.json", json.dumps({**extra, "clusters": summary}, indent=1))
    index = out / "index.html"
    atomic_write_text(index, render_cluster_index("Cluster circuits", rows, notes))
    return index


def cmd_clusters(args: argparse.Namespace, console: Console) -> int:
    import torch

    from sparsecircuits.data.batches import val_windows
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.dictionaries.activations import checkpoint_tokens
    from sparsecircuits.feature_circuits.dictionary_graph import make_sites
    from sparsecircuits.model.checkpoint import load_checkpoint

    cfg = collect(args, ClusterConfig, {})
    ccfg = collect(args, FeatureCircuitConfig, {"ablation": "zero"})
    check_output_path(args.out, "dir")
    ck = load_checkpoint(args.model)
    if ck.tokenizer_path is None:
        raise ValueError(f"{ck.path} has no tokenizer.json")
    model, tok = ck.model.eval(), load_tokenizer(ck.tokenizer_path)
    device = next(model.parameters()).device
    sites = make_sites(model, [d.to(device) for d in load_dictionaries(args.dicts)], embed=True)
    data = checkpoint_tokens(ck, cache_dir(args))
    n_ctx = model.cfg.n_ctx
    windows = [w[:, :n_ctx] for w in val_windows(data.val, -(-cfg.windows // 16), min(16, cfg.windows), n_ctx)]
    windows = list(torch.cat(windows)[: cfg.windows].split(16))  # exactly cfg.windows, in batches of 16
    with stage_progress(console) as progress:
        task = progress.add_task("", total=None)
        ctx, km, members, circuits, secs = run_clusters(
            model, tok, sites, windows, cfg, ccfg, StageBars(progress),
            lambda msg: progress.update(task, description=msg))
    notes = [f"{len(ctx.target)} contexts with loss < {cfg.max_loss} nats (induction repeats dropped) from "
             f"{sum(len(w) for w in windows)} held-out windows; k-means k={km.centers.shape[0]}; one circuit per "
             f"cluster with >= {cfg.min_size} contexts, from its {cfg.per_cluster} contexts nearest the centre",
             f"circuits: {ccfg.method}, zero ablation, metric log p(next token), node threshold {ccfg.node_threshold}",
             "open a circuit with `sparsecircuits view circuits/cluster-NNN.json`"]
    extra = {"model": str(args.model), "sites": [s.name for s in sites], "config": vars(cfg), "circuit": vars(ccfg),
             "n_contexts": len(ctx.target), "seconds": secs}
    index = write_outputs(args.out, tok, ctx, km, circuits, args.contexts_shown, notes, extra)
    console.print(f"{len(circuits)} cluster circuits from {len(ctx.target)} contexts in {secs['total']:.0f} s "
                  f"(contexts {secs['contexts']:.0f} s, clustering {secs['clustering']:.0f} s, circuits "
                  f"{secs['circuits']:.0f} s) -> {index}")
    return 0


PARSERS: dict[str, ParserBuilder] = {"clusters": _clusters_parser}
COMMANDS = {"clusters": cmd_clusters}
