"""CLI command `shift`: SHIFT on the on-machine quote-style dataset (Marks et al. 2025; rendering and
files only, the work is in `feature_circuits/shift.py`, `feature_circuits/edit.py` and `feature_circuits/shift_data.py`).

Without --ablate or --auto it stops after writing the review (review.md, review.json, circuit.json and
an ablate.txt in which the auto-mode suggestions are uncommented); edit ablate.txt and run again with
--ablate. Results: results.json in --out and a table on the console.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    check_input_file,
    check_output_path,
    collect,
    command_parser,
)
from sparsecircuits.cli.console import StageBars, stage_progress
from sparsecircuits.cli.loading import load_dictionaries, load_model
from sparsecircuits.feature_circuits.config import ShiftConfig, ShiftDataConfig


def _shift_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder (our format, with tokenizer.json)")
    p.add_argument("--dicts", type=Path, nargs="+", required=True,
                   help="dictionary folders (e.g. from `train-dict`), or folders holding several; those at or after "
                        "the probe's hook are left out")
    p.add_argument("--out", type=Path, required=True, help="folder for the review, circuit.json and results.json")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--ablate", type=Path, default=None,
                      help="file naming the features to zero-ablate, one `site[index]` a line, # comments")
    mode.add_argument("--auto", action=argparse.BooleanOptionalAction, default=False,
                      help="ablate the features the automatic rule marks (a stand-in for a person; default: off)")
    p.add_argument("--contexts", type=int, default=5, help="top activating contexts per feature in the review (default: 5)")
    add_config_flags(p, ShiftConfig, "SHIFT")
    add_config_flags(p, ShiftDataConfig, "dataset", prefix="data-")


def _sites(model, paths: list[Path], probe_hook: str, console: Console):  # noqa: ANN001, ANN202
    from sparsecircuits.feature_circuits.dictionary_graph import execution_order, make_sites
    from sparsecircuits.feature_circuits.shift import read_hook

    if probe_hook not in model.hook_points:
        model.resolve_hook_names(probe_hook)
    device = next(model.parameters()).device
    sites = make_sites(model, [d.to(device) for d in load_dictionaries(paths)], embed=False)
    order = execution_order(model)
    limit = order.index(read_hook(model, probe_hook))
    late = [s.name for s in sites if order.index(s.name) >= limit]
    if late:
        console.print(Text.assemble(("left out dictionaries at or after the probe's hook:", "yellow"), f" {', '.join(late)}"))
    sites = [s for s in sites if order.index(s.name) < limit]
    if not sites:
        raise ValueError(f"no dictionary runs before the probe's hook {probe_hook!r}")
    return sites


def _context_text(tok, ids: list[int], pos: int, before: int = 12, after: int = 3) -> str:  # noqa: ANN001
    lo, hi = max(0, pos - before), min(len(ids), pos + after + 1)
    return (tok.decode(ids[lo:pos]) + "⟦" + tok.decode(ids[pos:pos + 1]) + "⟧" + tok.decode(ids[pos + 1:hi]))


def _review(model, sites, tok, data, probe, circ, resp, marked, n_ctx: int, out: Path,  # noqa: ANN001
            write_ablate: bool = True) -> None:
    from sparsecircuits.atomic import atomic_write_text
    from sparsecircuits.feature_circuits.edit import feature_id
    from sparsecircuits.feature_circuits.shift import top_contexts

    amb = data.splits["ambiguous"]
    ctx = top_contexts(model, sites, circ.features, amb.tokens, n_ctx)
    rows, md = [], ["# SHIFT review", "",
                    f"Probe on mean-pooled `{probe.hook}`, trained on the ambiguous split (test modules in ' quotes, "
                    "library modules in \" quotes). For each feature of the probe's circuit: its effect on the "
                    "probe's logit (zero-ablation IG), its response to swapping the quote style and its label "
                    "difference (feature standard deviations), and where it fires most in the ambiguous split (⟦token⟧). Mark the features "
                    "that track quote style, not the kind of module, by uncommenting their lines in ablate.txt.", ""]
    for f, eff in zip(circ.features, circ.effects):
        fid = feature_id(f)
        texts = [(_context_text(tok, amb.tokens[s].tolist(), p), a, int(amb.label[s]), int(amb.quote[s]))
                 for s, p, a in ctx[f]]
        rows.append({"feature": fid, "effect": eff, "quote_response": resp.quote[f], "label_response": resp.label[f],
                     "auto_ablate": f in marked,
                     "contexts": [{"text": t, "activation": a, "label": lab, "quote": q} for t, a, lab, q in texts]})
        md += [f"## `{fid}`" + (" (auto: ablate)" if f in marked else ""), "",
               f"effect {eff:+.3f}, quote response {resp.quote[f]:+.2f}, label response {resp.label[f]:+.2f}", ""]
        md += [f"    {a:5.2f} {'test' if lab else 'lib '} {json.dumps(t, ensure_ascii=False)}"
               for t, a, lab, _ in texts] + [""]
    lines = ["# features of the probe's circuit; uncommented lines are ablated (`sparsecircuits shift --ablate`)",
             "# suggested by the automatic rule: uncommented"]
    lines += [("" if f in marked else "# ") + feature_id(f) + f"  # effect {e:+.3f} quote {resp.quote[f]:+.2f} "
              f"label {resp.label[f]:+.2f}" for f, e in zip(circ.features, circ.effects)]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "review.md", "\n".join(md) + "\n")
    atomic_write_text(out / "review.json", json.dumps({"probe_hook": probe.hook, "features": rows,
                                                       "errors": circ.errors}, indent=1))
    if write_ablate:  # not over the file the person edited and passed to --ablate
        atomic_write_text(out / "ablate.txt", "\n".join(lines) + "\n")
    circ.circuit.save(out / "circuit.json")


def cmd_shift(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.feature_circuits.edit import feature_id, parse_ablate_file
    from sparsecircuits.feature_circuits.shift import (
        auto_select,
        feature_responses,
        probe_circuit,
        shift_rows,
        train_probe,
    )
    from sparsecircuits.feature_circuits.shift_data import build_shift_dataset

    cfg = collect(args, ShiftConfig, {})
    dcfg = collect(args, ShiftDataConfig, {})
    check_output_path(args.out, "dir")
    check_input_file(args.ablate, "--ablate")
    t0 = time.perf_counter()
    model, tok, _ = load_model(args.model)
    sites = _sites(model, args.dicts, cfg.probe_hook, console)
    chosen = parse_ablate_file(args.ablate, sites) if args.ablate is not None else None  # fail early
    with console.status("building the quote-style dataset from the stdlib"):
        data = build_shift_dataset(tok, dcfg)
    amb = data.splits["ambiguous"]
    probe = train_probe(model, amb, cfg.probe_hook, cfg.l2, cfg.batch)
    with stage_progress(console) as progress:
        n = min(cfg.circuit_examples, len(amb))
        circ = probe_circuit(model, sites, probe, amb.tokens[::max(1, len(amb) // n)][:n],
                             amb.label[::max(1, len(amb) // n)][:n], cfg.circuit_size, cfg.ig_steps, cfg.batch,
                             StageBars(progress))
    resp = feature_responses(model, sites, amb, circ.features, cfg.batch)
    marked = auto_select(resp, cfg.auto_quote_min, cfg.auto_ratio)
    own = args.ablate is not None and args.ablate.resolve() == (args.out / "ablate.txt").resolve()
    _review(model, sites, tok, data, probe, circ, resp, marked, args.contexts, args.out, write_ablate=not own)
    console.print(f"probe circuit: {len(circ.features)} features; automatic rule marks {len(marked)}; review -> "
                  f"{args.out / 'review.md'}, {args.out / 'ablate.txt'}")
    if chosen is None and not args.auto:
        console.print(f"edit {args.out / 'ablate.txt'} and run again with --ablate {args.out / 'ablate.txt'} "
                      "(or use --auto)")
        return 0
    ablate = chosen if chosen is not None else marked
    with stage_progress(console) as progress:
        rows = shift_rows(model, sites, data, probe, ablate, cfg, StageBars(progress))
    _table(console, rows, len(ablate), cfg.random_seeds)
    results = {"model": str(args.model), "probe_hook": cfg.probe_hook, "mode": "file" if chosen is not None else "auto",
               "ablated": [feature_id(f) for f in ablate], "circuit_features": len(circ.features),
               "sites": [s.name for s in sites], "config": vars(cfg), "data": vars(dcfg),
               "seconds": time.perf_counter() - t0,
               "rows": {k: {"label": a.label, "spurious": a.spurious, "worst_group": a.worst_group, "groups": a.groups}
                        for k, a in rows.items()}}
    from sparsecircuits.atomic import atomic_write_text

    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1))
    console.print(f"-> {args.out / 'results.json'} ({results['seconds']:.0f} s)")
    return 0


def _table(console: Console, rows: dict, n: int, seeds: int) -> None:  # noqa: ANN001
    table = Table(title=f"balanced test split: {n} features ablated (random: mean of {seeds} draws)")
    for col in ("condition", "label acc", "quote acc", "worst group"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for name, a in rows.items():
        table.add_row(name, f"{a.label:.3f}", f"{a.spurious:.3f}", f"{a.worst_group:.3f}")
    console.print(table)


PARSERS: dict[str, ParserBuilder] = {"shift": _shift_parser}
COMMANDS = {"shift": cmd_shift}
