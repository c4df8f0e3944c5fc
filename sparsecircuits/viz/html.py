"""HTML writers: one self-contained circuit page, and the quickstart index page.

The circuit page is our own HTML, CSS and JavaScript (`viz/static/`), with the page data embedded as
JSON in a `<script type="application/json">` block. Safety, in layers:
  1. `embed_json` escapes `<`, `>`, `&`, U+2028 and U+2029 as JSON `\\uXXXX` escapes, so no data
     string can close the block (`</script>`) or open a comment; JSON outside strings never holds
     these characters, so the escaped text parses to the same value;
  2. the page's script inserts every data string with `textContent` / `createTextNode`, never as HTML;
  3. a Content-Security-Policy allows no network at all and only our own script (by its sha256),
     so even an injected inline handler would not run.
The index page is generated HTML in which every data string goes through `html.escape`; its size
chart is inline SVG drawn here (`size_chart_svg`), so it needs no matplotlib and no image file.
Whitespace in prompts and answer tokens is made visible (`visible`: `·` space, `⏎` newline, `⇥` tab),
so `' '` and `'\n'` answers cannot be mistaken for each other or for nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from sparsecircuits.viz.data import finite

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_TABLE = str.maketrans(_ESCAPES)


def embed_json(data: Any) -> str:
    """JSON text that is safe inside a `<script type="application/json">` element (see step 1)."""
    text = json.dumps(finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_TABLE)


def viewer_sources() -> list[str]:
    """The files whose code decides what a page looks like (static/ without the dictionary dashboard's
    own files, this writer and the page data): what `viewer_digest` covers."""
    static = sorted(f.name for f in (files("sparsecircuits.viz") / "static").iterdir()
                    if f.is_file() and not f.name.startswith("dashboard"))
    return [f"static/{n}" for n in static] + ["html.py", "data.py"]


def viewer_digest() -> str:
    """sha256 of the viewer's code (`viewer_sources`, line endings normalised): docs/screenshots.py
    records it next to the screenshots, and a test fails when the code has changed since."""
    h = hashlib.sha256()
    root = files("sparsecircuits.viz")
    for name in viewer_sources():
        h.update(name.encode() + b"\0")
        h.update((root / name).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


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
    """A table index page (the sweep's frontier uses it): one row per item (`links[i]` maps link text
    to a relative href for row i), notes, and PNG images embedded as data URIs (so the page stays one
    file). Numbers are right-aligned."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns) + "<th>circuit pages</th>"
    body = []
    for row, row_links in zip(rows, links):
        cells = "".join(f"<td class=\"num\">{esc(_cell(v))}</td>" if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else f"<td>{esc(_cell(v))}</td>" for v in row)
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


_WS = {" ": "\u00b7", "\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d"}


def visible(text: str, breaks: bool = True) -> str:
    """HTML of `text` (escaped) with each whitespace character shown as a faint mark; with `breaks` a
    newline mark is followed by a real line break, so code keeps its lines (not in an answer token)."""
    out = []
    for ch in text:
        if ch in _WS:
            out.append(f"<span class=\"ws\">{_WS[ch]}</span>" + ("\n" if ch == "\n" and breaks else ""))
        else:
            out.append(html.escape(ch))
    return "".join(out)


@dataclass
class CircuitCell:
    """One circuit of an index row: size, task loss against its target, and its page."""

    nodes: int
    edges: int
    loss: float | None  # task loss of the circuit on held-out examples (nats)
    target: float | None  # the target loss it was pruned to (as used)
    reached: bool | None
    href: str | None  # relative link to its page
    asked: float | None = None  # the configured target, where pruning relaxed it (the full model is above it)


@dataclass
class IndexRow:
    task: str
    summary: str  # what is predicted and why it is determined (the task registry's line)
    prompt: str | None  # an example prompt, as the model sees it (decoded tokens)
    correct: str | None  # its correct and incorrect answer tokens
    incorrect: str | None
    acc_sparse: float
    acc_dense: float
    solved: bool
    circuits: dict[str, CircuitCell] = field(default_factory=dict)  # "sparse" / "dense"


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "\u2014" if x is None or not math.isfinite(x) else format(x, spec)


def _circuit_cells(c: CircuitCell | None) -> str:
    if c is None:
        return "<td class=\"num\">\u2014</td><td class=\"num\">\u2014</td><td class=\"num\">\u2014</td>"
    mark = {True: ("ok", "\u2264 target"), False: ("miss", "above target"), None: ("", "")}[c.reached]
    loss = (f"<span class=\"{mark[0]}\" title=\"target {_fmt(c.target)} nats: {mark[1]}\">{_fmt(c.loss)}</span>"
            + (" <span class=\"miss\">\u2717</span>" if c.reached is False else ""))
    if c.asked is not None and c.target is not None and abs(c.target - c.asked) > 1e-9:
        loss += f"<div class=\"note\" title=\"the full model's own loss is above {_fmt(c.asked)}\">target relaxed to {_fmt(c.target, '.2g')}</div>"
    nodes = f"<a href=\"{html.escape(c.href)}\">{c.nodes}</a>" if c.href else str(c.nodes)
    return f"<td class=\"num\">{nodes}</td><td class=\"num\">{c.edges:,}</td><td class=\"num\">{loss}</td>"


def _index_row(r: IndexRow) -> str:
    esc = html.escape
    tail = "\n".join((r.prompt or "").split("\n")[-3:])[-160:] if r.prompt else None
    example = ("<div class=\"prompt\">" + visible(tail) + "</div><div class=\"answers\">"
               f"<span class=\"ans good\" title=\"correct answer token\">\u2713 <code>{visible(r.correct or '', False)}</code></span> "
               f"<span class=\"ans bad\" title=\"incorrect answer token\">\u2717 <code>{visible(r.incorrect or '', False)}</code></span>"
               "</div>"
               if tail is not None else "\u2014")
    sc, dc = r.circuits.get("sparse"), r.circuits.get("dense")
    ratio = f"{dc.edges / max(sc.edges, 1):.1f}\u00d7" if sc and dc else ""
    status = "" if r.solved else "<div class=\"note\">not solved: not pruned</div>"
    pages = " ".join(f"<a href=\"{esc(c.href)}\">{esc(kind)}</a>" for kind, c in r.circuits.items() if c.href) or "\u2014"
    return (f"<tr id=\"task-{esc(r.task)}\"><td><strong>{esc(r.task)}</strong><div class=\"note\">{esc(r.summary)}</div>{status}</td>"
            f"<td class=\"example\">{example}</td>"
            f"<td class=\"num\">{r.acc_sparse:.2f}</td><td class=\"num\">{r.acc_dense:.2f}</td>"
            f"{_circuit_cells(sc)}{_circuit_cells(dc)}<td class=\"num\">{ratio}</td><td>{pages}</td></tr>")


def size_chart_svg(rows: list[IndexRow]) -> str:
    """Circuit edges per pruned task, weight-sparse vs dense, as an inline SVG bar chart (log scale;
    an open bar marks a circuit that did not reach its target)."""
    pairs = [(r.task, r.circuits["sparse"], r.circuits["dense"]) for r in rows
             if "sparse" in r.circuits and "dense" in r.circuits]
    if not pairs:
        return ""
    esc = html.escape
    top = max(max(s.edges, d.edges) for _, s, d in pairs)
    decades = max(1, math.ceil(math.log10(max(top, 1) * 1.5)))
    W, L, T, B, group = max(440, 120 + 96 * len(pairs)), 56, 28, 74, 96
    H = T + 220 + B
    y = lambda v: T + 220 * (1 - math.log10(max(v, 1)) / decades)  # noqa: E731
    parts = [f"<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" "
             f"viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"circuit edges per task, weight-sparse vs dense\">"]
    for d in range(decades + 1):
        yy = y(10 ** d)
        parts.append(f"<line x1=\"{L}\" x2=\"{W - 8}\" y1=\"{yy:.1f}\" y2=\"{yy:.1f}\" class=\"grid\"/>"
                     f"<text x=\"{L - 6}\" y=\"{yy + 4:.1f}\" text-anchor=\"end\">{10 ** d:,}</text>")
    parts.append(f"<text x=\"12\" y=\"{T + 110}\" transform=\"rotate(-90 12 {T + 110})\" text-anchor=\"middle\">"
                 "circuit edges (log scale)</text>")
    for i, (task, s, d) in enumerate(pairs):
        x0 = L + 16 + i * group
        for j, (c, cls) in enumerate(((s, "sparse"), (d, "dense"))):
            x, yy = x0 + j * 34, y(c.edges)
            open_ = "" if c.reached is not False else " open"
            parts.append(f"<rect class=\"{cls}{open_}\" x=\"{x}\" y=\"{yy:.1f}\" width=\"30\" height=\"{T + 220 - yy:.1f}\">"
                         f"<title>{esc(task)}, {cls}: {c.edges:,} edges, {c.nodes} nodes</title></rect>"
                         f"<text x=\"{x + 15}\" y=\"{yy - 4:.1f}\" text-anchor=\"middle\">{c.edges:,}</text>")
        parts.append(f"<text x=\"{x0 + 32}\" y=\"{T + 236}\" text-anchor=\"end\" "
                     f"transform=\"rotate(-30 {x0 + 32} {T + 236})\">{esc(task)}</text>")
    parts.append(f"<rect class=\"sparse\" x=\"{L}\" y=\"6\" width=\"12\" height=\"12\"/><text x=\"{L + 16}\" y=\"16\">"
                 f"weight-sparse</text><rect class=\"dense\" x=\"{L + 120}\" y=\"6\" width=\"12\" height=\"12\"/>"
                 f"<text x=\"{L + 136}\" y=\"16\">dense twin</text><rect class=\"sparse open\" x=\"{L + 230}\" y=\"6\" "
                 f"width=\"12\" height=\"12\"/><text x=\"{L + 246}\" y=\"16\">target not reached</text></svg>")
    return "".join(parts)


def render_quickstart_index(title: str, lead: str, definitions: list[tuple[str, str]], rows: list[IndexRow],
                            notes: list[str], footer: str) -> str:
    """The quickstart index: what was run (`lead`), what its words mean (`definitions`), one row per
    task (example, accuracies, both circuits' size and loss against the target, links to the pages),
    the size chart and notes. One self-contained file; no script runs (CSP)."""
    esc = html.escape
    defs = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in definitions)
    head = ("<tr><th rowspan=\"2\">task</th><th rowspan=\"2\">example prompt (end) and its two answer tokens</th>"
            "<th colspan=\"2\">accuracy</th><th colspan=\"3\">weight-sparse circuit</th><th colspan=\"3\">dense circuit</th>"
            "<th rowspan=\"2\">dense / sparse edges</th><th rowspan=\"2\">pages</th></tr>"
            "<tr><th>sparse</th><th>dense</th><th>nodes</th><th>edges</th><th>loss</th><th>nodes</th><th>edges</th><th>loss</th></tr>")
    chart = size_chart_svg(rows)
    figure = (f"<figure>{chart}<figcaption>circuit size in edges per pruned task, weight-sparse vs dense (each bar's "
              "label: its edges; hover a bar for its nodes); the table below has every task</figcaption></figure>"
              ) if chart else ""
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp('', 'data:')}\">\n"
        f"<title>{esc(title)}</title>\n<style>{_static('index.css')}</style></head>\n"
        f"<body><h1>{esc(title)}</h1>\n<p class=\"lead\">{esc(lead)}</p>\n"
        f"<details class=\"defs\" open><summary>What the words and numbers mean</summary><dl>{defs}</dl></details>\n"
        f"{figure}\n<table class=\"tasks\"><thead>{head}</thead><tbody>{''.join(_index_row(r) for r in rows)}</tbody></table>\n"
        f"<ul class=\"notes\">{note_html}</ul>\n<footer>{esc(footer)}</footer>\n</body></html>\n"
    )


__all__ = ["CircuitCell", "IndexRow", "embed_json", "finite", "render_circuit_page", "render_index", "render_quickstart_index",
           "size_chart_svg", "viewer_digest", "viewer_sources", "visible"]
