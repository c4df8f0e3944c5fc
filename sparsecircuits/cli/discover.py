"""CLI commands for component circuits: `discover`, `compare-circuits`, `heads` (rendering only; the work
is in `component_circuits/`). `--model` takes one of our checkpoints (or run folders) or a Hugging Face folder /
cached name (`model/load.py`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sparsecircuits.ablation_names import ABLATIONS
from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    at_least,
    cache_dir,
    check_names,
    check_output_path,
    check_tasks,
    collect,
    command_parser,
)
from sparsecircuits.cli.loading import load_model, load_task, model_task_flags
from sparsecircuits.component_circuits.config import METHOD_SUMMARIES, DiscoverConfig
from sparsecircuits.graph import Circuit, edge_iou, intersect, node_iou


def _discover_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    d = command_parser(sub, name, help)
    model_task_flags(d)
    methods = "; ".join(f"{m}: {summary}" for m, summary in METHOD_SUMMARIES.items())
    d.add_argument("--method", choices=list(METHOD_SUMMARIES), default="eap-ig", help=f"discovery method ({methods}) (default: eap-ig)")
    d.add_argument("--out", type=Path, required=True, help="circuit JSON to write (opens in `sparsecircuits view`)")
    d.add_argument("--filter", action=argparse.BooleanOptionalAction, default=True,
                   help="keep only prompts the model solves with p(correct) > 2 p(incorrect) (Lan et al.) (default: on)")
    d.add_argument("--curve", action=argparse.BooleanOptionalAction, default=True,
                   help="report faithfulness at MIB edge fractions, CPR, CMD and completeness (default: on)")
    d.add_argument("--bootstrap", type=int, default=3, help="bootstrap resamples for edge-set stability; 0 = off (default: 3)")
    d.add_argument("--cache-dir", type=Path, default=None, help="cache for `--method prune` (mean activations)")
    add_config_flags(d, DiscoverConfig, "discovery")


def _compare_circuits_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    c = command_parser(sub, name, help)
    c.add_argument("circuits", type=Path, nargs="+", help="circuit JSON files (two or more)")
    c.add_argument("--model", default=None, help="model the circuits came from (enables the faithfulness matrix)")
    c.add_argument("--n-examples", type=int, default=64, help="examples per task for the faithfulness matrix (default: 64)")
    c.add_argument("--ablation", default=None, help="ablation for the matrix (default: the circuits' own, which must then agree)")
    c.add_argument("--out", type=Path, default=None, help="write the shared core (intersection) circuit here")


def _heads_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    h = command_parser(sub, name, help)
    model_task_flags(h)
    h.add_argument("--top", type=at_least(1), default=10, help="heads to list per column (default: 10)")


def cmd_discover(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.component_circuits.methods import discover, get_method
    from sparsecircuits.evaluate import filter_solved

    check_tasks([args.task])
    cfg = collect(args, DiscoverConfig, {})
    check_output_path(args.out, "file")  # before the model runs, not after the search
    model, tok, ck = load_model(args.model)
    data = load_task(args, model, tok)
    if args.filter:
        n0 = len(data)
        data = filter_solved(model, data)
        console.print(f"{data.name}: {len(data)} of {n0} prompts solved with p(correct) > 2 p(incorrect)")
    if get_method(args.method).granularity == "channel":
        return _prune(args, console, ck, data)
    t0 = time.perf_counter()
    with console.status(f"{args.method} on {data.name}"):
        circuit = discover(model, data, args.method, cfg)
    md = circuit.metadata
    md["model"], md["seconds"] = str(args.model), time.perf_counter() - t0
    console.print(f"{data.name} / {args.method}: {md['n_nodes']} heads+MLPs, {md['n_edges']} of {md['n_graph_edges']} edges; "
                  f"logit diff full {md['full_metric']:.3f}, circuit {md['circuit_metric']:.3f}, empty {md['empty_metric']:.3f}; "
                  f"faithfulness {md['faithfulness']:.3f}; {md['seconds']:.1f} s")
    if args.curve or args.bootstrap:
        _report_quality(args, console, model, data, cfg, circuit)
    circuit.save(args.out)
    console.print(f"-> {args.out} (open with `sparsecircuits view {args.out}`)")
    return 0


def _report_quality(args, console, model, data, cfg, circuit) -> None:  # noqa: ANN001
    from sparsecircuits.component_circuits.evaluation import (
        bootstrap_stability,
        completeness,
        faithfulness_curve,
    )
    from sparsecircuits.component_circuits.methods import get_method
    from sparsecircuits.component_circuits.prepare import prepare

    task = prepare(model, data, cfg.ablation, cfg.seed, cfg.batch_masks)
    md = circuit.metadata
    if args.curve:
        scores = get_method(args.method).score(task, cfg).edges  # type: ignore[misc]
        curve = faithfulness_curve(task, scores)
        md["curve"] = {"fractions": curve.fractions, "faithfulness": curve.signed, "faithfulness_abs": curve.absolute}
        md["cpr"], md["cmd"], md["completeness"] = curve.cpr, curve.cmd, completeness(task, circuit)
        table = Table(title="faithfulness at edge fractions (MIB)")
        table.add_column("edges")
        for f in curve.fractions:
            table.add_column(f"{100 * f:g}%", justify="right")
        table.add_row("signed rank", *(f"{v:.2f}" for v in curve.signed))
        table.add_row("|score| rank", *(f"{v:.2f}" for v in curve.absolute))
        console.print(table)
        console.print(f"CPR {curve.cpr:.3f} (higher better), CMD {curve.cmd:.3f} (0 best), completeness {md['completeness']:.3f} (0 best)")
    if args.bootstrap:
        md["bootstrap_jaccard"] = bootstrap_stability(task, args.method, cfg, args.bootstrap)
        console.print(f"bootstrap stability: mean edge Jaccard {md['bootstrap_jaccard']:.3f} over {args.bootstrap} resamples")


def _prune(args: argparse.Namespace, console: Console, ck, data) -> int:  # noqa: ANN001
    from sparsecircuits.ablation import checkpoint_means
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.weight_sparse.prune import PruneConfig, prune_task

    if ck is None:
        raise ValueError("--method prune needs one of our checkpoints (mean activations over its pretraining corpus)")
    cfg = PruneConfig()
    assert ck.tokenizer_path is not None
    means = checkpoint_means(ck.model, ck.meta, load_tokenizer(ck.tokenizer_path), cache_dir(args))
    with console.status(f"pruning {data.name} (defaults; `sparsecircuits prune` takes every option)"):
        result = prune_task(ck.model, data, cfg, means)
    result.circuit.metadata["model"] = str(ck.path)
    result.circuit.save(args.out)
    console.print(f"{data.name}: {result.circuit.metadata['n_nodes']} channel nodes -> {args.out}")
    return 0


def cmd_compare_circuits(args: argparse.Namespace, console: Console) -> int:
    if len(args.circuits) < 2:
        raise ValueError("compare-circuits needs two or more circuit files")
    if args.ablation is not None:
        check_names("ablation", [args.ablation], ABLATIONS)
    check_output_path(args.out, "file")
    circuits = [Circuit.load(p) for p in args.circuits]
    names = [f"{c.metadata.get('task', p.stem)}:{c.metadata.get('method', '?')}" for c, p in zip(circuits, args.circuits)]
    for title, fn in (("node IoU", node_iou), ("edge IoU", edge_iou)):
        table = Table(title=title)
        table.add_column("")
        for n in names:
            table.add_column(n, justify="right")
        for n, a in zip(names, circuits):
            table.add_row(n, *(f"{fn(a, b):.2f}" for b in circuits))
        console.print(table)
    core = intersect(circuits)
    shared = [f"{n.layer}.{n.index}" if n.kind == "head" else f"MLP{n.layer}" for n in core.nodes if n.kind in ("head", "mlp")]
    console.print(f"shared core: {len(shared)} heads+MLPs ({' '.join(shared) or 'none'}), "
                  f"{sum(1 for e in core.edges if e.kind == 'residual')} edges")
    if args.model:
        _faithfulness_matrix(args, console, circuits, names, core)
    if args.out:
        core.save(args.out)
        console.print(f"shared core -> {args.out}")
    return 0


def _faithfulness_matrix(args, console, circuits, names, core) -> None:  # noqa: ANN001
    from sparsecircuits.component_circuits.evaluation import circuit_faithfulness, cross_task_matrix
    from sparsecircuits.component_circuits.prepare import prepare
    from sparsecircuits.evaluate import filter_solved

    # one baseline for the whole matrix: a task is prepared once, so circuits found under different
    # ablations would silently be scored under the first one's
    ablations = sorted({str(c.metadata.get("ablation", "counterfactual")) for c in circuits})
    if args.ablation is None and len(ablations) > 1:
        raise ValueError(f"the circuits were found under different ablations ({', '.join(ablations)}); "
                         "pass --ablation to score them all under one")
    ablation = args.ablation or ablations[0]
    model, tok, _ = load_model(args.model)
    tasks = {}
    for c in circuits:
        name = str(c.metadata.get("task"))
        if name not in tasks:
            data = filter_solved(model, load_task(args, model, tok, name))
            tasks[name] = prepare(model, data, ablation)
    matrix = cross_task_matrix(tasks, dict(zip(names, circuits)))
    table = Table(title="faithfulness of circuit (row) on task (column)")
    table.add_column("circuit")
    for t in tasks:
        table.add_column(t, justify="right")
    for n in names:
        table.add_row(n, *(f"{matrix[n][t]:.2f}" for t in tasks))
    table.add_row("shared core", *(f"{circuit_faithfulness(tasks[t], core):.2f}" for t in tasks))
    console.print(table)


def cmd_heads(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.component_circuits.head_roles import POSITION_TYPES, head_roles, ov_tokens
    from sparsecircuits.tasks.sequences import MEMBERS

    check_tasks([args.task])
    model, tok, _ = load_model(args.model)
    data = load_task(args, model, tok)

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    # OV scores on the task's own members (sequence continuation), else on the sequences the vocabulary has
    ov = ov_tokens(encode, decode, {args.task: MEMBERS[args.task]}, (" ",)) if args.task in MEMBERS else \
        ov_tokens(encode, decode)
    roles = head_roles(model, data, ov)
    for name, cands in ov.candidates.items():
        used = ov.used(name)
        console.print(f"OV tokens, {name}: {len(used)} of {len(cands)} are single tokens"
                      + (": " + " ".join(repr(u) for u in used) if used else ""))
    console.print(f"OV scores over {len(ov.tokens)} tokens and {len(ov.pairs)} successor pairs")
    for note in ov.notes():
        console.print(note)
    for j, kind in enumerate(POSITION_TYPES):
        att = roles.attention[..., j]
        top = att.flatten().topk(min(args.top, att.numel()))
        console.print(f"attention to {kind}: " + ", ".join(
            f"{i // att.shape[1]}.{i % att.shape[1]} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    for title, s in (("OV successor", roles.successor), ("OV copy", roles.copy)):
        if s is not None:
            top = s.flatten().topk(min(args.top, s.numel()))
            console.print(f"{title} (top-5 share): " + ", ".join(
                f"{i // s.shape[1]}.{i % s.shape[1]} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    table = Table(title="logit lens at the last position")
    for col in ("layer", "logit diff", "correct > incorrect"):
        table.add_column(col, justify="right")
    for L, (d, c) in enumerate(zip(roles.lens_diff, roles.lens_correct)):
        table.add_row(str(L), f"{d:.2f}", f"{c:.2f}")
    console.print(table)
    return 0


PARSERS: dict[str, ParserBuilder] = {"discover": _discover_parser, "compare-circuits": _compare_circuits_parser,
                                     "heads": _heads_parser}
COMMANDS = {"discover": cmd_discover, "compare-circuits": cmd_compare_circuits, "heads": cmd_heads}
