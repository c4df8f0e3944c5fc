"""Feature dashboards: one self-contained, offline HTML page per dictionary (Neuronpedia / SAE-Vis
style), and the links to them that circuit pages and attribution graphs record.

The page is our own HTML, CSS and JavaScript (`viz/static/dashboard.*`); its data (`viz.dashboard_data`)
is embedded as JSON in a `<script type="application/json">` block, escaped by `viz.html.embed_json`
and guarded by the same Content-Security-Policy as the circuit page (no network, only our script).
The script inserts every data string with `textContent`, so a token string such as `</script>` stays
text. It renders lazily: a virtualised list of features (only the visible rows exist) and the DOM of
the selected feature only. `#f=123` in the URL opens feature 123.

Links: `dashboard_info(path)` reads a page's identity (hook, out_hook, width, dictionary folder) from
a `<meta name="sparsecircuits-dashboard">` tag in its head without parsing the data, so commands that
write circuits can find the dashboard of each dictionary in a folder (`find_dashboards`) and record
`{site: href}` (`dashboard_links`), where `href + "#f=" + index` opens a feature node's dashboard.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.viz.html import _csp, _static, embed_json

META = "sparsecircuits-dashboard"
_META_RE = re.compile(r'<meta name="' + META + r'" content="([^"]*)">')
IDENTITY = ("hook", "out_hook", "width", "dictionary", "name")


def render_dashboard(data: dict[str, Any]) -> str:
    """The complete HTML of one dashboard page (data from `viz.dashboard_data.dashboard_data`)."""
    script = _static("dashboard.js")
    title = html.escape(str(data.get("title", "features")))
    ident = html.escape(json.dumps({k: data.get(k) for k in IDENTITY}), quote=True)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta name=\"{META}\" content=\"{ident}\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp(script)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>{_static('dashboard.css')}</style>\n</head>\n"
        f"<body>\n{_static('dashboard_body.html')}\n"
        f"<script id=\"dashboard-data\" type=\"application/json\">{embed_json(data)}</script>\n"
        f"<script>{script}</script>\n</body></html>\n"
    )


def write_dashboard(path: Path, data: dict[str, Any]) -> Path:
    """Render and write a dashboard atomically."""
    atomic_write_text(Path(path), render_dashboard(data))
    return Path(path)


def dashboard_info(path: Path) -> dict[str, Any] | None:
    """The identity a dashboard page records in its head, or None for any other file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    m = _META_RE.search(head)
    return json.loads(html.unescape(m.group(1))) if m else None


def find_dashboards(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every dashboard page directly in `folder` (sorted), with its identity."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dashboard folder {str(folder)!r} does not exist")
    found = [(p, dashboard_info(p)) for p in sorted(folder.glob("*.html"))]
    return [(p, i) for p, i in found if i is not None]


def dashboard_links(folder: Path, dictionaries: list[tuple[str, dict[str, Any]]], relative_to: Path
                    ) -> tuple[dict[str, str], list[str]]:
    """`{site: href}` for the dictionaries `(site, identity)` whose dashboard is in `folder`, with hrefs
    relative to the folder `relative_to` (where the circuit JSON is written), and the sites left
    without one (no dashboard, or several that match equally well). A dashboard matches a dictionary
    when hook, out_hook and width agree; among several, the one made from the same folder wins."""
    pages = find_dashboards(folder)
    links, missing = {}, []
    for site, ident in dictionaries:
        same = [(p, i) for p, i in pages if all(i.get(k) == ident.get(k) for k in ("hook", "out_hook", "width"))]
        if len(same) > 1 and ident.get("dictionary"):
            want = os.path.realpath(str(ident["dictionary"]))
            same = [(p, i) for p, i in same if i.get("dictionary") and os.path.realpath(str(i["dictionary"])) == want] or same
        if len(same) != 1:
            missing.append(site)
            continue
        links[site] = Path(os.path.relpath(same[0][0].resolve(), Path(relative_to).resolve())).as_posix()
    return links, missing
