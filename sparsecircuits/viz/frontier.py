"""The capability-interpretability frontier of a sweep (Gao et al. 2025): one point per model,
validation (pretraining) loss on x, geometric mean of task-circuit edges on y (log), both lower =
better, weight-sparse and dense models marked apart and each point labelled with its run name. The
lower-left envelope (Pareto front) of each family is drawn as a step line. With several pruning
seeds, each point's vertical bar spans the geometric means of the seeds taken one at a time.

`frontier_plot` needs matplotlib (the `viz` extra, imported lazily); `write_frontier_report` writes
`frontier.png` (when matplotlib is there), a self-contained `frontier.html` (the quickstart index
style: escaped table, notes, the PNG embedded as a data URI, no network) and `frontier.md` (the
Markdown tables docs/frontier.md quotes: per model, and per model and task with circuit / full /
empty-circuit losses) into the sweep folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.viz.html import render_index
from sparsecircuits.viz.plots import _pyplot, _save, matplotlib_available

if TYPE_CHECKING:
    from sparsecircuits.weight_sparse.sweep import SweepResult
    from sparsecircuits.weight_sparse.sweep_results import RunRow


def frontier_metric(result: SweepResult) -> str:
    """'geomean_common' when some task is reached by every model, else 'geomean_all' (see weight_sparse/sweep_results.py)."""
    return "geomean_common" if result.common_tasks else "geomean_all"


def frontier_points(result: SweepResult) -> list[tuple[RunRow, float, float]]:
    """(row, val loss, geomean edges) of every model that has both."""
    metric = frontier_metric(result)
    pts = []
    for r in result.rows:
        y = getattr(r, metric)
        if r.val_loss is not None and y is not None:
            pts.append((r, float(r.val_loss), float(y)))
    return pts


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x and lower y), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def frontier_plot(result: SweepResult, path: Path) -> bytes:
    """Validation loss vs geomean circuit edges, one labelled point per model; writes a PNG."""
    plt = _pyplot()
    pts = frontier_points(result)
    metric = frontier_metric(result)
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    fracs = sorted({r.run.weight_frac for r, _, _ in pts if not r.run.dense})
    cmap = plt.get_cmap("viridis")
    for dense in (False, True):
        fam = [(r, x, y) for r, x, y in pts if r.run.dense == dense]
        for r, x, y in fam:
            if dense:
                style: dict[str, Any] = dict(marker="s", color="#333333")
            else:
                color = cmap(0.85 * fracs.index(r.run.weight_frac) / max(1, len(fracs) - 1))
                off = r.run.act_sparsity >= 1
                style = dict(marker="o", color=color, markerfacecolor="white" if off else color)
            ax.plot([x], [y], ls="none", markersize=6 + r.run.width / 32, **style)
            if metric == "geomean_common" and len(r.geomean_common_by_seed) > 1:
                lo, hi = min(r.geomean_common_by_seed), max(r.geomean_common_by_seed)
                ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none",
                            ecolor=style["color"], elinewidth=1, capsize=3)
            ax.annotate(r.run.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = pareto([(x, y) for _, x, y in fam])
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", lw=1, alpha=0.6,
                    color="#333333" if dense else "#4e79a7", ls="--" if dense else "-",
                    label="dense front" if dense else "weight-sparse front")
    for i, f in enumerate(fracs):
        ax.plot([], [], "o", color=cmap(0.85 * i / max(1, len(fracs) - 1)), label=f"weight L0 {f:.4g} (hollow: AbsTopK off)")
    ax.plot([], [], "s", color="#333333", label="dense baseline")
    ax.set_yscale("log")
    if pts:  # geomeans are >= 1 (an empty circuit counts as one edge); the axis spans the data and error bars
        ys = [y for _, _, y in pts] + [v for r, _, _ in pts for v in r.geomean_common_by_seed]
        ax.set_ylim(max(0.7, min(ys) / 2.0), 2.0 * max(ys))
    ax.set_xlabel("validation loss (nats/token)  \u2190 more capable")
    target = result.config.frontier_target or result.config.prune.target_loss
    n = len(result.common_tasks)
    which = (f"{n} task{'s' if n != 1 else ''} every model reaches at loss {target:g}" if metric == "geomean_common"
             else "all tasks, unreached at relaxed target")
    ax.set_ylabel(f"geomean circuit edges ({which})  \u2190 more interpretable", fontsize=8)
    ax.set_title("capability vs interpretability (Gao et al. 2025 frontier)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    if not pts:
        ax.text(0.5, 0.5, "no model has both a validation loss and circuits yet", transform=ax.transAxes, ha="center")
    return _save(fig, path)


def _act(a: float) -> str:
    return "off" if a >= 1 else f"{a:g}"


def table_rows(result: SweepResult) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the sweep table (shared by the CLI and the HTML page)."""
    columns = ["run", "d_model", "L0 target", "L0 measured", "AbsTopK", "val loss", "edges common",
               "edges all", "reached"]
    rows = []
    for r in result.rows:
        rows.append([r.run.name, r.run.width, "dense" if r.run.dense else f"{r.run.weight_frac:.4g}",
                     None if r.hidden_kept is None else f"{r.hidden_kept:.4f}", _act(r.run.act_sparsity),
                     _num(r.val_loss, "{:.3f}"), r.geomean_common, r.geomean_all, f"{r.n_reached}/{len(result.config.tasks)}"])
    return columns, rows


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def frontier_markdown(result: SweepResult) -> str:
    """Two Markdown tables: per model (the figure's numbers, with the seed range of the y value),
    and per model and task (edges per seed; circuit / full / empty-circuit task loss; full-model
    accuracy; reached = at the absolute target at every seed)."""
    cfg = result.config
    lines = [f"Frontier tasks (every model reaches them at target {cfg.frontier_target or cfg.prune.target_loss:g} at every pruning seed, "
             f"every full model >= {cfg.min_accuracy:g} accuracy): {', '.join(result.common_tasks) or 'none'}.", "",
             "| run | d_model | L0 target | L0 measured | AbsTopK | val loss | geomean edges (frontier tasks) | "
             "range over pruning seeds | tasks reached |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        seeds = r.geomean_common_by_seed
        spread = f"{min(seeds):,.0f}–{max(seeds):,.0f}" if len(seeds) > 1 else "–"
        lines.append(f"| {r.run.name} | {r.run.width} | {'dense' if r.run.dense else f'{r.run.weight_frac:.4g}'} | "
                     f"{_num(r.hidden_kept, '{:.4f}')} | {_act(r.run.act_sparsity)} | {_num(r.val_loss, '{:.3f}')} | "
                     f"{_num(r.geomean_common)} | {spread} | {r.n_reached}/{len(cfg.tasks)} |")
    if cfg.prune.extra_targets:
        from sparsecircuits.weight_sparse.sweep_results import frontier_at, target_key

        targets = sorted({cfg.prune.target_loss, *cfg.prune.extra_targets})
        lines += ["", "The frontier at every pruning target (the same gates bisected to each loss): frontier tasks "
                  "and geometric-mean edges per model.", "",
                  "| target | frontier tasks | " + " | ".join(r.run.name for r in result.rows) + " |",
                  "|---|---|" + "---|" * len(result.rows)]
        for t in targets:
            key = "" if t == cfg.prune.target_loss else target_key(t)
            common, sizes = frontier_at(result.rows, cfg.tasks, cfg.min_accuracy, key)
            lines.append(f"| {t:g} | {', '.join(common) or 'none'} | "
                         + " | ".join(_num(sizes[r.run.name][0]) for r in result.rows) + " |")
    lines += _paired_table(result)
    lines += ["", "| run | task | edges per pruning seed | circuit / full / empty loss | full accuracy | reached |",
              "|---|---|---|---|---|---|"]
    for r in result.rows:
        for t in r.tasks.values():
            lines.append(f"| {r.run.name} | {t.task} | {', '.join(f'{e:,}' for e in t.edges_by_seed)} | "
                         f"{t.circuit_loss:.3f} / {t.full_loss:.3f} / {t.empty_loss:.3f} | {t.full_accuracy:.2f} | "
                         f"{'yes' if t.reached else 'no'} |")
        for task, err in r.errors.items():
            lines.append(f"| {r.run.name} | {task} | not pruned: {err} | | | |")
    return "\n".join(lines) + "\n"


def _paired_table(result: SweepResult) -> list[str]:
    """Sparse vs dense at the same width, per target: the tasks both reach and dense / sparse edges."""
    from sparsecircuits.weight_sparse.sweep_results import paired_ratios, target_key

    cfg = result.config
    lines = ["", "Sparse vs dense at the same width: each pair over the tasks *both* reach (full accuracy >= "
             f"{cfg.min_accuracy:g}), dense / sparse edges per task and their geometric mean (> 1: the sparse "
             "circuits are smaller). The dense model of a width has the lower validation loss, so this is not "
             "Gao et al.'s matched-loss comparison.", "", "| target | sparse | dense | tasks (sparse vs dense edges) | "
             "dense / sparse |", "|---|---|---|---|---|"]
    for t in sorted({cfg.prune.target_loss, *cfg.prune.extra_targets}):
        key = "" if t == cfg.prune.target_loss else target_key(t)
        for p in paired_ratios(result.rows, key, cfg.min_accuracy):
            tasks = ", ".join(f"{name} {s:,.0f} vs {d:,.0f}" for name, (s, d) in p.tasks.items()) or "none"
            lines.append(f"| {t:g} | {p.sparse} | {p.dense} | {tasks} | {_num(p.ratio, '{:.2f}x')} |")
    return lines


def write_frontier_report(result: SweepResult) -> Path:
    """Write `frontier.png` (with matplotlib) and `frontier.html` into the sweep folder; returns the page."""
    out = Path(result.out_dir)
    images = {}
    frontier_target = result.config.frontier_target or result.config.prune.target_loss
    notes = [f"tasks: {', '.join(result.config.tasks)}; target task loss {result.config.prune.target_loss:g} nats",
             f"frontier tasks (every model reaches them at {frontier_target:g}, every full model's accuracy >= "
             f"{result.config.min_accuracy:g}; geomean common): {', '.join(result.common_tasks) or 'none'}",
             "geomean (all) includes unreached tasks at the circuit size for full-model loss + slack; "
             "it does not compare models at equal task loss",
             f"{result.config.steps} steps, {result.config.n_layers} layers, preset {result.config.preset}; "
             f"{'complete' if result.complete else 'INCOMPLETE (rerun the sweep to finish)'}"]
    target = result.config.prune.target_loss
    trivial = [f"{r.run.name}:{t.task}" for r in result.rows for t in r.tasks.values() if t.empty_loss <= target]
    if trivial:
        notes.append("the empty circuit (every node mean-ablated) already reaches the target, so these count 0 edges: "
                     + ", ".join(trivial))
    if matplotlib_available():
        images["validation loss vs geomean circuit edges"] = frontier_plot(result, out / "frontier.png")
    else:
        notes.append("plot not drawn: install the `viz` extra (matplotlib)")
    columns, rows = table_rows(result)
    links = [{t: f"runs/{r.run.name}/circuits/{t}-s{res.seeds[0]}.json" for t, res in r.tasks.items()}
             for r in result.rows]
    atomic_write_text(out / "frontier.md", frontier_markdown(result))
    page = out / "frontier.html"
    atomic_write_text(page, render_index("sparsecircuits sweep: capability vs interpretability", columns, rows,
                                         links, notes, images))
    return page
