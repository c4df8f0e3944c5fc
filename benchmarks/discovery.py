"""Seconds for EAP, EAP-IG and exact edge patching on a GPT-2-small-shaped random model on the CPU, and
the same through auto-circuit (PyPI) when it is installed in a separate venv, with the ratio.

Model: a random `Transformer` with GPT-2 small's shape (12 layers, 12 heads, d_model 768, d_mlp 3072,
vocab 50257, context 1024, learned positions, LayerNorm, gelu_new, tied embeddings; `--layers` etc.
shrink it), weights frozen. Task: `--task` (a sequence continuation of Lan et al.) from our generator,
tokenized with the shipped quickstart tokenizer (ids < 1024, so any vocabulary >= 1024 takes them),
counterfactual ablation with the task's counterfactual prompts, metric = mean logit difference.
auto-circuit reads the logits at position -1 of a stacked batch, so both sides get `--examples`
prompts of ONE length: the most common length among the task's examples (41 tokens for
seqcont_numerals in this BPE). Steps, each on the component graph (embedding, heads, MLPs -> the q, k
and v input of every head, MLP inputs, logits; 32,491 edges at full size):
  1. prepare: baselines, clean writer outputs, full/empty metric;
  2. EAP; EAP-IG over inputs (Hanna et al.) and over activations (all masks together, auto-circuit's
     path), `--ig-steps` midpoints each;
  3. exact edge patching on `--exact-sample` random edges (`--batch-masks` per forward), extrapolated.
auto-circuit: with `--ac-python` (default .venv-ac/bin/python, skipped if missing)
`benchmarks/_autocircuit_driver.py` gets the same weights and token ids (JSON in, JSON out) and times
its EAP, EAP-IG (`--ig-steps` + 1 mask values 0..1) and one forward per sampled edge under
`patch_mode` (it has no exact-patching scorer), on its `patchable_model` graph (factorized, separate
q/k/v, all positions at once). The script checks that the two graphs have the same edges and compares
EAP scores and single-edge effects. Both sides run with `--threads` threads. Venv recipe (auto-circuit
1.0.1 needs TransformerLens 2.x, whose numpy < 2 needs the older pyarrow/datasets/jax):
    python -m venv .venv-ac && .venv-ac/bin/pip install torch==2.13.0+cpu auto-circuit==1.0.1 \
        transformer-lens==2.18.0 'datasets<4' 'jax<0.5' 'jaxlib<0.5' 'pyarrow<20'
Prints a table and writes JSON (default benchmarks/results/discovery.json).

    python benchmarks/discovery.py                 # full GPT-2-small shape (~35 min, 1 thread, 23 GB box)
    python benchmarks/discovery.py --layers 2 --d-model 128 --heads 4 --vocab 1024   # ~20 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sparsecircuits.component_circuits import eap as attribution
from sparsecircuits.component_circuits import patching
from sparsecircuits.component_circuits.component_graph import build_graph
from sparsecircuits.component_circuits.prepare import ComponentTask, prepare
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.model import ModelConfig, Transformer
from sparsecircuits.tasks.base import TaskData, load_task

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "sparsecircuits" / "assets" / "quickstart" / "sparse" / "tokenizer.json"
DRIVER = Path(__file__).resolve().parent / "_autocircuit_driver.py"
N_CTX = 1024  # GPT-2's context


def build_model(args: argparse.Namespace) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_head=args.d_model // args.heads,
                      d_mlp=4 * args.d_model, d_vocab=args.vocab, n_ctx=N_CTX, norm="layer", positions="learned",
                      act="gelu_new", attn_sink=False, bigram_table=False, act_sparsity=1.0, tied_embeddings=True)
    return Transformer(cfg).eval().requires_grad_(False)


def one_length_task(args: argparse.Namespace) -> TaskData:
    """`--examples` examples of the task, all of its most common prompt length (padding cut off)."""
    data = load_task(args.task, load_tokenizer(TOKENIZER), N_CTX, n=max(256, 8 * args.examples), seed=args.seed)
    length, count = Counter(data.lengths.tolist()).most_common(1)[0]
    if count < args.examples:
        raise SystemExit(f"only {count} examples of {args.task} have the most common length {length}; lower --examples")
    data = data.subset(torch.nonzero(data.lengths == length).flatten()[: args.examples])
    if int(data.tokens.max()) >= args.vocab:
        raise SystemExit(f"--vocab {args.vocab} is smaller than the tokenizer's ids (up to {int(data.tokens.max())})")
    assert data.cf_tokens is not None
    return dataclasses.replace(data, tokens=data.tokens[:, :length], cf_tokens=data.cf_tokens[:, :length])


def time_ours(args: argparse.Namespace, model: Transformer, data: TaskData, sample: torch.Tensor) -> dict:
    seconds: dict[str, float] = {}

    def timed(key: str, fn, *a):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn(*a)
        seconds[key] = time.perf_counter() - t0
        return out

    task: ComponentTask = timed("setup", prepare, model, data, "counterfactual", 0, args.batch_masks)
    eap = timed("eap", attribution.eap, task)
    timed("eap_ig_inputs", attribution.eap_ig, task, args.ig_steps, "inputs")
    timed("eap_ig", attribution.eap_ig, task, args.ig_steps, "activations")
    exact = timed("exact_sample", patching.exact_edges, task, None, sample)
    seconds["exact_per_edge"] = seconds.pop("exact_sample") / len(sample)
    return {"task": task, "seconds": seconds, "eap": eap.edges, "exact": exact[sample[:, 0], sample[:, 1]]}


def time_autocircuit(args: argparse.Namespace, model: Transformer, d: TaskData, edges: torch.Tensor,
                     pick: torch.Tensor) -> dict:
    """Run the driver in the auto-circuit venv on the same weights, tokens and sampled edges. It runs
    before ours: its EAP-IG peaks at ~14 GB at full size, more than this box has left beside our run."""
    if not args.ac_python.exists():
        return {"installed": False}
    g = build_graph(model)
    assert d.cf_tokens is not None
    with tempfile.TemporaryDirectory() as tmp:
        req, reply, weights = Path(tmp) / "request.json", Path(tmp) / "reply.json", Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        req.write_text(json.dumps({
            "config": {"layers": args.layers, "heads": args.heads, "d_model": args.d_model, "d_mlp": 4 * args.d_model,
                       "vocab": args.vocab, "n_ctx": N_CTX},
            "weights": str(weights), "threads": args.threads, "ig_steps": args.ig_steps,
            "tokens": d.tokens.tolist(), "cf_tokens": d.cf_tokens.tolist(), "correct": d.correct.tolist(),
            "incorrect": d.incorrect.tolist(), "writers": [[n.kind, n.layer, n.index] for n in g.writers],
            "readers": [[n.kind, n.layer, n.index] for n in g.readers], "edges": edges.tolist(), "sample": pick.tolist()}))
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([str(args.ac_python), str(DRIVER), str(req), str(reply)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            why = " (killed: out of memory?)" if proc.returncode == -9 else ""
            return {"installed": True, "error": f"exit code {proc.returncode}{why}\n" + proc.stderr[-3000:]}
        return {"installed": True, **json.loads(reply.read_text())}


def agreement(ours: dict, ac: dict, edges: torch.Tensor) -> dict:
    """Max |ours - auto-circuit| of the EAP scores (all edges) and the single-edge effects (the sample)."""
    if "eap" not in ac or None in ac["eap"]:
        return {"same_edges": False}
    eap_ours = ours["eap"][edges[:, 0], edges[:, 1]]
    eap_ac, ex_ac = torch.tensor(ac["eap"]), torch.tensor(ac["exact"])
    return {"same_edges": ac["n_edges"] == len(edges) == ac["n_ours_found"],
            "eap_max_abs_diff": float((eap_ours - eap_ac).abs().max()), "eap_max_abs": float(eap_ours.abs().max()),
            "exact_max_abs_diff": float((ours["exact"] - ex_ac).abs().max()),
            "exact_max_abs": float(ours["exact"].abs().max())}


def rows(args: argparse.Namespace, ours: dict, ac: dict, n_edges: int) -> list[dict]:
    s, acs = ours["seconds"], ac.get("seconds", {})
    out = []
    for key, name, scale in [
        ("setup", "setup: prepare (ours: 4 forwards) / patchable_model", 1),
        ("eap", "EAP", 1),
        ("eap_ig_inputs", f"EAP-IG inputs, {args.ig_steps} steps (no auto-circuit counterpart)", 1),
        ("eap_ig", f"EAP-IG activations, {args.ig_steps} steps (auto-circuit: {args.ig_steps + 1} mask values)", 1),
        ("exact_per_edge", f"exact edge patching, all {n_edges} edges (extrapolated)", n_edges),
    ]:
        o = s[key] * scale
        a = acs[key] * scale if key in acs and key != "eap_ig_inputs" else None
        ratio = a / o if a is not None and key != "setup" else None  # setup: different work, no ratio
        out.append({"method": name, "ours_s": o, "autocircuit_s": a, "ratio": ratio})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768, help="d_mlp = 4 d_model")
    ap.add_argument("--vocab", type=int, default=50257, help="at least 1024 (the tokenizer's ids)")
    ap.add_argument("--task", default="seqcont_numerals", help="a built-in task with counterfactual prompts")
    ap.add_argument("--examples", type=int, default=16, help="prompts (all of one length)")
    ap.add_argument("--seed", type=int, default=0, help="task examples and edge sample")
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--exact-sample", type=int, default=16,
                    help="edges timed for exact patching (a masked forward each: 7-25 s at full size here)")
    ap.add_argument("--batch-masks", type=int, default=1, help="ours: mask sets per masked forward (at full size "
                    "on 1 CPU thread more is slower per edge: the copies do not fit in cache)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    ap.add_argument("--ac-python", type=Path, default=ROOT / ".venv-ac" / "bin" / "python",
                    help="interpreter with auto-circuit installed (skipped if missing)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "discovery.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=None if Console().is_terminal else 120)
    model, data = build_model(args), one_length_task(args)
    edges = torch.nonzero(build_graph(model).valid)  # [E, 2] writer, reader
    pick = torch.randperm(len(edges), generator=torch.Generator().manual_seed(args.seed))[: args.exact_sample]
    load = {"start": os.getloadavg()[0]}  # 1-minute load average: other jobs on the machine skew both sides
    with console.status(f"timing auto-circuit ({args.ac_python})"):
        ac = time_autocircuit(args, model, data, edges, pick)
    load["after_autocircuit"] = os.getloadavg()[0]
    with console.status("timing ours"):
        ours = time_ours(args, model, data, edges[pick])
    load["after_ours"] = os.getloadavg()[0]
    table_rows = rows(args, ours, ac, len(edges))
    na = "not installed" if not ac["installed"] else "failed" if "error" in ac else "—"
    table = Table(title=f"{args.layers} layers, d_model {args.d_model}, vocab {args.vocab}; {args.task}: {len(data)} "
                  f"prompts x {data.tokens.shape[1]} tokens; {len(edges)} edges; {args.threads} thread(s)")
    for col in ("method", "ours (s)", "auto-circuit (s)", "ratio auto-circuit / ours"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in table_rows:
        a = r["autocircuit_s"]
        table.add_row(r["method"], f"{r['ours_s']:.2f}", na if a is None else f"{a:.2f}",
                      "" if r["ratio"] is None else f"{r['ratio']:.2f}x")
    console.print(table)
    agree = agreement(ours, ac, edges) if "eap" in ac else {}
    if agree:
        console.print(f"auto-circuit graph: {ac['n_edges']} edges, same edges as ours: {agree['same_edges']}; "
                      f"EAP max |Δ| {agree.get('eap_max_abs_diff', float('nan')):.2e} (max |score| {agree.get('eap_max_abs', 0):.2e}); "
                      f"exact max |Δ| {agree.get('exact_max_abs_diff', float('nan')):.2e} (max |effect| {agree.get('exact_max_abs', 0):.2e})")
    elif "error" in ac:
        console.print("auto-circuit failed:\n" + ac["error"])
    task = ours["task"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    ac_out = {k: v for k, v in ac.items() if k not in ("eap", "exact")} | {"agreement": agree}
    args.out.write_text(json.dumps({
        "config": cfg, "torch": torch.__version__, "load_average": load,
        "task": {"name": data.name, "examples": len(data), "prompt_tokens": data.tokens.shape[1],
                 "answers": data.answer_strings, "full_metric": task.full, "empty_metric": task.empty},
        "graph": {"ours": "component graph: embed+pos, heads, MLPs -> q/k/v of every head, MLP inputs, logits",
                  "autocircuit": "patchable_model(factorized=True, separate_qkv=True, seq_len=None)",
                  "ours_edges": len(edges), "autocircuit_edges": ac.get("n_edges")},
        "rows": table_rows, "ours_seconds": ours["seconds"], "autocircuit": ac_out}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
