"""`sparsecircuits view`: write a circuit's self-contained HTML page (rendering and files only; the
work is in `viz/report.py`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    cache_dir,
    check_input_file,
    check_output_path,
    collect,
    command_parser,
)
from sparsecircuits.viz.config import ViewConfig


def _view_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    v = command_parser(sub, name, help)
    v.add_argument("circuit", type=Path, help="circuit JSON (from `prune`, `quickstart`, ...)")
    v.add_argument("-o", "--out", type=Path, default=None, help="HTML file to write (default: the JSON's path with .html)")
    v.add_argument("--model", type=Path, default=None,
                   help="checkpoint the circuit was found in: adds top activating contexts, histograms, the task panel "
                        "and attention (default: a page from the JSON alone)")
    v.add_argument("--task-file", type=Path, default=None, help="JSONL task of a circuit pruned with --task-file")
    v.add_argument("--plot", action=argparse.BooleanOptionalAction, default=False,
                   help="also write the faithfulness-vs-size curve as PNG next to the page (needs the `viz` extra; "
                        "default: off)")
    v.add_argument("--cache-dir", type=Path, default=None, help="cache for tokens and mean activations")
    add_config_flags(v, ViewConfig, "page")


def cmd_view(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.graph import Circuit
    from sparsecircuits.viz.report import load_model_context, write_circuit_page

    cfg = collect(args, ViewConfig, {})
    out = args.out or Path(args.circuit).with_suffix(".html")
    check_output_path(out, "file")
    check_input_file(args.task_file, "--task-file")
    circuit = Circuit.load(args.circuit)
    t0 = time.perf_counter()
    with console.status("writing the page") as status:
        def event(msg: str) -> None:
            status.update(msg)
            console.log(msg)

        ctx = None
        if args.model is not None:
            ctx = load_model_context(args.model, cache_dir(args), cfg.windows, event)
        write_circuit_page(circuit, out, ctx, cfg, args.task_file, on_event=event,
                           source_dir=Path(args.circuit).parent)
    from sparsecircuits.viz.data import ENDPOINT_KINDS

    size = out.stat().st_size / 1e6
    n_end = sum(n.kind in ENDPOINT_KINDS for n in circuit.nodes)  # counted as the page counts them
    ends = f" (+{n_end} embedding/logit endpoints)" if n_end else ""
    console.print(f"{len(circuit.nodes) - n_end} nodes{ends}, {len(circuit.edges)} edges -> {out} ({size:.1f} MB, "
                  f"{time.perf_counter() - t0:.1f} s); open it in any browser, no server needed")
    if args.plot:
        from sparsecircuits.viz.plots import bisection_plot

        png = out.with_suffix(".bisection.png")
        bisection_plot(circuit, png)
        console.print(f"faithfulness-vs-size curve -> {png}")
    return 0


PARSERS: dict[str, ParserBuilder] = {"view": _view_parser}
COMMANDS = {"view": cmd_view}
