"""Regenerate docs/dashboard.png, the feature dashboard screenshot in the README (headless Chromium).

The screenshot shows two transcoders trained briefly (292 steps, about 1.5 min each on 1 CPU thread)
on the bundled quickstart dense model:

    for L in 0 1; do sparsecircuits train-dict --model sparsecircuits/assets/quickstart/dense \
        --hook blocks.$L.ln2.hook_normalized --out-hook blocks.$L.hook_mlp_out --width 1024 --k 16 \
        --tokens 300000 --batch-size 1024 --buffer-tokens 65536 --threads 1 --out runs/tc$L; done
    mkdir -p set && ln -s ../runs/tc0/tc-topk-w1024-k16 set/L0 && ln -s ../runs/tc1/tc-topk-w1024-k16 set/L1
    for L in 0 1; do sparsecircuits features --model sparsecircuits/assets/quickstart/dense --dictionary set \
        --layer $L --html dash/L$L.html; done
    python docs/dashboard_screenshot.py dash/L1.html --search " #" --feature 149

Opens the page, types the token search (if given), opens `--feature` (default: the first feature
listed) and writes docs/dashboard.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecircuits.viz.browser import Browser

DOCS = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="a dashboard page (`features --html`)")
    ap.add_argument("--search", default="", help="token to search for")
    ap.add_argument("--feature", type=int, default=None, help="feature to open (default: the first one listed)")
    ap.add_argument("--out", type=Path, default=DOCS / "dashboard.png")
    args = ap.parse_args()
    with Browser() as browser:
        page = browser.new_page(1500, 940)
        page.goto(args.page.resolve().as_uri())
        page.wait_for("document.body.dataset.ready === '1'")
        if args.search:
            page.type_into("#search", args.search)
        page.evaluate(f"dash.select({args.feature})" if args.feature is not None else "dash.select(dash.listed[0])")
        page.screenshot(args.out)
        shown = page.evaluate("dash.current")
        assert not page.log.errors, page.log.errors
    print(f"wrote {args.out} (feature {shown})")  # noqa: T201 (a script)


if __name__ == "__main__":
    main()
