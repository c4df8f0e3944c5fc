"""All-in seconds of EAP, EAP-IG, exact edge patching and ACDC on GPT-2-small-shaped random models on the
CPU, ours against auto-circuit (PyPI, in its own venv) in the same run, with the passes each side made.

Model: a random `Transformer` with GPT-2 small's shape (12 layers, 12 heads, d_model 768, d_mlp 3072,
vocab 50257, context 1024, learned positions, LayerNorm, gelu_new, tied embeddings; `--layers` etc.
shrink it), weights frozen. Task: `--task` (a sequence continuation of Lan et al.) from our generator,
tokenized with the shipped quickstart tokenizer (ids < 1024, so any vocabulary >= 1024 takes them),
counterfactual ablation with the task's counterfactual prompts, metric = mean logit difference.
auto-circuit reads the logits at position -1 of a stacked batch, so both sides get `--examples`
prompts of ONE length: the most common length among the task's examples (41 tokens for
seqcont_numerals in this BPE). Both sides work on the same component graph (embedding, heads, MLPs ->
the q, k and v input of every head, MLP inputs, logits; 32,491 edges at full size; the script checks
that the edges are the same and compares EAP scores and single-edge effects).

Every row is all-in: each side's set-up (ours: `prepare`, two plain forwards; auto-circuit:
`patchable_model`) plus the method, run row by row, auto-circuit then ours (interleaved, so load
changes hit both), each with the forward / backward passes it made (a forward resumed at layer l
counts (L - l) / L of a full one). Rows:
  EAP; EAP-IG over activations (auto-circuit's path; `--ig-steps` midpoints, auto-circuit
  `--ig-steps` + 1 mask values) and over inputs (Hanna et al.; no auto-circuit counterpart);
  exact edge patching on `--exact-sample` random edges, extrapolated to every edge (auto-circuit has no
  exact-patching scorer: one forward per edge under `patch_mode`); ACDC at one threshold on a smaller
  model (`--acdc-shape`: ACDC tries every edge, hours at full size on either side; auto-circuit
  optimizes its KL-divergence target, ours the logit difference, so the circuits differ; compare
  the seconds per forward); EAP at the `--scaling` shapes (layers x d_model, heads = d_model / 64).
auto-circuit runs through `benchmarks/_autocircuit_driver.py` in `--ac-python` (default
.venv-ac/bin/python; its columns say "not installed" when missing), one process per row, on the same
weights and token ids (JSON in, JSON out). Both sides run with `--threads` threads. Venv recipe
(auto-circuit 1.0.1 needs TransformerLens 2.x, whose numpy < 2 needs the older pyarrow/datasets/jax):
    python -m venv .venv-ac && .venv-ac/bin/pip install torch==2.13.0+cpu auto-circuit==1.0.1 \
        transformer-lens==2.18.0 'datasets<4' 'jax<0.5' 'jaxlib<0.5' 'pyarrow<20'
Prints a table and writes JSON (default benchmarks/results/discovery.json).

    OMP_NUM_THREADS=1 python benchmarks/discovery.py      # full GPT-2-small shape (~37 min at load 4-6)
    python benchmarks/discovery.py --layers 2 --d-model 128 --heads 4 --vocab 1024 --acdc-shape 2x128 \
        --scaling 2x64   # ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from _passes import Passes  # benchmarks/_passes.py (this script's folder is on sys.path)
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparsecircuits.atomic import atomic_write_text
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


def time_ours(args: argparse.Namespace, model: Transformer, data: TaskData, method: str, sample: torch.Tensor) -> dict:
    """One method all-in: `prepare` (two plain forwards) and the method, with the passes made."""
    passes = Passes(model)
    t0 = time.perf_counter()
    task: ComponentTask = prepare(model, data, "counterfactual", 0, args.batch_masks)
    seconds = {"setup": time.perf_counter() - t0}
    out: dict = {}
    t0 = time.perf_counter()
    if method == "eap":
        out["eap"] = attribution.eap(task).edges
    elif method == "eap_ig":
        attribution.eap_ig(task, args.ig_steps, "activations")
    elif method == "eap_ig_inputs":
        attribution.eap_ig(task, args.ig_steps, "inputs")
    elif method == "exact":
        out["passes_before_edges"] = passes.now(model.cfg.n_layers)
        out["exact"] = patching.exact_edges(task, None, sample)[sample[:, 0], sample[:, 1]]
        seconds["per_edge"] = (time.perf_counter() - t0) / len(sample)
    elif method == "acdc":
        selected = patching.acdc(task, args.acdc_threshold).selected
        assert selected is not None
        out["acdc_kept"] = int(selected.sum())
    seconds["method"] = time.perf_counter() - t0
    return {"seconds": seconds, "passes": passes.result(model.cfg.n_layers), "full": task.full, **out}


def time_autocircuit(args: argparse.Namespace, model: Transformer, d: TaskData, method: str, edges: torch.Tensor,
                     pick: torch.Tensor) -> dict:
    """Run the driver in the auto-circuit venv on the same weights, tokens and sampled edges, for one
    method (set-up included: its `patchable_model`)."""
    if not args.ac_python.exists():
        return {"installed": False}
    g = build_graph(model)
    c = model.cfg
    assert d.cf_tokens is not None
    with tempfile.TemporaryDirectory() as tmp:
        req, reply, weights = Path(tmp) / "request.json", Path(tmp) / "reply.json", Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        req.write_text(json.dumps({
            "config": {"layers": c.n_layers, "heads": c.n_heads, "d_model": c.d_model, "d_mlp": c.d_mlp,
                       "vocab": c.d_vocab, "n_ctx": N_CTX},
            "weights": str(weights), "threads": args.threads, "ig_steps": args.ig_steps, "method": method,
            "acdc_threshold": args.acdc_threshold,
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


def agreement(eap_ours: dict, eap_ac: dict, ex_ours: dict, ex_ac: dict, edges: torch.Tensor) -> dict:
    """Max |ours - auto-circuit| of the EAP scores (all edges) and the single-edge effects (the sample)."""
    if "eap" not in eap_ac or None in eap_ac["eap"] or "exact" not in ex_ac:
        return {}
    e_ours = eap_ours["eap"][edges[:, 0], edges[:, 1]]
    e_ac, x_ac = torch.tensor(eap_ac["eap"]), torch.tensor(ex_ac["exact"])
    return {"same_edges": eap_ac["n_edges"] == len(edges) == eap_ac["n_ours_found"],
            "eap_max_abs_diff": float((e_ours - e_ac).abs().max()), "eap_max_abs": float(e_ours.abs().max()),
            "exact_max_abs_diff": float((ex_ours["exact"] - x_ac).abs().max()),
            "exact_max_abs": float(ex_ours["exact"].abs().max())}


def passes_text(p: dict | None) -> str:
    if not p:
        return ""
    return f"{p['forwards']:.0f} fwd = {p['forward_equivalents']:.1f} full, {p['backwards']:.0f} bwd"


def scale_passes(total: dict, before: dict, scale: float) -> dict:
    """Passes before the sampled edges once, the sampled edges' passes `scale` times."""
    return {k: before[k] + (total[k] - before[k]) * scale for k in total}


def shaped(args: argparse.Namespace, layers: int, d_model: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "layers": layers, "d_model": d_model, "heads": max(1, d_model // 64)})


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
                    help="edges timed for exact patching (auto-circuit: a full forward each, ~6 s at full size)")
    ap.add_argument("--acdc-threshold", type=float, default=1e-4, help="both sides; small, so that ours "
                    "keeps most readers live and tries (nearly) every edge, as auto-circuit always does")
    ap.add_argument("--acdc-shape", default="4x256", help="LAYERSxD_MODEL of the ACDC row (heads = d_model / 64): "
                    "ACDC tries every edge, one forward each, 32,491 at GPT-2 small: hours on either side")
    ap.add_argument("--scaling", default="2x128,4x256,8x512", help="LAYERSxD_MODEL shapes of the EAP scaling table "
                    "(heads = d_model / 64), besides the main shape; '' for none")
    ap.add_argument("--batch-masks", type=int, default=1, help="ours: mask sets per masked forward (1: each "
                    "resumed from the clean run at its first masked layer)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    ap.add_argument("--ac-python", type=Path, default=ROOT / ".venv-ac" / "bin" / "python",
                    help="interpreter with auto-circuit installed (skipped if missing)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "discovery.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=None if Console().is_terminal else 140)
    if not args.ac_python.exists():
        console.print(Text(f"auto-circuit: no interpreter at {args.ac_python} (venv recipe in this script's "
                           "docstring); its columns stay empty"))
    model, data = build_model(args), one_length_task(args)
    edges = torch.nonzero(build_graph(model).valid)  # [E, 2] writer, reader
    E = len(edges)
    pick = torch.randperm(E, generator=torch.Generator().manual_seed(args.seed))[: args.exact_sample]
    load = {"start": os.getloadavg()[0]}  # 1-minute load average: other jobs on the machine skew both sides
    results: dict[str, dict] = {}
    none = torch.zeros(0, dtype=torch.long)

    def pair(key: str, m: Transformer, method: str, e: torch.Tensor, p: torch.Tensor, ac_method: str | None) -> None:
        """auto-circuit, then ours, on the same model, prompts and graph: interleaved row by row."""
        with console.status(f"{key}: auto-circuit"):
            ac = time_autocircuit(args, m, data, ac_method, e, p) if ac_method else {"installed": args.ac_python.exists()}
        with console.status(f"{key}: ours"):
            ours = time_ours(args, m, data, method, e[p])
        results[key] = {"ours": ours, "autocircuit": ac, "load": os.getloadavg()[0]}

    pair("eap", model, "eap", edges, pick, "eap")
    pair("eap_ig", model, "eap_ig", edges, pick, "eap_ig")
    pair("eap_ig_inputs", model, "eap_ig_inputs", edges, pick, None)
    pair("exact", model, "exact", edges, pick, "exact")
    shapes = [s for s in args.scaling.split(",") if s]
    sized = {}
    for spec in [args.acdc_shape, *shapes]:
        n_layers, d_model = (int(x) for x in spec.lower().split("x"))
        sized[spec] = build_model(shaped(args, n_layers, d_model))
    acdc_edges = torch.nonzero(build_graph(sized[args.acdc_shape]).valid)
    pair("acdc", sized[args.acdc_shape], "acdc", acdc_edges, none, "acdc")
    for spec in shapes:
        pair(f"eap@{spec}", sized[spec], "eap", torch.nonzero(build_graph(sized[spec]).valid), none, "eap")
    load["end"] = os.getloadavg()[0]

    main_shape = f"{args.layers}x{args.d_model}"
    named = [("eap", f"EAP ({main_shape})", None),
             ("eap_ig", f"EAP-IG activations, {args.ig_steps} steps (auto-circuit: {args.ig_steps + 1} mask values) "
              f"({main_shape})", None),
             ("eap_ig_inputs", f"EAP-IG inputs, {args.ig_steps} steps (no auto-circuit counterpart) ({main_shape})", None),
             ("exact", f"exact edge patching, all {E} edges, extrapolated from {len(pick)} ({main_shape})", E),
             ("acdc", f"ACDC, one threshold, {len(acdc_edges)} edges ({args.acdc_shape}; auto-circuit: its KL target)",
              None)]
    named += [(f"eap@{s}", f"EAP ({s})", None) for s in shapes]
    table_rows = []
    for key, name, n in named:
        r = results[key]
        o, a = r["ours"], r["autocircuit"]
        os_, as_ = o["seconds"], a.get("seconds")
        op, ap_ = o["passes"], a.get("passes")
        if n:  # extrapolate: set-up (and auto-circuit's baseline forwards) once, the sampled edges' work to every edge
            o_s = os_["setup"] + os_["per_edge"] * n
            a_s = None if as_ is None else as_["setup"] + as_["before_edges"] + as_["per_edge"] * n
            op = scale_passes(op, o["passes_before_edges"], n / len(pick))
            ap_ = None if ap_ is None else scale_passes(ap_, a["passes_before_edges"], n / len(pick))
        else:
            o_s = os_["setup"] + os_["method"]
            a_s = None if as_ is None else as_["setup"] + as_["method"]
        table_rows.append({"key": key, "method": name, "ours_s": o_s, "ours_setup_s": os_["setup"], "ours_passes": op,
                           "autocircuit_s": a_s, "autocircuit_setup_s": None if as_ is None else as_["setup"],
                           "autocircuit_passes": ap_, "ratio": a_s / o_s if a_s else None,
                           "autocircuit_error": a.get("error"), "load": r["load"]})
    table = Table(title=f"all-in seconds (set-up included, each side); {data.name}: {len(data)} prompts x "
                  f"{data.tokens.shape[1]} tokens; vocab {args.vocab}; {args.threads} thread(s); "
                  f"load {load['start']:.1f} to {load['end']:.1f}")
    for col in ("method", "ours (s)", "ours passes", "auto-circuit (s)", "auto-circuit passes", "auto-circuit / ours"):
        table.add_column(col, justify="left" if col == "method" else "right")
    missing = "not installed" if not args.ac_python.exists() else "failed"
    for r in table_rows:
        a = r["autocircuit_s"]
        table.add_row(Text(r["method"]), f"{r['ours_s']:.2f}", passes_text(r["ours_passes"]),
                      ("-" if r["key"] == "eap_ig_inputs" else missing) if a is None else f"{a:.2f}",
                      passes_text(r["autocircuit_passes"]), "" if r["ratio"] is None else f"{r['ratio']:.2f}x")
    console.print(table)
    for r in table_rows:
        if r["autocircuit_error"]:
            console.print(Text(f"auto-circuit failed on {r['method']}:\n{r['autocircuit_error']}"))
    agree = agreement(results["eap"]["ours"], results["eap"]["autocircuit"], results["exact"]["ours"],
                      results["exact"]["autocircuit"], edges)
    if agree:
        console.print(Text(f"same edges as auto-circuit: {agree['same_edges']}; EAP max |diff| "
                           f"{agree['eap_max_abs_diff']:.2e} (max |score| {agree['eap_max_abs']:.2e}); exact max |diff| "
                           f"{agree['exact_max_abs_diff']:.2e} (max |effect| {agree['exact_max_abs']:.2e})"))
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    ac_info = next((r["autocircuit"] for r in results.values() if "versions" in r["autocircuit"]), {})
    strip = ("eap", "exact")
    atomic_write_text(args.out, json.dumps({
        "config": cfg, "torch": torch.__version__, "load_average": load,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "task": {"name": data.name, "examples": len(data), "prompt_tokens": data.tokens.shape[1],
                 "answers": data.answer_strings, "full_metric": results["eap"]["ours"]["full"]},
        "graph": {"ours": "component graph: embed+pos, heads, MLPs -> q/k/v of every head, MLP inputs, logits",
                  "autocircuit": "patchable_model(factorized=True, separate_qkv=True, seq_len=None)",
                  "ours_edges": E, "autocircuit_edges": ac_info.get("n_edges"),
                  "autocircuit_versions": ac_info.get("versions")},
        "rows": table_rows, "agreement": agree,
        "raw": {k: {side: {kk: vv for kk, vv in v[side].items() if kk not in strip} for side in ("ours", "autocircuit")}
                | {"load": v["load"]} for k, v in results.items()}}, indent=1))
    console.print(Text(f"wrote {args.out}"))


if __name__ == "__main__":
    main()
