"""CLI commands for transcoder attribution graphs: `graph`, `transcoder-paths`, `de-embed` (rendering and
files only; the work is in `transcoder_circuits/attribution_graph.py`, `transcoder_circuits/export.py` and
`transcoder_circuits/analysis.py`).

`--transcoders` takes a circuit-tracer transcoder set (a folder with `config.yaml`, or the yaml file
itself) or a folder of our SAELens-layout transcoder folders, one per layer (layer read from each hook).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sparsecircuits.cli.common import ParserBuilder, command_parser
from sparsecircuits.cli.loading import load_model


def _graph_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    g = command_parser(sub, name, help)
    _common(g)
    g.add_argument("--node-threshold", type=float, default=0.8, help="share of node influence to keep (default: 0.8)")
    g.add_argument("--edge-threshold", type=float, default=0.98, help="share of edge influence to keep (default: 0.98)")
    g.add_argument("--max-logits", type=int, default=10, help="most logit targets (default: 10)")
    g.add_argument("--logit-prob", type=float, default=0.95, help="stop adding logit targets at this cumulative probability (default: 0.95)")
    g.add_argument("--batch-size", type=int, default=256, help="targets per backward batch (default: 256)")
    g.add_argument("--slug", default="", help="graph name in the JSON metadata (default: the output file's stem)")
    g.add_argument("--out", type=Path, required=True, help="graph JSON to write (circuit-tracer / Neuronpedia schema)")
    g.add_argument("--circuit", type=Path, default=None, help="also write our circuit JSON (opens in `sparsecircuits view`)")
    g.add_argument("--dashboards", type=Path, default=None,
                   help="folder of feature dashboards (`features --html`): record each layer's page in the JSON "
                   "metadata so feature nodes link to it (default: none)")


def _paths_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    _common(p)
    root = p.add_mutually_exclusive_group(required=True)
    root.add_argument("--feature", nargs=3, type=int, metavar=("LAYER", "POS", "FEATURE"),
                      help="root at a feature's pre-activation (POS -1 = last token; FEATURE -1 = most active there)")
    root.add_argument("--logit-diff", nargs=2, metavar=("CORRECT", "INCORRECT"), help="root at a logit difference (token strings)")
    p.add_argument("--steps", type=int, default=3, help="path length (default: 3)")
    p.add_argument("--branches", type=int, default=15, help="paths kept per step (default: 15)")
    p.add_argument("--out", type=Path, default=None, help="write the merged path graph as our circuit JSON")


def _de_embed_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    d = command_parser(sub, name, help)
    d.add_argument("--model", required=True, help="our checkpoint / run folder, or a Hugging Face folder or cached name")
    d.add_argument("--transcoders", type=Path, required=True, help="transcoder set (see `graph`)")
    d.add_argument("--layer", type=int, required=True, help="transcoder layer")
    d.add_argument("--feature", type=int, required=True, help="feature index")
    d.add_argument("--top", type=int, default=20, help="tokens to list (default: 20)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="our checkpoint / run folder, or a Hugging Face folder or cached name")
    p.add_argument("--transcoders", type=Path, required=True,
                   help="circuit-tracer set (folder with config.yaml, or the yaml) or a folder of per-layer transcoder folders")
    p.add_argument("--prompt", required=True, help="the prompt text")


def load_transcoders(path: Path) -> dict:
    """Per-layer transcoders from a circuit-tracer set or a folder of our dictionary folders."""
    from sparsecircuits.dictionaries import load_dictionary, load_transcoder_set

    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"transcoder set {str(path)!r} does not exist")
    if (path / "config.yaml").exists():
        return load_transcoder_set(path)
    out = {}
    for folder in sorted(f for f in path.iterdir() if (f / "cfg.json").exists()):
        d = load_dictionary(folder)
        m = re.match(r"blocks\.(\d+)\.", d.cfg.hook)
        if not m or not d.cfg.is_transcoder:
            raise ValueError(f"{str(folder)!r} is not a per-layer transcoder (hook {d.cfg.hook!r} -> {d.cfg.out_hook!r})")
        if int(m.group(1)) in out:
            raise ValueError(f"{str(path)!r} holds two transcoders for layer {m.group(1)}")
        out[int(m.group(1))] = d
    if not out:
        raise ValueError(f"{str(path)!r} holds neither config.yaml nor dictionary folders (cfg.json)")
    return out


def _prepare(args: argparse.Namespace):  # noqa: ANN202
    import torch

    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    model, tok, _ = load_model(args.model)
    tcs = {k: v.to(next(model.parameters()).dtype).eval() for k, v in load_transcoders(args.transcoders).items()}
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise ValueError(f"--prompt {args.prompt!r} encodes to no tokens")
    return model, tok, tcs, torch.tensor(ids[-model.cfg.n_ctx:])


def cmd_graph(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig, attribute
    from sparsecircuits.transcoder_circuits.export import prune_graph, scores, to_circuit, to_neuronpedia

    model, tok, tcs, toks = _prepare(args)
    cfg = AttributionConfig(max_logits=args.max_logits, logit_prob=args.logit_prob, batch_size=args.batch_size)
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("backward batches", total=None)
        graph = attribute(model, tcs, toks, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    seconds = time.perf_counter() - t0
    pruned = prune_graph(graph, args.node_threshold, args.edge_threshold)
    sc = scores(graph)
    strs = [tok.decode([int(t)]) for t in toks]
    logit_strs = [tok.decode([int(t)]) for t in graph.logit_tokens]
    js = to_neuronpedia(graph, pruned, args.prompt, strs, logit_strs, slug=args.slug or args.out.stem,
                        node_threshold=args.node_threshold)
    from sparsecircuits.atomic import atomic_write_text

    if args.dashboards is not None:
        js["metadata"]["feature_dashboards"] = {str(L): href for L, href in
                                                _dashboards(console, args.dashboards, tcs, args.out).items()}
    atomic_write_text(args.out, json.dumps(js))
    t = Table(title=f"attribution graph: {len(toks)} tokens, {seconds:.1f} s")
    t.add_column("")
    t.add_column("value", justify="right")
    kept = int(pruned.node_mask[:graph.n_features].sum())
    for k, v in (("active features", graph.n_features), ("features kept", kept), ("edges kept", len(js["links"])),
                 ("logit targets", " ".join(repr(s) for s in logit_strs)), ("replacement score", f"{sc.replacement:.3f}"),
                 ("completeness score", f"{sc.completeness:.3f}")):
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"-> {args.out}")
    if args.circuit:
        c = to_circuit(graph, pruned, sc, {"model": str(args.model), "prompt": args.prompt, "seconds": seconds})
        if args.dashboards is not None:  # feature nodes sit at blocks.L.hook_mlp_out
            c.metadata["dashboards"] = {f"blocks.{L}.hook_mlp_out": href for L, href in
                                        _dashboards(None, args.dashboards, tcs, args.circuit).items()}
        c.save(args.circuit)
        console.print(f"-> {args.circuit} (open with `sparsecircuits view {args.circuit}`)")
    return 0


def _dashboards(console: Console | None, folder: Path, tcs: dict, out: Path) -> dict[int, str]:
    """{layer: dashboard href relative to the folder of `out`}; `href#f=<feature>` opens a feature."""
    from sparsecircuits.viz.dashboard import dashboard_links

    idents = [(str(L), {"hook": t.cfg.hook, "out_hook": t.cfg.out_hook, "width": t.cfg.width}) for L, t in tcs.items()]
    links, missing = dashboard_links(folder, idents, Path(out).parent)
    if missing and console is not None:
        console.print(f"note: no single dashboard in {folder} for layers {', '.join(missing)}", style="yellow", markup=False)
    return {int(L): href for L, href in links.items()}


def cmd_paths(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.transcoder_circuits import analysis as ta
    from sparsecircuits.transcoder_circuits.replacement import freeze

    model, tok, tcs, toks = _prepare(args)
    st = freeze(model, tcs, toks)
    if args.feature:
        layer, pos, f = args.feature
        pos = pos % len(toks)
        root = ta.feature_root(model, st, tcs, layer, pos, None if f < 0 else f)
    else:
        ids = [tok.encode(s).ids for s in args.logit_diff]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"--logit-diff tokens must each encode to one token, got {ids}")
        root = ta.logit_root(model, st, ids[0][0], ids[1][0])
    res = ta.greedy_paths(model, tcs, st, root, args.steps, args.branches)
    t = Table(title=f"paths into {root.label} (value {root.value:.3f})")
    t.add_column("attribution", justify="right")
    t.add_column("path (child ← … ← root)")
    for p in sorted(res.paths, key=lambda p: -abs(p.attribution)):
        t.add_row(f"{p.attribution:+.3f}", " ← ".join(reversed([n.rsplit("/", 1)[-1] for n in p.nodes])))
    console.print(t)
    if args.out:
        res.to_circuit().save(args.out)
        console.print(f"-> {args.out}")
    return 0


def cmd_de_embed(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.transcoder_circuits.analysis import de_embed

    model, tok, _ = load_model(args.model)
    tcs = load_transcoders(args.transcoders)
    if args.layer not in tcs:
        raise ValueError(f"no transcoder for layer {args.layer} (layers: {sorted(tcs)})")
    top = de_embed(model, tcs[args.layer].to(model.W_E.dtype), args.feature, args.top)
    t = Table(title=f"de-embedding of L{args.layer} feature {args.feature}")
    t.add_column("token")
    t.add_column("W_E · e", justify="right")
    for v, i in zip(top.values.tolist(), top.indices.tolist()):
        t.add_row(repr(tok.decode([i])), f"{v:.3f}")
    console.print(t)
    return 0


PARSERS: dict[str, ParserBuilder] = {"graph": _graph_parser, "transcoder-paths": _paths_parser,
                                     "de-embed": _de_embed_parser}
COMMANDS = {"graph": cmd_graph, "transcoder-paths": cmd_paths, "de-embed": cmd_de_embed}
