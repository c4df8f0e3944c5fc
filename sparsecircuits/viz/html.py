"""HTML writers: one self-contained circuit page, and the quickstart index page.

The circuit page is our own HTML, CSS and JavaScript (`viz/static/`), with the page data embedded as
JSON in a `<script type="application/json">` block. Safety, in layers:
  1. `embed_json` escapes `<`, `>`, `&`, U+2028 and U+2029 as JSON `\\uXXXX` escapes, so no data
     string can close the block (`</script>`) or open a comment; JSON outside strings never holds
     these characters, so the escaped text parses to the same value;
  2. the page's script inserts every data string with `textContent` / `createTextNode`, never as HTML;
  3. a Content-Security-Policy allows no network at all and only our own script (by its sha256),
     so even an injected inline handler would not run.
The index page is generated HTML in which every data string goes through `html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from importlib.resources import files
from typing import Any

from sparsecircuits.viz.data import finite

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_TABLE = str.maketrans(_ESCAPES)


def embed_json(data: Any) -> str:
    """JSON text that is safe inside a `<script type="application/json">` element (see step 1)."""
    text = json.dumps(finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_TABLE)


def _static(name: str) -> str:
    return (files("sparsecircuits.viz") / "static" / name).read_text(encoding="utf-8")


def _csp(script: str, img: str = "'none'") -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src {img}; "
            "base-uri 'none'; form-action 'none'")


def render_circuit_page(data: dict[str, Any]) -> str:
    """The complete HTML of one circuit page (data from `viz.data.page_data` and the extras)."""
    script = _static("viewer.js")
    title = html.escape(str(data.get("title", "circuit")))
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp(script)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>{_static('viewer.css')}</style>\n</head>\n"
        f"<body>\n{_static('viewer_body.html')}\n"
        f"<script id=\"circuit-data\" type=\"application/json\">{embed_json(data)}</script>\n"
        f"<script>{script}</script>\n</body></html>\n"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def render_index(title: str, columns: list[str], rows: list[list[Any]], links: list[dict[str, str]],
                 notes: list[str], images: dict[str, bytes]) -> str:
    """The quickstart index: a table (one row per task; `links[i]` maps link text to a relative href
    for row i), notes, and PNG images embedded as data URIs (so the page stays one file)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns) + "<th>circuit pages</th>"
    body = []
    for row, row_links in zip(rows, links):
        cells = "".join(f"<td>{esc(_cell(v))}</td>" for v in row)
        hrefs = " ".join(f"<a href=\"{esc(href)}\">{esc(text)}</a>" for text, href in row_links.items()) or "-"
        body.append(f"<tr>{cells}<td>{hrefs}</td></tr>")
    figs = "".join(f"<figure><img alt=\"{esc(name)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"
                   f"<figcaption>{esc(name)}</figcaption></figure>" for name, png in images.items())
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp('', 'data:')}\">\n"
        f"<title>{esc(title)}</title>\n<style>{_static('index.css')}</style></head>\n"
        f"<body><h1>{esc(title)}</h1>\n<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"
        f"<ul class=\"notes\">{note_html}</ul>\n{figs}\n</body></html>\n"
    )


__all__ = ["embed_json", "render_circuit_page", "render_index", "finite"]
