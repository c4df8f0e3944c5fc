"""Seconds for a transcoder attribution graph on a GPT-2-small-shaped random model on the CPU, and
the same graph through circuit-tracer's `attribute()` when it is installed in a separate venv.

Builds a random `Transformer` with GPT-2 small's shape (12 layers, 12 heads, d_model 768, vocab 50257,
LayerNorm, learned positions, GELU) and random ReLU transcoders at every layer (`--width` features,
encoder bias set so about `--active` features fire per token), then times `attribute` (forward +
batched backward passes), pruning and scores on a `--pos`-token random prompt. With `--ct-python`
(default: .venv-ct/bin/python if present) the same weights are copied into a TransformerLens model
and circuit-tracer's `TranscoderSet` in that interpreter (this script re-run with --ct-worker), its
`attribute()` is timed on the same tokens, and the two adjacency matrices are compared. Prints a
table and writes JSON (default benchmarks/results/attribution.json).

With `--sfc` (default on) it also times a sparse feature circuit (Marks et al.) on the same model:
random ReLU SAEs (`--width` features, about `--active` firing per token) at every attention output,
MLP output and residual output, `--sfc-batch` clean/counterfactual prompt pairs of `--pos` tokens,
the logit difference of two tokens as the metric, IG node effects (10 steps) and the edges between
the nodes above `--sfc-node-threshold`. circuit-tracer has no SFC: that row has no reference.

    python benchmarks/attribution.py                      # full GPT-2-small shape (minutes on 2 cores)
    python benchmarks/attribution.py --layers 2 --d-model 128 --heads 4 --vocab 1000 --width 1024   # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace):  # noqa: ANN201
    """(model, transcoders, tokens), deterministic in the seed (both interpreters build the same)."""
    from sparsecircuits.dictionaries import DictConfig, make_dictionary
    from sparsecircuits.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_head=args.d_model // args.heads,
                      d_mlp=4 * args.d_model, d_vocab=args.vocab, n_ctx=1024, norm="layer", positions="learned",
                      act="gelu_new", attn_sink=False, bigram_table=False, act_sparsity=1.0, tied_embeddings=True)
    model = Transformer(cfg).eval()
    # Normed MLP inputs have norm ~sqrt(d_model) and unit random encoder columns give pre-activations
    # ~N(0, 1): a bias of -z with P(N > z) = active / width fires about `active` features per token.
    z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * args.active / args.width)).item()
    tcs = {}
    for layer in range(args.layers):
        d = make_dictionary(DictConfig(arch="relu", hook=f"blocks.{layer}.ln2.hook_normalized",
                                       out_hook=f"blocks.{layer}.hook_mlp_out", d_in=args.d_model, width=args.width))
        with torch.no_grad():
            d.b_enc.fill_(-z)
            d.W_dec.mul_(0.2)
        tcs[layer] = d.eval()
    toks = torch.randint(0, args.vocab, (args.pos,))
    return model, tcs, toks


def ours(args: argparse.Namespace) -> dict:
    from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig, attribute
    from sparsecircuits.transcoder_circuits.export import prune_graph, scores

    model, tcs, toks = build(args)
    rows = {}
    t0 = time.perf_counter()
    graph = attribute(model, tcs, toks, AttributionConfig(batch_size=args.batch_size))
    rows["attribute (forward + backward batches)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pruned = prune_graph(graph)
    rows["prune (influence, node + edge thresholds)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc = scores(graph)
    rows["replacement + completeness scores"] = time.perf_counter() - t0
    sfc = sfc_time(args, model) if args.sfc else {}
    rows.update(sfc.pop("rows", {}))
    return {"rows": rows, "sfc": sfc, "graph": graph, "n_kept": int(pruned.node_mask[:graph.n_features].sum()),
            "replacement": sc.replacement, "completeness": sc.completeness}


def sfc_time(args: argparse.Namespace, model) -> dict:  # noqa: ANN001
    """Seconds for SFC node effects (IG) and edges with random SAEs at attn-out, mlp-out and resid-post."""
    from sparsecircuits.dictionaries import DictConfig, make_dictionary
    from sparsecircuits.feature_circuits.circuit import FeatureCircuitConfig, find_feature_circuit
    from sparsecircuits.feature_circuits.dictionary_graph import make_sites

    torch.manual_seed(1)
    z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * args.active / args.width)).item()
    saes = []
    for layer in range(args.layers):
        for hook in ("hook_attn_out", "hook_mlp_out", "hook_resid_post"):
            d = make_dictionary(DictConfig(arch="relu", hook=f"blocks.{layer}.{hook}", d_in=args.d_model, width=args.width))
            with torch.no_grad():  # outputs are not normalised: scale the bias to the activations' size
                d.b_enc.fill_(-z)
            saes.append(d.eval())
    sites = make_sites(model, saes)
    toks = torch.randint(0, args.vocab, (args.sfc_batch, args.pos))
    cf = toks.clone()
    cf[:, 1] = torch.randint(0, args.vocab, (args.sfc_batch,))  # pairs differ in one token, as templated data
    a, b = torch.randint(0, args.vocab, (2,)).tolist()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, a] - logits[:, -1, b]

    t0 = time.perf_counter()
    fc = find_feature_circuit(model, sites, toks, metric, FeatureCircuitConfig(
        method="ig", ig_steps=10, node_threshold=args.sfc_node_threshold, edge_threshold=0.0), cf_tokens=cf)
    seconds = time.perf_counter() - t0
    return {"rows": {f"SFC: IG node effects + edges ({len(fc.kept)} nodes kept)": seconds},
            "n_sites": len(sites), "n_kept": len(fc.kept), "n_edges": len(fc.circuit.edges)}


def ct_worker(args: argparse.Namespace) -> None:
    """Run inside the circuit-tracer venv: copy the weights, time `attribute()`, save its adjacency."""
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    from transformer_lens import HookedTransformerConfig

    model, tcs, toks = build(args)
    c = model.cfg
    tl_cfg = HookedTransformerConfig(n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, d_head=c.d_head, n_heads=c.n_heads,
                                     d_mlp=c.d_mlp, d_vocab=c.d_vocab, act_fn="gelu_new", normalization_type="LN",
                                     positional_embedding_type="standard", default_prepend_bos=False, device="cpu",
                                     dtype=torch.float32)
    sets = {}
    for layer, d in tcs.items():
        t = SingleLayerTranscoder(c.d_model, d.cfg.width, torch.nn.ReLU(), layer, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            t.W_enc.copy_(d.W_enc.T)
            t.W_dec.copy_(d.W_dec)
            t.b_enc.copy_(d.b_enc)
            t.b_dec.copy_(d.b_dec)
        sets[layer] = t
    ts = TranscoderSet(sets, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="bench")
    rm = TransformerLensReplacementModel.from_config(tl_cfg, ts)
    H, dh = c.n_heads, c.d_head
    with torch.no_grad():
        rm.embed.W_E.copy_(model.W_E)
        rm.pos_embed.W_pos.copy_(model.W_pos[: c.n_ctx])
        rm.unembed.W_U.copy_(model.W_E.T)
        rm.unembed.b_U.zero_()
        rm.ln_final.w.copy_(model.ln_final.w)
        rm.ln_final.b.copy_(model.ln_final.b)
        for ours_b, tl_b in zip(model.blocks, rm.blocks):
            a, ta = ours_b.attn, tl_b.attn
            for n in ("Q", "K", "V"):
                getattr(ta, f"W_{n}").copy_(getattr(a, f"W_{n}").view(H, dh, c.d_model).transpose(1, 2))
                getattr(ta, f"b_{n}").copy_(getattr(a, f"b_{n}").view(H, dh))
            ta.W_O.copy_(a.W_O.view(c.d_model, H, dh).permute(1, 2, 0))
            ta.b_O.copy_(a.b_O)
            for ln in ("ln1", "ln2"):
                getattr(tl_b, ln).w.copy_(getattr(ours_b, ln).w)
                getattr(tl_b, ln).b.copy_(getattr(ours_b, ln).b)
            mlp = getattr(tl_b.mlp, "old_mlp", tl_b.mlp)
            mlp.W_in.copy_(ours_b.mlp.W_in.T)
            mlp.b_in.copy_(ours_b.mlp.b_in)
            mlp.W_out.copy_(ours_b.mlp.W_out.T)
            mlp.b_out.copy_(ours_b.mlp.b_out)
    class StubTokenizer:  # circuit-tracer decodes ids and prepends a BOS unless the first id is "special"
        all_special_ids = [int(toks[0])]
        bos_token_id = pad_token_id = eos_token_id = None
        padding_side = "right"
        vocab_size = c.d_vocab

        def decode(self, ids):  # noqa: ANN001, ANN202
            return " ".join(str(int(i)) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)) if not isinstance(ids, int) else str(ids)

    rm.tokenizer = StubTokenizer()
    t0 = time.perf_counter()
    g = attribute(toks, rm, batch_size=args.batch_size, max_feature_nodes=None, verbose=False)
    seconds = time.perf_counter() - t0
    torch.save({"seconds": seconds, "adjacency": g.adjacency_matrix, "active": g.active_features,
                "logits": torch.tensor([t.vocab_idx for t in g.logit_targets])}, args.ct_worker)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--pos", type=int, default=64, help="prompt length in tokens")
    ap.add_argument("--width", type=int, default=8192, help="transcoder features per layer")
    ap.add_argument("--active", type=float, default=8.0, help="expected active features per token and layer")
    ap.add_argument("--batch-size", type=int, default=256, help="targets per backward batch (both tools)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ct-python", type=Path, default=ROOT / ".venv-ct" / "bin" / "python",
                    help="interpreter with circuit-tracer installed (skipped if missing)")
    ap.add_argument("--sfc", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a sparse feature circuit (IG node effects + edges) with random SAEs")
    ap.add_argument("--sfc-batch", type=int, default=4, help="SFC: clean/counterfactual prompt pairs")
    ap.add_argument("--sfc-node-threshold", type=float, default=0.001, help="SFC: node threshold (logit-diff units)")
    ap.add_argument("--ct-worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attribution.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.ct_worker:
        return ct_worker(args)
    res = ours(args)
    graph, rows = res["graph"], res["rows"]
    ct: dict = {"installed": args.ct_python.exists()}
    if ct["installed"]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ct.pt"
            argv = [str(args.ct_python), __file__, "--ct-worker", str(out)] + [
                a for a in sys.argv[1:] if not a.startswith("--ct")]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                ct["error"] = proc.stderr[-2000:]
            else:
                r = torch.load(out, weights_only=True)
                ct["seconds"] = r["seconds"]
                ct["speedup"] = r["seconds"] / rows["attribute (forward + backward batches)"]
                # circuit-tracer zeroes every feature at position 0 (its BOS), so its pos-0 errors hold
                # them: compare on our other nodes, leaving out the pos-0 error columns.
                keep = torch.cat([torch.nonzero(graph.features[:, 1] > 0).squeeze(1),
                                  torch.arange(graph.error_start, graph.n_nodes)])
                ours_A = graph.adjacency[keep][:, keep]
                same = r["adjacency"].shape == ours_A.shape and torch.equal(r["active"][:, :3], graph.features[keep[:len(r["active"])]])
                ct["same_nodes"] = bool(same)
                if same:
                    nf, T = len(r["active"]), graph.n_pos
                    cols = torch.ones(ours_A.shape[1], dtype=torch.bool)
                    cols[nf: nf + graph.n_layers * T: T] = False  # errors at position 0
                    d = (r["adjacency"] - ours_A)[:, cols].abs().max().item()
                    ct["max_abs_adjacency_diff"] = d
                    ct["max_abs_adjacency"] = ours_A.abs().max().item()
    rows_out = dict(rows)
    if "seconds" in ct:
        rows_out["circuit-tracer attribute()"] = ct["seconds"]
    print(f"{args.layers} layers, d_model {args.d_model}, vocab {args.vocab}; {args.pos} tokens; transcoders {args.width} "
          f"wide, {graph.n_features} active features ({graph.n_nodes} nodes, {res['n_kept']} features kept); "
          f"{args.threads} thread(s)")
    print(f"{'step':<60} {'seconds':>10}")
    for k, v in rows_out.items():
        print(f"{k:<60} {v:>10.2f}")
    if "speedup" in ct:
        print(f"speed-up over circuit-tracer: {ct['speedup']:.2f}x; same nodes: {ct['same_nodes']}; "
              f"max |ΔA| {ct.get('max_abs_adjacency_diff', float('nan')):.2e} (max |A| {ct.get('max_abs_adjacency', 0):.2e})")
    elif "error" in ct:
        print("circuit-tracer failed:\n" + ct["error"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"config": cfg, "n_features": graph.n_features, "n_nodes": graph.n_nodes,
                                    "seconds": rows, "sfc": res["sfc"], "replacement_score": res["replacement"],
                                    "completeness_score": res["completeness"], "circuit_tracer": ct}, indent=1))


if __name__ == "__main__":
    main()
