"""Viewing circuits: one self-contained HTML page per circuit, the quickstart, sweep and clusters
index pages, and static plots.

  data.py           the page data from a `Circuit` alone (graph columns, nodes, edges, summary, curve)
  activations.py    top activating corpus contexts and histograms of every node, in one batched pass
  task_panel.py     per-example full-model vs circuit predictions, attention of q/k nodes
  report.py         glue: `write_circuit_page`, `write_quickstart_report`, `ViewConfig`
  config.py         `ViewConfig` itself, importable without torch (the CLI's `view` flags)
  html.py           safe JSON embedding and the HTML writers; the page's own JS/CSS is in static/
  plots.py          matplotlib PNGs (the `viz` extra, imported lazily)
  frontier.py       the capability-interpretability frontier of a sweep (Gao et al. 2025): plot and page
  cluster_index.py  the index page of the unsupervised clusters pipeline (Marks et al. 2025)
  browser.py        a stdlib headless-Chromium driver (DevTools pipe) for tests, benchmarks, screenshots
"""
