"""Seconds for EAP, EAP-IG and exact edge patching on a GPT-2-small-shaped random model on the CPU.

Builds a random `Transformer` with GPT-2 small's shape (12 layers, 12 heads, d_model 768, learned
positions, LayerNorm, GELU; `--layers` etc. shrink it), a sequence-continuation-shaped batch of random
prompts with counterfactuals, and times each method on the component graph (32,000+ edges at full
size). Exact patching is timed on a sample of edges and extrapolated to all of them (one masked
forward per edge). Prints a table and writes JSON (default benchmarks/results/discovery.json).
auto-circuit is not measured: it is not installed here (compare with it in a separate environment).

    python benchmarks/discovery.py                 # full GPT-2-small shape (minutes on 2 cores)
    python benchmarks/discovery.py --layers 2 --d-model 128 --heads 4 --vocab 1000   # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sparsecircuits.discover import attribution, patching
from sparsecircuits.discover.components import prepare
from sparsecircuits.model import ModelConfig, Transformer
from sparsecircuits.tasks.base import Example, TaskData


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--pos", type=int, default=24, help="prompt length in tokens (Lan et al.'s prompts: ~20-25)")
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--exact-sample", type=int, default=64, help="edges timed for exact patching")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "discovery.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_head=args.d_model // args.heads,
                      d_mlp=4 * args.d_model, d_vocab=args.vocab, n_ctx=1024, norm="layer", positions="learned",
                      act="gelu_new", attn_sink=False, bigram_table=False, act_sparsity=1.0, tied_embeddings=True)
    model = Transformer(cfg).eval()
    n, T = args.examples, args.pos
    toks, cf = torch.randint(0, args.vocab, (n, T)), torch.randint(0, args.vocab, (n, T))
    data = TaskData("random-seqcont", [Example("p", "c", "i")] * n, toks, torch.full((n,), T),
                    torch.randint(0, args.vocab, (n,)), torch.randint(0, args.vocab, (n,)), cf, ("c", "i"), 0)
    rows = {}
    t0 = time.perf_counter()
    task = prepare(model, data, "counterfactual", batch_masks=8)
    rows["prepare (baselines, full/empty metric)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    attribution.eap(task)
    rows["EAP"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    attribution.eap_ig(task, args.ig_steps, "inputs")
    rows[f"EAP-IG inputs ({args.ig_steps} steps)"] = time.perf_counter() - t0
    edges = torch.nonzero(task.graph.valid)
    sample = edges[torch.randperm(len(edges))[: args.exact_sample]]
    t0 = time.perf_counter()
    patching.exact_edges(task, None, sample)
    per_edge = (time.perf_counter() - t0) / len(sample)
    rows[f"exact edge patching (all {len(edges)} edges, extrapolated)"] = per_edge * len(edges)
    print(f"component graph: {len(task.graph.writers)} writers, {len(task.graph.readers)} readers, {len(edges)} edges; "
          f"{n} prompts x {T} tokens; {args.threads} thread(s)")
    print(f"{'method':<60} {'seconds':>10}")
    for k, v in rows.items():
        print(f"{k:<60} {v:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "n_edges": len(edges),
                                    "seconds": rows, "exact_seconds_per_edge": per_edge}, indent=1))


if __name__ == "__main__":
    main()
