"""The screenshots in docs/ show the current viewer: `docs/screenshots.py` records the sha256 of the
viewer's code next to the PNGs it takes, and this test fails once that code changes (rerun
`sparsecircuits quickstart` and `python docs/screenshots.py` then). Every image the README and docs show is either such a
screenshot or listed here with the command that makes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sparsecircuits.viz.html import viewer_digest, viewer_sources

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
OTHER_IMAGES = {"frontier.png": "sparsecircuits sweep --plot (a plot of a sweep, not a viewer page)",
                "dashboard.png": "docs/dashboard_screenshot.py (the feature dashboard, from trained transcoders)"}


def test_screenshots_are_newer_than_the_viewer_code():
    record = json.loads((DOCS / "screenshots.json").read_text())
    assert record["viewer_sources"] == viewer_sources(), "the viewer's files changed: rerun docs/screenshots.py"
    assert record["viewer_sha256"] == viewer_digest(), (
        "the viewer's code changed since docs/*.png were taken: run `sparsecircuits quickstart` and "
        "`python docs/screenshots.py quickstart-report`, look at the images, and commit them")
    for name in record["images"]:
        png = (DOCS / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name


def test_every_image_in_the_readme_and_docs_is_generated():
    record = json.loads((DOCS / "screenshots.json").read_text())
    shown = set()
    for md in [ROOT / "README.md", *DOCS.glob("*.md")]:
        shown |= {Path(m).name for m in re.findall(r"\(((?:docs/)?[\w./-]+\.png)\)", md.read_text())}
    assert shown, "no images found: the pattern is stale"
    assert shown <= set(record["images"]) | set(OTHER_IMAGES), shown - set(record["images"]) - set(OTHER_IMAGES)
