"""Benchmark: sparse dictionaries on the shipped quickstart model (issue 6 "Done when").

1. Stores the activations of the model's pretraining corpus at the SAE hook and at the transcoder's
   input/output hooks once (activation store under the cache; reused by later runs).
2. Trains a TopK SAE on a residual hook and a TopK transcoder on an MLP (input `ln2.hook_normalized`
   -> `hook_mlp_out`) from that one stream (`train_dictionaries`).
3. Evaluates both on held-out windows: L0, FVU, spliced CE / KL, fraction of CE recovered vs zero and
   mean ablation, dead and dense fractions; prints a table and writes JSON.
4. Throughput: training tokens/s of our train step on the stored activations, and, when `sae_lens`
   is importable (e.g. run this file with `.venv-ref/bin/python`), of SAELens' TopK training step on
   the same activations, architecture, width and batch in the same process (the ratio). Steps are
   timed in alternation and summarised by their median, so a busy machine slows both alike.

Run: OMP_NUM_THREADS=1 .venv-ref/bin/python benchmarks/dictionaries.py [--tokens N] (or .venv/bin/python
without the SAELens comparison). `--speed-only` skips training and evaluation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparsecircuits.ablation import weights_fingerprint  # noqa: E402
from sparsecircuits.atomic import atomic_write_text  # noqa: E402
from sparsecircuits.cli.common import default_cache_dir  # noqa: E402
from sparsecircuits.data.batches import val_windows  # noqa: E402
from sparsecircuits.dictionaries import (  # noqa: E402
    DictConfig,
    DictTrainConfig,
    evaluate_dictionary,
    load_dictionary,
    make_dictionary,
    train_dictionaries,
)
from sparsecircuits.dictionaries.activations import (  # noqa: E402
    ModelActivations,
    StoredActivations,
    checkpoint_tokens,
    store_activations,
    store_key,
)
from sparsecircuits.dictionaries.base import SparsityCoefs  # noqa: E402
from sparsecircuits.dictionaries.train import StepInput, train_step  # noqa: E402
from sparsecircuits.model.checkpoint import load_checkpoint  # noqa: E402


def step_ours(arch: str, x: torch.Tensor, y: torch.Tensor, width: int, k: int) -> Callable[[], None]:
    """One training step of our dictionary on a fixed batch (as a closure)."""
    d = make_dictionary(DictConfig(arch=arch, hook="in", out_hook="out" if x is not y else "", d_in=x.shape[1],
                                   d_out=y.shape[1], width=width, k=k))
    opt = torch.optim.Adam(d.parameters(), lr=1e-4)
    inp = StepInput(x, y, 1e-4, SparsityCoefs(0.0, 0.0, 0.05), torch.zeros(width, dtype=torch.bool))
    return lambda: train_step(d, opt, inp, x.shape[1] // 2, 1 / 32)


def step_saelens(x: torch.Tensor, width: int, k: int) -> Callable[[], None] | None:
    """One SAELens TopK training step (forward with its losses, backward, Adam) on the same batch."""
    try:
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
    except ImportError:
        return None
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=width, k=k, dtype="float32", device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    inp = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=torch.zeros(width, dtype=torch.bool),
                         n_training_steps=0, is_logging_step=False)

    def step() -> None:
        out = sae.training_forward_pass(inp)
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    return step


def interleaved_tokens_per_s(steps: dict[str, Callable[[], None]], batch: int, rounds: int) -> dict[str, float]:
    """Tokens/s of each step function, timed in alternation (A B C A B C ...) and summarised by the
    median step time, so load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for fn in steps.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


def measure_speed(store: StoredActivations, args: argparse.Namespace, tc_in: str, tc_out: str) -> dict[str, float | None]:
    """Step 4 of the module docstring, on the first stored batch."""
    chunk = store.chunk(0)
    x, xi, yo = chunk[args.sae_hook][: args.batch_size], chunk[tc_in][: args.batch_size], chunk[tc_out][: args.batch_size]
    steps = {"ours_topk_sae_tokens_per_s": step_ours("topk", x, x, args.width, args.k),
             "ours_topk_transcoder_tokens_per_s": step_ours("topk", xi, yo, args.width, args.k)}
    sl = step_saelens(x, args.width, args.k)
    if sl is not None:
        steps["saelens_topk_sae_tokens_per_s"] = sl
    speed: dict[str, float | None] = {"saelens_topk_sae_tokens_per_s": None,
                                      **interleaved_tokens_per_s(steps, args.batch_size, args.speed_steps)}
    if speed["saelens_topk_sae_tokens_per_s"]:
        speed["ratio_ours_over_saelens"] = speed["ours_topk_sae_tokens_per_s"] / speed["saelens_topk_sae_tokens_per_s"]
    print("throughput (tokens/s, one thread, median of interleaved steps):",
          {k: (round(v, 2) if v else v) for k, v in speed.items()}, flush=True)
    return speed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "sparsecircuits/assets/quickstart/sparse")
    p.add_argument("--sae-hook", default="blocks.1.hook_resid_post")
    p.add_argument("--tc-layer", type=int, default=0, help="layer of the transcoder's MLP")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, default=1_500_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--speed-steps", type=int, default=30, help="timed rounds of the throughput comparison")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dictionaries.json")
    p.add_argument("--speed-only", action=argparse.BooleanOptionalAction, default=False,
                   help="only the throughput comparison (updates `throughput` in --out)")
    p.add_argument("--work", type=Path, default=Path("/tmp/sparsecircuits-dict-bench"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    ck = load_checkpoint(args.model)
    model = ck.model
    data = checkpoint_tokens(ck, default_cache_dir())
    tc_in, tc_out = f"blocks.{args.tc_layer}.ln2.hook_normalized", f"blocks.{args.tc_layer}.hook_mlp_out"
    d = model.cfg.d_model
    cfgs = [DictConfig(arch="topk", hook=args.sae_hook, d_in=d, width=args.width, k=args.k),
            DictConfig(arch="topk", hook=tc_in, out_hook=tc_out, d_in=d, width=args.width, k=args.k)]
    train_cfg = DictTrainConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, warmup_steps=20,
                                dead_tokens=500_000)
    hooks = sorted({args.sae_hook, tc_in, tc_out})
    seqs = train_cfg.buffer_tokens // model.cfg.n_ctx
    src = ModelActivations(model, data.train, hooks, seqs, train_cfg.seed, train_cfg.model_batch)
    n_chunks = -(-args.tokens // src.chunk_tokens)
    key = store_key(weights_fingerprint(model), data.fingerprint, hooks, seqs, train_cfg.seed, n_chunks)
    t0 = time.perf_counter()
    store = store_activations(src, default_cache_dir() / "activations" / key[:16], n_chunks, key)
    store_s = time.perf_counter() - t0
    print(f"activation store: {store.meta['n_tokens']:,} tokens in {store_s:.0f} s -> {store.folder}", flush=True)
    if args.speed_only:
        speed = measure_speed(store, args, tc_in, tc_out)
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        atomic_write_text(args.out, json.dumps({**previous, "throughput": speed}, indent=2))
        return 0
    t0 = time.perf_counter()
    last = [0]

    def on_step(r) -> None:  # noqa: ANN001
        if r.step - last[0] >= 50 or r.step == r.total:
            last[0] = r.step
            line = "  ".join(f"{s.name}: FVU {s.fvu:.3f} L0 {s.l0:.0f} dead {s.dead_frac:.1%}" for s in r.dicts)
            print(f"step {r.step}/{r.total}  {line}  {r.tokens_per_s:,.0f} tok/s", flush=True)

    work = args.work / f"run-{int(time.time())}"
    result = train_dictionaries(model, data.train, cfgs, train_cfg, work, store=store.folder, on_step=on_step,
                                meta={"model_name": ck.path.name})
    train_s = time.perf_counter() - t0
    windows = val_windows(data.val, args.eval_batches, 16, model.cfg.n_ctx)
    rows = {}
    for c in cfgs:
        ev = evaluate_dictionary(model, load_dictionary(result.paths[c.name]), windows)
        rows[c.name] = {"hook": c.hook, "out_hook": c.out_hook, **ev.to_dict()}
    speed = measure_speed(store, args, tc_in, tc_out)
    print(f"\n{'dictionary':<24}{'L0':>6}{'FVU':>8}{'CE clean':>10}{'CE splice':>10}{'KL':>8}"
          f"{'rec zero':>10}{'rec mean':>10}{'dead':>8}{'dense':>8}")
    for name, r in rows.items():
        print(f"{name:<24}{r['l0']:>6.1f}{r['fvu']:>8.3f}{r['ce_clean']:>10.3f}{r['ce_spliced']:>10.3f}"
              f"{r['kl_spliced']:>8.3f}{r['recovered_zero']:>10.1%}{r['recovered_mean']:>10.1%}"
              f"{r['dead_frac']:>8.1%}{r['dense_frac']:>8.1%}")
    out = {"model": str(args.model), "tokens": args.tokens, "width": args.width, "k": args.k,
           "batch_size": args.batch_size, "lr": args.lr, "store_seconds": store_s, "train_seconds": train_s,
           "train_tokens_per_s_both": result.step * args.batch_size / train_s,
           "dictionaries": rows, "throughput": speed, "total_seconds": time.perf_counter() - t_start,
           "machine": "2-core CPU shared with other jobs, torch 1 thread"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
