"""Regenerate the viewer screenshots that the README shows, from a quickstart report (headless Chromium).

    sparsecircuits quickstart --out quickstart-report
    python docs/screenshots.py quickstart-report [--task single_double_quote]

Writes, next to this script:
  viewer-index.png     the report's index page (what was run, what the words mean, every task);
  viewer-circuit.png   the weight-sparse model's circuit page for --task, with the card of its
                       highest-|score| q, k or neuron node open (contexts of both signs);
  screenshots.json     the sha256 of the viewer's code (`viz.html.viewer_digest`) the images were
                       taken with, the report and the node shown: `tests/viz/test_screenshots.py`
                       fails when the viewer's code has changed since, so rerun this script then.
Only images of the viewer are generated here; docs/frontier.png is a plot of a sweep's results
(`sparsecircuits sweep --plot`), not a page of the viewer.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.graph import Circuit
from sparsecircuits.viz.browser import Browser
from sparsecircuits.viz.html import viewer_digest, viewer_sources

DOCS = Path(__file__).parent
WIDTH = 1400  # the window a reader is assumed to have: nodes and labels must read at 100% zoom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, nargs="?", default=Path("quickstart-report"),
                    help="quickstart output folder (holds index.html; default: quickstart-report)")
    ap.add_argument("--task", default="single_double_quote", help="task whose sparse circuit page is shown")
    args = ap.parse_args()
    index = (args.report / "index.html").resolve()
    page_path = (args.report / "circuits" / "sparse" / f"{args.task}.html").resolve()
    circuit = Circuit.load(page_path.with_suffix(".json"))
    pick = max((n for n in circuit.nodes if n.kind in ("q", "k", "neuron")),
               key=lambda n: abs(circuit.scores.get(n.id, 0.0)))
    with Browser() as browser:
        page = browser.new_page(WIDTH, 900)
        page.goto(index.as_uri())
        height = int(page.evaluate("document.documentElement.scrollHeight"))
        page = browser.new_page(WIDTH, min(height, 1800))
        page.goto(index.as_uri())
        page.screenshot(DOCS / "viewer-index.png")
        errors = list(page.log.errors) + list(page.log.requests)
        page = browser.new_page(WIDTH, 900)
        page.goto(page_path.as_uri())
        page.wait_for("document.body.dataset.ready === '1'")
        page.evaluate(f"viewer.select(viewer.nodeIndex({json.dumps(pick.id)}))")
        page.screenshot(DOCS / "viewer-circuit.png")
        errors += list(page.log.errors) + list(page.log.requests)
    if errors:
        raise SystemExit(f"the pages logged errors or requests: {errors}")
    record = {"viewer_sha256": viewer_digest(), "viewer_sources": viewer_sources(),
              "date": datetime.date.today().isoformat(), "window": [WIDTH, 900],
              "images": {"viewer-index.png": "the quickstart report's index.html",
                         "viewer-circuit.png": f"circuits/sparse/{args.task}.html, card of {pick.id}"},
              "report": {"task": args.task, "n_nodes": circuit.metadata.get("n_nodes"),
                         "n_edges": circuit.metadata.get("n_edges")}}
    atomic_write_text(DOCS / "screenshots.json", json.dumps(record, indent=1) + "\n")
    print(f"wrote {DOCS / 'viewer-index.png'}, {DOCS / 'viewer-circuit.png'} (card: {pick.id}) and "  # noqa: T201 (a script)
          f"{DOCS / 'screenshots.json'}")


if __name__ == "__main__":
    main()
