"""CLI command `check`: verify a circuit's scores against exact patching (rendering and files only; the
sampling and statistics are in `sparsecircuits/check.py`, the interventions in `component_circuits/check.py`,
`weight_sparse/check.py` and `feature_circuits/check.py`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparsecircuits.check import ITEMS  # torch-free
from sparsecircuits.cli.common import (
    ParserBuilder,
    cache_dir,
    check_input_file,
    check_output_path,
    command_parser,
)
from sparsecircuits.cli.loading import load_dictionaries, load_model, load_task, model_task_flags


def _check_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("circuit", type=Path, help="circuit JSON (from discover, prune or feature-circuit)")
    model_task_flags(p)
    p.add_argument("--n", type=int, default=64, help="items (edges or nodes) to sample and patch (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified sample (default: 0)")
    p.add_argument("--strata", type=int, default=8, help="score-quantile strata the sample is spread over (default: 8)")
    p.add_argument("--items", choices=("auto", *ITEMS), default="auto",
                   help="what to check; auto = a component circuit's edges (nodes for exact-node), "
                        "every other circuit's nodes (default: auto)")
    p.add_argument("--filter", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only prompts the model solves with p(correct) > 2 p(incorrect), as the circuit's "
                        "command did (default: on for component circuits, as discover; off otherwise)")
    p.add_argument("--dicts", type=Path, nargs="+", default=None,
                   help="feature circuits: the dictionary folders the circuit was found with")
    p.add_argument("--zero-tol", type=float, default=0.01,
                   help="sign agreement: values within this x the largest |value| count as 0 (default: 0.01)")
    p.add_argument("--worst", type=int, default=5, help="worst cases (largest |score - effect|) to list and store (default: 5)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache of mean activations (channel circuits, mean baseline)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                   help="store the result in the circuit JSON, metadata['check'], replacing an older check (default: on)")


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.check import circuit_kind, default_items, items_of, store_check
    from sparsecircuits.graph import Circuit

    if args.n < 1 or args.strata < 1 or args.worst < 0 or args.zero_tol < 0:
        raise ValueError("--n and --strata must be >= 1, --worst and --zero-tol >= 0")
    t0 = time.perf_counter()
    check_input_file(args.task_file, "--task-file")
    if args.write:  # the result is stored in the circuit JSON: it must be writable, checked before patching
        check_output_path(args.circuit, "file", "circuit")
    circuit = Circuit.load(args.circuit)
    kind = circuit_kind(circuit)  # unsupported kinds fail here, before a model is loaded
    items = default_items(circuit) if args.items == "auto" else args.items
    n_items = len(items_of(circuit, items))  # edges of a channel circuit fail here
    if kind == "dictionary" and not args.dicts:
        raise ValueError("checking a feature circuit needs the dictionaries it was found with: --dicts")
    model, tok, ck = load_model(args.model)
    data = load_task(args, model, tok)
    if args.filter if args.filter is not None else kind == "component":
        from sparsecircuits.evaluate import filter_solved

        data = filter_solved(model, data)
    found_on = circuit.metadata.get("task")
    if found_on is not None and str(found_on) != data.name:
        console.print(Text.assemble(("note:", "yellow"), f" the circuit was found on {found_on}, checked on {data.name}"))
    common = dict(n=args.n, seed=args.seed, strata=args.strata, zero_tol=args.zero_tol, n_worst=args.worst)
    with console.status(f"patching {min(args.n, n_items)} of {n_items} {items} of {args.circuit} one by one"):
        if kind == "component":
            from sparsecircuits.component_circuits.check import check_component_circuit

            result = check_component_circuit(model, data, circuit, items, **common)
        elif kind == "channel":
            result = _check_channels(args, model, data, circuit, ck, common)
        else:
            from sparsecircuits.feature_circuits.check import check_feature_circuit

            device = next(model.parameters()).device
            dicts = [d.to(device) for d in load_dictionaries(args.dicts)]
            result = check_feature_circuit(model, data, circuit, dicts, **common)
    result.context.update(model=str(args.model), circuit=str(args.circuit), total_seconds=time.perf_counter() - t0)
    _report(console, result)
    if args.write:
        store_check(circuit, result)
        circuit.save(args.circuit)
        console.print(f"-> {args.circuit} (metadata['check'])")
    return 0


def _check_channels(args, model, data, circuit, ck, common):  # noqa: ANN001, ANN202
    from sparsecircuits.weight_sparse.check import baseline_of, check_channel_circuit

    means = None
    if baseline_of(circuit) == "mean":
        from sparsecircuits.ablation import checkpoint_means
        from sparsecircuits.data.tokenizer import load_tokenizer

        if ck is None or ck.tokenizer_path is None:
            raise ValueError("this circuit ablates to mean activations over the model's pretraining corpus: "
                             "--model must be one of our checkpoints")
        means = checkpoint_means(ck.model, ck.meta, load_tokenizer(ck.tokenizer_path), cache_dir(args))
    return check_channel_circuit(model, data, circuit, means, **common)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _report(console: Console, r) -> None:  # noqa: ANN001
    ctx = r.context
    summary = Table(title=f"check: {r.n_sampled} of {r.n_items} {r.items} against exact patching", show_header=False)
    rows = [("circuit method", str(ctx.get("circuit_method"))), ("task", f"{ctx.get('task')} ({ctx.get('n_examples')} examples)"),
            ("ablation", str(ctx.get("ablation"))), ("Pearson", _fmt(r.pearson)), ("Spearman", _fmt(r.spearman)),
            ("sign agreement", "-" if r.sign_agreement is None else f"{r.sign_agreement:.3f} of {r.sign_n} nonzero"),
            ("sample", f"{r.n_strata} score strata, seed {r.seed}"),
            ("time", f"{r.seconds:.1f} s")]
    for k, v in rows:
        summary.add_row(k, v)
    console.print(summary)
    worst = Table(title="worst cases (largest |score - effect|; score = metric(clean) - metric(ablated), estimated)")
    for col in (r.items[:-1], "score", "exact effect", "|error|"):
        worst.add_column(col, justify="left" if col == r.items[:-1] else "right")
    for w in r.worst:
        worst.add_row(str(w["id"]), f"{w['score']:+.4f}", f"{w['effect']:+.4f}", f"{w['error']:.4f}")
    console.print(worst)


PARSERS: dict[str, ParserBuilder] = {"check": _check_parser}
COMMANDS = {"check": cmd_check}
