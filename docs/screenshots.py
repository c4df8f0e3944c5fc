"""Regenerate the viewer screenshots in docs/ from a quickstart report (headless Chromium).

    sparsecircuits quickstart --out quickstart-report
    python docs/screenshots.py quickstart-report [--task single_double_quote]

Writes docs/viewer-index.png (the report's index page) and docs/viewer-circuit.png (the sparse
model's circuit page with the card of its highest-|score| q, k or neuron node open).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparsecircuits.graph import Circuit
from sparsecircuits.viz.browser import Browser

DOCS = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="quickstart output folder (holds index.html)")
    ap.add_argument("--task", default="single_double_quote")
    args = ap.parse_args()
    page_path = args.report / "circuits" / "sparse" / f"{args.task}.html"
    circuit = Circuit.load(page_path.with_suffix(".json"))
    pick = max((n for n in circuit.nodes if n.kind in ("q", "k", "neuron")),
               key=lambda n: abs(circuit.scores.get(n.id, 0.0)))
    with Browser() as browser:
        page = browser.new_page(1280, 860)
        page.goto((args.report / "index.html").resolve().as_uri())
        height = page.evaluate("document.documentElement.scrollHeight")
        page = browser.new_page(1280, min(int(height), 1400))
        page.goto((args.report / "index.html").resolve().as_uri())
        page.screenshot(DOCS / "viewer-index.png")
        page = browser.new_page(1500, 950)
        page.goto(page_path.resolve().as_uri())
        page.wait_for("document.body.dataset.ready === '1'")
        page.evaluate(f"viewer.select(viewer.nodeIndex({json.dumps(pick.id)}))")
        page.screenshot(DOCS / "viewer-circuit.png")
        assert not page.log.errors and not page.log.requests, (page.log.errors, page.log.requests)
    print(f"wrote {DOCS / 'viewer-index.png'} and {DOCS / 'viewer-circuit.png'} (card: {pick.id})")  # noqa: T201 (a script)


if __name__ == "__main__":
    main()
