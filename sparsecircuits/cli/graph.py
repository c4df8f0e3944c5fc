"""CLI commands for transcoder circuits: `graph`, `transcoder-paths` and the weight-based analyses
`connections`, `de-embed`, `ov-de-embed` (Dunefsky et al. 2024) (rendering and files only; the work is in
`transcoder_circuits/attribution_graph.py`, `export.py`, `analysis.py` and `connections.py`). The last
three and `transcoder-paths --json` write one JSON schema (format, kind, features; docs/transcoders.md).

`--transcoders` takes a circuit-tracer transcoder set (a folder with `config.yaml`, or the yaml file
itself) or a folder of our SAELens-layout transcoder folders, one per layer (layer read from each hook),
found in it or one level below (`train-dict --out tcs/L0` for each layer, then `--transcoders tcs`).
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
from rich.text import Text

from sparsecircuits.cli.common import ParserBuilder, at_least, check_output_path, command_parser
from sparsecircuits.cli.loading import load_model


def _graph_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    g = command_parser(sub, name, help)
    _common(g)
    g.add_argument("--node-threshold", type=float, default=0.8, help="share of node influence to keep (default: 0.8)")
    g.add_argument("--edge-threshold", type=float, default=0.98, help="share of edge influence to keep (default: 0.98)")
    g.add_argument("--max-logits", type=at_least(1), default=10, help="most logit targets (default: 10)")
    g.add_argument("--logit-prob", type=float, default=0.95, help="stop adding logit targets at this cumulative probability (default: 0.95)")
    g.add_argument("--batch-size", type=at_least(1), default=256, help="targets per backward batch (default: 256)")
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
    p.add_argument("--steps", type=at_least(1), default=3, help="path length (default: 3)")
    p.add_argument("--branches", type=at_least(1), default=15, help="paths kept per step (default: 15)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the merged path graph as our circuit JSON (its metadata['paths'] holds the paths)")
    p.add_argument("--json", action="store_true",
                   help="print the paths as JSON ({root, paths: [{attribution, nodes}]}) instead of the table")


def _feature_flags(p: argparse.ArgumentParser, top: int) -> None:
    """Flags of the weight-based analyses (`connections`, `de-embed`, `ov-de-embed`)."""
    p.add_argument("--model", required=True, help="our checkpoint / run folder, or a Hugging Face folder or cached name")
    p.add_argument("--transcoders", type=Path, required=True, help="transcoder set (see `graph`)")
    p.add_argument("--layer", type=int, required=True, help="the feature's transcoder layer")
    p.add_argument("--feature", type=int, nargs="+", required=True, help="feature index (several: one result each)")
    p.add_argument("--top", type=at_least(1), default=top, help=f"entries to list per source (default: {top})")
    p.add_argument("--sign", choices=["abs", "positive", "negative"], default="abs",
                   help="rank by |score|, by score, or by -score; scores keep their sign (default: abs)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON (schema: docs/transcoders.md)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")


def _connections_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    _feature_flags(command_parser(sub, name, help), 10)


def _de_embed_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    _feature_flags(command_parser(sub, name, help), 20)


def _ov_de_embed_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    d = command_parser(sub, name, help)
    _feature_flags(d, 10)
    heads = d.add_mutually_exclusive_group()
    heads.add_argument("--head", nargs="+", default=None, metavar="LAYER.HEAD",
                       help="the heads to show (e.g. 1.3); default: the --heads strongest")
    heads.add_argument("--heads", type=at_least(1), default=5,
                       help="show the heads whose best token scores highest (default: 5)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="our checkpoint / run folder, or a Hugging Face folder or cached name")
    p.add_argument("--transcoders", type=Path, required=True,
                   help="circuit-tracer set (folder with config.yaml, or the yaml) or a folder of per-layer transcoder folders")
    p.add_argument("--prompt", required=True, help="the prompt text")


def load_transcoders(path: Path) -> dict:
    """Per-layer transcoders from a circuit-tracer set or a folder of our dictionary folders, or of
    folders holding one (`train-dict --out tcs/L0` writes tcs/L0/<name>/cfg.json)."""
    from sparsecircuits.dictionaries import load_dictionary, load_transcoder_set

    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"transcoder set {str(path)!r} does not exist")
    if (path / "config.yaml").exists():
        return load_transcoder_set(path)
    out = {}
    subs = sorted(f for f in path.iterdir() if f.is_dir())
    folders = [f for f in subs if (f / "cfg.json").exists()]
    folders += sorted(g for f in subs if not (f / "cfg.json").exists() for g in f.iterdir() if (g / "cfg.json").exists())
    for folder in folders:
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


def _load(args: argparse.Namespace):  # noqa: ANN202
    """(model, tokenizer, {layer: transcoder in the model's dtype})."""
    model, tok, _ = load_model(args.model)
    tcs = {k: v.to(next(model.parameters()).dtype).eval() for k, v in load_transcoders(args.transcoders).items()}
    return model, tok, tcs


def _prepare(args: argparse.Namespace):  # noqa: ANN202
    import torch

    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    model, tok, tcs = _load(args)
    from sparsecircuits.tasks.base import max_prompt_chars

    if len(args.prompt) > max_prompt_chars(model.cfg.n_ctx):  # before BPE, which would take minutes
        raise ValueError(f"--prompt is {len(args.prompt):,} characters, more than any prompt that fits the model's "
                         f"context of {model.cfg.n_ctx} tokens can have ({max_prompt_chars(model.cfg.n_ctx):,})")
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise ValueError(f"--prompt {args.prompt!r} encodes to no tokens")
    return model, tok, tcs, torch.tensor(ids[-model.cfg.n_ctx:])


def cmd_graph(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig, attribute
    from sparsecircuits.transcoder_circuits.export import prune_graph, scores, to_circuit, to_neuronpedia

    check_output_path(args.out)
    check_output_path(args.circuit, "file", "--circuit")
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
    from sparsecircuits.transcoder_circuits.connections import FORMAT
    from sparsecircuits.transcoder_circuits.replacement import freeze

    check_output_path(args.out)
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
    doc = {"format": FORMAT, "kind": "paths", "model": str(args.model), "transcoders": str(args.transcoders),
           "prompt": args.prompt, **res.to_json()}
    for p in doc["paths"]:
        for n in p["nodes"]:
            if n["kind"] == "embed":
                n["text"] = tok.decode([n["index"]], skip_special_tokens=False)
    if args.json:
        _print_json(console, doc)
    else:
        t = Table(title=f"paths into {root.label} (value {root.value:.3f})")
        t.add_column("attribution", justify="right")
        t.add_column("path (source ← … ← root); @ = position")
        for p in doc["paths"]:
            t.add_row(f"{p['attribution']:+.3f}", " ← ".join([*reversed([_path_node(n) for n in p["nodes"]]), "root"]))
        console.print(t)
    if args.out:
        c = res.to_circuit()
        c.metadata["paths"] = doc["paths"]
        c.save(args.out)
        _note(console, args, f"-> {args.out}")
    return 0


def _path_node(n: dict) -> str:
    """A path node for the table: 'L0 f232 @11', 'head 2.7 from @8', 'token ' +' @11'."""
    if n["kind"] == "feature":
        return f"L{n['layer']} f{n['index']} @{n['pos']}"
    if n["kind"] == "head":
        return f"head {n['layer']}.{n['index']} from @{n['pos']}"
    return f"token {n['text']!r} @{n['pos']}"


def _print_json(console: Console, doc: dict) -> None:
    """One JSON document on stdout, never wrapped or styled."""
    console.print(Text(json.dumps(doc)), soft_wrap=True)


def _note(console: Console, args: argparse.Namespace, line: str) -> None:
    """A status line, kept off stdout's JSON (--json) so that stays one parseable document."""
    if not args.json:
        console.print(line)


def _analysis_doc(args: argparse.Namespace, kind: str, results: list[dict]) -> dict:
    from sparsecircuits.transcoder_circuits.connections import FORMAT

    return {"format": FORMAT, "kind": kind, "model": str(args.model), "transcoders": str(args.transcoders),
            "sign": args.sign, "top": args.top, "norms": NORMS, "features": results}


# How the weight-based analyses treat norms (transcoder_circuits/connections.py), recorded in their JSON.
NORMS = ("linear part of each norm (gain; LayerNorm also centres) with its per-token scale held at 1; "
         "attention patterns, AbsTopK selections, positional embeddings and the bigram table left out")


def _write(console: Console, args: argparse.Namespace, doc: dict) -> None:
    from sparsecircuits.atomic import atomic_write_text

    if args.json:
        _print_json(console, doc)
    if args.out:
        atomic_write_text(args.out, json.dumps(doc, indent=1))
        _note(console, args, f"-> {args.out}")


def cmd_connections(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.transcoder_circuits.connections import connections

    check_output_path(args.out)
    model, _, tcs = _load(args)
    results = [connections(model, tcs, args.layer, f, args.top, args.sign) for f in args.feature]
    if not args.json:
        for r in results:
            t = Table(title=f"upstream features of L{r.layer} feature {r.feature}")
            for col in ("upstream layer", "path", "feature", "score"):
                t.add_column(col, justify="right" if col != "path" else "left")
            for m in sorted(r.direct):
                for x in r.direct[m]:
                    t.add_row(str(m), "direct", str(x.index), f"{x.score:+.4f}")
                for x in r.ov[m]:
                    t.add_row(str(m), f"via head {x.head[0]}.{x.head[1]}" if x.head else "", str(x.index), f"{x.score:+.4f}")
            if not r.direct:
                t.add_row("-", "no transcoder below this layer", "", "")
            console.print(t)
    _write(console, args, _analysis_doc(args, "connections", [r.to_json() for r in results]))
    return 0


def _heads(specs: list[str] | None) -> list[tuple[int, int]] | None:
    if specs is None:
        return None
    out = []
    for spec in specs:
        a, dot, h = spec.partition(".")
        if not (dot and a.isdigit() and h.isdigit()):
            raise ValueError(f"--head {spec!r}: expected LAYER.HEAD, e.g. 1.3")
        out.append((int(a), int(h)))
    return out


def _de_embed(args: argparse.Namespace, console: Console, heads: list[tuple[int, int]] | None, kind: str) -> int:
    from sparsecircuits.transcoder_circuits.connections import de_embeddings

    check_output_path(args.out)
    model, tok, tcs = _load(args)
    top_heads = getattr(args, "heads", 0)
    results = [de_embeddings(model, tcs, args.layer, f, args.top, heads, top_heads, args.sign) for f in args.feature]

    def text(i: int) -> str:
        return tok.decode([i], skip_special_tokens=False)

    if not args.json:
        for r in results:
            t = Table(title=f"tokens driving L{r.layer} feature {r.feature}" + (" through heads' OV circuits" if r.heads else ""))
            t.add_column("path")
            t.add_column("tokens (score)")
            rows = [("direct (embedding)", r.direct)] if kind == "de-embed" else []
            rows += [(f"head {h.layer}.{h.head}", h.tokens) for h in r.heads]
            for name, links in rows:
                t.add_row(name, "  ".join(f"{text(x.index)!r} {x.score:+.3f}" for x in links))
            console.print(t)
    docs = []
    for r in results:
        d = r.to_json(text)
        if kind == "ov-de-embed":
            del d["direct"]
        else:
            del d["heads"]
        docs.append(d)
    _write(console, args, _analysis_doc(args, kind, docs))
    return 0


def cmd_de_embed(args: argparse.Namespace, console: Console) -> int:
    return _de_embed(args, console, [], "de-embed")


def cmd_ov_de_embed(args: argparse.Namespace, console: Console) -> int:
    return _de_embed(args, console, _heads(args.head), "ov-de-embed")


PARSERS: dict[str, ParserBuilder] = {"graph": _graph_parser, "transcoder-paths": _paths_parser,
                                     "connections": _connections_parser, "de-embed": _de_embed_parser,
                                     "ov-de-embed": _ov_de_embed_parser}
COMMANDS = {"graph": cmd_graph, "transcoder-paths": cmd_paths, "connections": cmd_connections, "de-embed": cmd_de_embed,
            "ov-de-embed": cmd_ov_de_embed}
