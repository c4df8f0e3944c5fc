"""Speed of the circuit page at scale in headless Chromium (issue 4 targets: a 5,000-node / 20,000-edge
circuit opens in < 3 s, a node card opens in < 1 s).

Steps:
  1. generate a layered circuit (default 5,000 nodes over 8 layers x 8 sites, 20,000 weight and
     residual edges, random scores) with a realistic card payload per node: 8 top contexts of 16
     tokens per sign and a 32-bin histogram (as `sparsecircuits view --model` writes them); write the page;
  2. open it `--loads` times in a fresh tab: seconds from navigation to the page's ready flag
     (script parsed, data parsed, SVG nodes built, edges drawn) as seen from Python, and the page's
     own `performance.now()` at ready (time since navigation start), then after two more frames;
  3. open `--cards` node cards: in-page time of `viewer.select(i)` through style/layout to the next
     painted frame, and the round trip of a real mouse click on a node (CDP input event -> card shown).
Prints a table and writes JSON (default `benchmarks/results/viewer.json`).

    python benchmarks/viewer.py [--nodes 5000] [--edges 20000] [--loads 5] [--cards 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sparsecircuits.graph import Circuit, Edge, Node
from sparsecircuits.viz.browser import Browser, find_chromium
from sparsecircuits.viz.data import page_data
from sparsecircuits.viz.html import render_circuit_page

SITES = [("ln1.hook_normalized", "resid_read"), ("attn.hook_q", "q"), ("attn.hook_k", "k"), ("attn.hook_v", "v"),
         ("hook_attn_out", "resid_write"), ("ln2.hook_normalized", "resid_read"), ("mlp.hook_post", "neuron"),
         ("hook_mlp_out", "resid_write")]


def big_circuit(n_nodes: int, n_edges: int, n_layers: int = 8, seed: int = 0) -> Circuit:
    """Step 1: nodes spread over layers x sites; edges from each node to nodes in later columns."""
    rng = random.Random(seed)
    cols = [(f"blocks.{L}.{s}", k, L) for L in range(n_layers) for s, k in SITES]
    per = [0] * len(cols)
    nodes = []
    for _ in range(n_nodes):
        c = rng.randrange(len(cols))
        site, kind, layer = cols[c]
        nodes.append((c, Node(site, per[c], kind, layer)))
        per[c] += 1
    nodes.sort(key=lambda t: t[0])
    by_col: list[list[Node]] = [[] for _ in cols]
    for c, n in nodes:
        by_col[c].append(n)
    edges, seen = [], set()
    while len(edges) < n_edges:
        c = rng.randrange(len(cols) - 1)
        d = min(len(cols) - 1, c + 1 + int(rng.expovariate(0.5)))
        if not by_col[c] or not by_col[d]:
            continue
        a, b = rng.choice(by_col[c]), rng.choice(by_col[d])
        if (a.id, b.id) in seen:
            continue
        seen.add((a.id, b.id))
        kind = "residual" if by_col[c][0].kind == "resid_write" and d > c + 1 else "weight"
        edges.append(Edge(a.id, b.id, 1.0 if kind == "residual" else rng.gauss(0, 0.1), kind))
    flat = [n for _, n in nodes]
    scores = {n.id: rng.gauss(0, 0.2) for n in flat}
    md = {"task": "synthetic", "method": "benchmark", "n_nodes": n_nodes, "n_edges": n_edges,
          "bisection": [{"k": k, "loss": 1.0 / (1 + k / 300), "accuracy": 0.5} for k in (0, 625, 1250, 2500, 5000)],
          "hyperparameters": {"target_loss": 0.15}}
    return Circuit(flat, edges, scores, md)


def with_cards(data: dict, seed: int = 0) -> dict:
    """Step 1: the card payload `view --model` adds (contexts, histogram) for every node."""
    rng = random.Random(seed)
    data["vocab"] = {str(i): f"tok{i}" for i in range(1024)}
    for n in data["nodes"]:
        n["contexts"] = {sign: [{"tokens": [rng.randrange(1024) for _ in range(16)], "at": 12,
                                 "value": s * abs(rng.gauss(0, 1))} for _ in range(8)]
                         for sign, s in (("pos", 1.0), ("neg", -1.0))}
        n["hist"] = {"lo": -1.0, "hi": 1.0, "counts": [rng.randrange(500) for _ in range(32)], "zeros": 100, "total": 8192,
                     "mean": 0.0, "std": 0.5}
    return data


CARD_JS = """(async () => {
  const t = performance.now();
  viewer.select(%d);
  document.getElementById('card').getBoundingClientRect();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t;
})()"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--edges", type=int, default=20000)
    ap.add_argument("--loads", type=int, default=5, help="page loads to time")
    ap.add_argument("--cards", type=int, default=20, help="node cards to time")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "viewer.json")
    args = ap.parse_args()
    if find_chromium() is None:
        raise SystemExit("no Chromium binary: apt-get install chromium")
    console = Console()
    t0 = time.perf_counter()
    circuit = big_circuit(args.nodes, args.edges)
    html = render_circuit_page(with_cards(page_data(circuit)))
    export_s = time.perf_counter() - t0
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, Browser() as browser:
        path = Path(tmp) / "big.html"
        path.write_text(html, encoding="utf-8")
        loads = []
        for _ in range(args.loads):
            page = browser.new_page(1400, 900)
            t1 = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for("document.body.dataset.ready === '1'", timeout=60)
            wall = time.perf_counter() - t1
            ready = page.evaluate("viewer.readyAt") / 1000
            painted = page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))") / 1000
            script = page.evaluate("viewer.loadMs") / 1000
            assert page.evaluate("document.querySelectorAll('circle.node').length") == args.nodes
            assert not page.log.errors and not page.log.requests, (page.log.errors, page.log.requests)
            loads.append({"wall_s": wall, "ready_s": ready, "painted_s": painted, "script_s": script})
        cards = [page.evaluate(CARD_JS % rng.randrange(args.nodes)) / 1000 for _ in range(args.cards)]
        clicks = []
        for _ in range(args.cards):  # real clicks on nodes whose centre is not covered by another node
            i = rng.randrange(args.nodes)
            page.evaluate(f"viewer.focus({i}, 2)")  # zoomed in, as a user clicking one node of 5,000 would be
            hit = page.evaluate(f"(() => {{ const c = document.querySelector(\"circle.node[data-i='{i}']\");"
                                " const r = c.getBoundingClientRect(); const x = r.x + r.width / 2, y = r.y + r.height / 2;"
                                " return document.elementFromPoint(x, y) === c ? [x, y] : null; })()")
            if hit is None:
                continue
            page.evaluate("document.getElementById('card').dataset.node = ''")
            t2 = time.perf_counter()
            page.click(*hit)
            page.wait_for(f"document.getElementById('card').dataset.node === '{i}'")
            clicks.append(time.perf_counter() - t2)
    med = statistics.median
    result = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "load_average": os.getloadavg(), "nodes": args.nodes, "edges": args.edges, "page_mb": len(html.encode()) / 1e6, "export_s": export_s,
        "loads": loads, "cards_s": cards, "clicks_s": clicks,
        "summary": {"load_wall_median_s": med(x["wall_s"] for x in loads), "load_wall_max_s": max(x["wall_s"] for x in loads),
                    "ready_median_s": med(x["ready_s"] for x in loads), "painted_median_s": med(x["painted_s"] for x in loads),
                    "card_median_s": med(cards), "card_max_s": max(cards),
                    "click_median_s": med(clicks) if clicks else None, "click_max_s": max(clicks) if clicks else None},
    }
    table = Table(title=f"circuit page, {args.nodes} nodes / {args.edges} edges ({result['page_mb']:.1f} MB), headless Chromium")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("max", justify="right")
    table.add_column("target", justify="right")
    s = result["summary"]
    table.add_row("page load: navigate -> ready (wall, s)", f"{s['load_wall_median_s']:.2f}", f"{s['load_wall_max_s']:.2f}", "< 3")
    table.add_row("page load: ready, in-page clock (s)", f"{s['ready_median_s']:.2f}",
                  f"{max(x['ready_s'] for x in loads):.2f}", "< 3")
    table.add_row("page load: 2 frames after ready was seen (s, upper bound)", f"{s['painted_median_s']:.2f}",
                  f"{max(x['painted_s'] for x in loads):.2f}", "< 3")
    table.add_row("node card: select -> painted (s)", f"{s['card_median_s']:.3f}", f"{s['card_max_s']:.3f}", "< 1")
    if clicks:
        table.add_row(f"node card: real click round trip (s, {len(clicks)} clicks)", f"{s['click_median_s']:.3f}",
                      f"{s['click_max_s']:.3f}", "< 1")
    table.add_row("export: build + render page (s)", f"{export_s:.2f}", "", "")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
