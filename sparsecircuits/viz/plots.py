"""Static PNG plots for papers and terminals (matplotlib, the `viz` extra, imported lazily): a
circuit's faithfulness-vs-size curve (task loss of the top-k circuit at every k the bisection
evaluated, with the target loss and the chosen k) and the quickstart's circuit sizes per task.
Each function writes the PNG and returns its bytes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecircuits.graph import Circuit
from sparsecircuits.viz.data import bisection_curve

if TYPE_CHECKING:
    from sparsecircuits.weight_sparse.quickstart import QuickstartReport


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install -c constraints.txt -e '.[viz]'") from None
    matplotlib.use("Agg")  # no display; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> bytes:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path.read_bytes()


def bisection_plot(circuit: Circuit, path: Path) -> bytes:
    """Task loss vs number of kept nodes k (the bisection trace)."""
    plt = _pyplot()
    curve = bisection_curve(circuit.metadata)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    pts = [p for p in (curve or {}).get("points", []) if isinstance(p.get("loss"), (int, float))]
    if pts:
        ax.plot([p["k"] for p in pts], [p["loss"] for p in pts], "o-", color="#4e79a7", label="top-k circuit")
        ax.set_xscale("symlog", linthresh=10)
    if curve and isinstance(curve.get("target"), (int, float)):
        ax.axhline(curve["target"], color="#c0392b", ls="--", lw=1, label=f"target {curve['target']:g} nats")
    if curve and isinstance(curve.get("chosen"), int):
        ax.axvline(curve["chosen"], color="#59a14f", ls=":", lw=1, label=f"chosen k = {curve['chosen']}")
    ax.set_xlabel("nodes kept (k)")
    ax.set_ylabel("task loss (nats)")
    ax.set_title(f"{circuit.metadata.get('task', 'circuit')}: faithfulness vs size", fontsize=10)
    if pts:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no bisection trace", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def size_plot(report: QuickstartReport, path: Path) -> bytes:
    """Circuit edges per pruned task, weight-sparse vs dense (log scale)."""
    plt = _pyplot()
    rows = [r for r in report.rows if r.sparse_circuit and r.dense_circuit]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.4))
    xs = range(len(rows))
    s = [r.sparse_circuit["n_edges"] for r in rows]  # type: ignore[index]
    d = [r.dense_circuit["n_edges"] for r in rows]  # type: ignore[index]
    ax.bar([x - 0.2 for x in xs], s, 0.4, label="weight-sparse", color="#4e79a7")
    ax.bar([x + 0.2 for x in xs], d, 0.4, label="dense twin", color="#f28e2b")
    ax.set_xticks(list(xs), [r.task for r in rows], rotation=20, ha="right", fontsize=8)
    for x, v in zip(xs, s):
        ax.text(x - 0.2, v, str(v), ha="center", va="bottom", fontsize=7)
    for x, v in zip(xs, d):
        ax.text(x + 0.2, v, str(v), ha="center", va="bottom", fontsize=7)
    if max(s + d + [0]) > 0:  # all-empty circuits (a degenerate run) have nothing to show on a log scale
        ax.set_yscale("log")
        ax.set_ylim(1, 4 * max(s + d))  # bars start at one edge, so heights compare on the log scale
    ax.set_ylabel("circuit edges")
    ax.set_title("circuit size at equal task loss", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    return _save(fig, path)
