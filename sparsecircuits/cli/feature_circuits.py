"""CLI command `feature-circuit`: a sparse feature circuit (Marks et al. 2025) of a task, from a model
and dictionaries spliced at its hooks (rendering only; the work is in `feature_circuits/dictionary_graph.py`,
`feature_circuits/circuit.py` and `feature_circuits/evaluation.py`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    check_input_file,
    check_output_path,
    check_tasks,
    collect,
    command_parser,
)
from sparsecircuits.cli.console import StageBars, stage_progress
from sparsecircuits.cli.loading import load_dictionaries, load_model, load_task, model_task_flags
from sparsecircuits.feature_circuits.config import FeatureCircuitConfig


def _feature_circuit_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    model_task_flags(p)
    p.add_argument("--dicts", type=Path, nargs="+", required=True,
                   help="dictionary folders (SAELens layout, e.g. from `train-dict`), or folders holding several")
    p.add_argument("--out", type=Path, required=True, help="circuit JSON to write (opens in `sparsecircuits view`)")
    p.add_argument("--filter", action=argparse.BooleanOptionalAction, default=False,
                   help="keep only prompts the model solves with p(correct) > 2 p(incorrect) (default: off)")
    p.add_argument("--untouched-layers", type=int, default=-1,
                   help="evaluation leaves sites of layers below this alone; -1 = the first third (default: -1)")
    p.add_argument("--top", type=int, default=15, help="nodes to list (default: 15)")
    p.add_argument("--compare-neurons", action=argparse.BooleanOptionalAction, default=False,
                   help="also score MLP neurons and print faithfulness vs nodes for features and neurons (default: off)")
    p.add_argument("--curve-sizes", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 200],
                   help="circuit sizes (nodes) of the faithfulness curve (default: 1 2 5 10 20 50 100 200)")
    p.add_argument("--dashboards", type=Path, default=None,
                   help="folder of feature dashboards (`features --html`): record each dictionary's page in the "
                   "circuit's metadata so feature nodes link to it (default: none)")
    add_config_flags(p, FeatureCircuitConfig, "feature circuit")


def cmd_feature_circuit(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.evaluate import filter_solved
    from sparsecircuits.feature_circuits.circuit import find_feature_circuit, task_metric
    from sparsecircuits.feature_circuits.dictionary_graph import make_sites, mean_values, node_values
    from sparsecircuits.feature_circuits.evaluation import evaluate_circuit

    check_tasks([args.task])
    cfg = collect(args, FeatureCircuitConfig, {})
    check_output_path(args.out, "file")
    for path in args.dicts:
        check_input_file(path, "--dicts", "dir")
    model, tok, _ = load_model(args.model)
    data = load_task(args, model, tok)
    if args.filter:
        data = filter_solved(model, data)
    device = next(model.parameters()).device
    dicts = [d.to(device) for d in load_dictionaries(args.dicts)]
    sites = make_sites(model, dicts)
    metric = task_metric(data)
    tokens = data.tokens.to(device)
    cf = None if data.cf_tokens is None else data.cf_tokens.to(device)
    t0 = time.perf_counter()
    with stage_progress(console) as progress:
        result = find_feature_circuit(model, sites, tokens, metric, cfg, cf, data.lengths, StageBars(progress))
    circuit = result.circuit
    untouched = model.cfg.n_layers // 3 if args.untouched_layers < 0 else args.untouched_layers
    means = mean_values(node_values(model, sites, tokens), data.lengths)
    ev = evaluate_circuit(model, sites, tokens, metric, result.kept, means, result.scores.per_position, untouched)
    md = circuit.metadata
    md.update(task=data.name, model=str(args.model), n_examples=len(data), seconds=time.perf_counter() - t0,
              untouched_layers=untouched, faithfulness=ev.faithfulness, completeness=ev.completeness,
              circuit_metric=ev.circuit, empty_metric=ev.empty)
    _print_top(console, circuit, args.top)
    console.print(f"{data.name} / {cfg.method}: {md['n_feature_nodes']} feature + {md['n_error_nodes']} error nodes, "
                  f"{md['n_edges']} edges; logit diff full {ev.full:.3f}, circuit {ev.circuit:.3f}, empty {ev.empty:.3f}; "
                  f"faithfulness {ev.faithfulness:.3f}, completeness {ev.completeness:.3f} (mean ablation, "
                  f"layers < {untouched} untouched); {md['seconds']:.1f} s")
    if args.compare_neurons:
        md["faithfulness_curve"] = _compare_neurons(args, console, model, sites, tokens, cf, data, metric, cfg,
                                                    result, untouched)
    if args.dashboards is not None:
        md["dashboards"] = _dashboards(console, args.dashboards, dicts, args.out)
    circuit.save(args.out)
    console.print(f"-> {args.out} (open with `sparsecircuits view {args.out}`)")
    return 0


def _dashboards(console: Console, folder: Path, dicts: list, out: Path) -> dict[str, str]:
    """{node site: dashboard href relative to the circuit JSON's folder}; `href#f=<index>` opens a node."""
    from sparsecircuits.viz.dashboard import dashboard_links

    idents = [(d.cfg.out_hook, {"hook": d.cfg.hook, "out_hook": d.cfg.out_hook, "width": d.cfg.width}) for d in dicts]
    links, missing = dashboard_links(folder, idents, Path(out).parent)
    if missing:
        console.print(f"note: no single dashboard in {folder} for {', '.join(missing)}", style="yellow", markup=False)
    return links


def _print_top(console: Console, circuit, top: int) -> None:  # noqa: ANN001
    ranked = sorted(circuit.scores.items(), key=lambda kv: -abs(kv[1]))[:top]
    kind = {n.id: n.kind for n in circuit.nodes}
    table = Table(title=f"top {len(ranked)} nodes (score = metric(clean) - metric(patched))")
    for col in ("node", "kind", "score"):
        table.add_column(col, justify="right" if col == "score" else "left")
    for node_id, score in ranked:
        table.add_row(node_id, kind[node_id], f"{score:+.4f}")
    console.print(table)


def _compare_neurons(args, console, model, sites, tokens, cf, data, metric, cfg, result, untouched) -> dict:  # noqa: ANN001
    from sparsecircuits.feature_circuits.circuit import aggregate
    from sparsecircuits.feature_circuits.dictionary_graph import (
        mean_values,
        neuron_sites,
        node_effects,
        node_values,
        patch_values,
    )
    from sparsecircuits.feature_circuits.evaluation import faithfulness_curve

    nsites = neuron_sites(model)
    clean = node_values(model, nsites, tokens)
    patch = patch_values(model, nsites, clean, cfg.ablation, cf, data.lengths)
    effects = node_effects(model, nsites, tokens, metric, patch, cfg.method, cfg.ig_steps, clean)
    nscores = aggregate(effects, result.scores.per_position)
    sizes = args.curve_sizes
    feats = faithfulness_curve(model, sites, tokens, metric, result.scores,
                               mean_values(node_values(model, sites, tokens), data.lengths), sizes, untouched)
    neurons = faithfulness_curve(model, nsites, tokens, metric, nscores, mean_values(clean, data.lengths), sizes,
                                 untouched)
    table = Table(title="faithfulness vs nodes (mean ablation outside the circuit)")
    table.add_column("nodes")
    for k in sizes:
        table.add_column(str(k), justify="right")
    table.add_row("features+errors", *(f"{v:.2f}" for v in feats.faithfulness))
    table.add_row("MLP neurons", *(f"{v:.2f}" for v in neurons.faithfulness))
    console.print(table)
    return {"sizes": sizes, "features": feats.faithfulness, "neurons": neurons.faithfulness,
            "features_completeness": feats.completeness, "neurons_completeness": neurons.completeness}


PARSERS: dict[str, ParserBuilder] = {"feature-circuit": _feature_circuit_parser}
COMMANDS = {"feature-circuit": cmd_feature_circuit}
