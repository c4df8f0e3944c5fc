"""The index page of the unsupervised pipeline (`feature_circuits/clusters.py`): one row per cluster with its
size, circuit size, a link to its circuit JSON (open with `sparsecircuits view`) and its top contexts.
Like the quickstart index (`viz/html.py`): one self-contained file, every data string through
`html.escape`, and a Content-Security-Policy that allows no script and no network.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from sparsecircuits.viz.html import _csp, _static


@dataclass
class ClusterRow:
    cluster: int
    size: int  # contexts in the cluster
    nodes: int  # nodes of its circuit
    edges: int
    metric: float  # mean log p(target) of the contexts used
    href: str  # relative link to the circuit JSON
    contexts: list[tuple[str, str]]  # (context text, target token text)


def render_cluster_index(title: str, rows: list[ClusterRow], notes: list[str]) -> str:
    """The complete HTML of the index page."""
    esc = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("cluster", "contexts", "nodes", "edges", "mean log p", "circuit",
                                              "top contexts (→ predicted token)"))
    body = []
    for r in rows:
        ctx = "".join(f"<li><code>{esc(text[-80:])}</code> → <b><code>{esc(target)}</code></b></li>"
                      for text, target in r.contexts)
        body.append(f"<tr><td>{r.cluster}</td><td>{r.size}</td><td>{r.nodes}</td><td>{r.edges}</td>"
                    f"<td>{r.metric:.3f}</td><td><a href=\"{esc(r.href)}\">{esc(r.href)}</a></td>"
                    f"<td><ul>{ctx}</ul></td></tr>")
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp('')}\">\n"
        f"<title>{esc(title)}</title>\n<style>{_static('index.css')}\ntd code{{white-space:pre-wrap}}</style></head>\n"
        f"<body><h1>{esc(title)}</h1>\n<ul class=\"notes\">{note_html}</ul>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n</body></html>\n"
    )


__all__ = ["ClusterRow", "render_cluster_index"]
