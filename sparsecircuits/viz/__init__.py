"""Viewing circuits: one self-contained HTML page per circuit, the quickstart index page and static
plots.

  data.py         the page data from a `Circuit` alone (graph columns, nodes, edges, summary, curve)
  activations.py  top activating corpus contexts and histograms of every node, in one batched pass
  task_panel.py   per-example full-model vs circuit predictions, attention of q/k nodes
  report.py       glue: `write_circuit_page`, `write_quickstart_report`, `ViewConfig`
  html.py         safe JSON embedding and the HTML writers; the page's own JS/CSS is in static/
  plots.py        matplotlib PNGs (the `viz` extra, imported lazily)
  browser.py      a stdlib headless-Chromium driver (DevTools pipe) for tests, benchmarks, screenshots
"""
