"""Writing circuit pages and the quickstart report: the glue between a circuit, an optional model and
the HTML writer. The CLI (`sparsecircuits view`, `quickstart`) calls these; they never print and
report progress through an `on_event(message)` callback.

`circuit_page_data` steps:
  1. the page data from the circuit alone (`viz.data.page_data`): graph, summary, curve;
  2. with a model (`ModelContext`): top contexts and histograms of every channel node over corpus
     windows in one batched pass (`viz.activations`);
  3. with the circuit's task: per-example predictions of the full model and the circuit on
     held-out examples, attention of q/k nodes (`viz.task_panel`), and, when the circuit has no
     ablation effects and is small enough, exact single-node ablation effects (`weight_sparse.prune.node_effects`);
  4. the strings of every token id used, decoded one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.graph import Circuit
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.viz.config import ViewConfig  # torch-free, for the CLI
from sparsecircuits.viz.data import page_data
from sparsecircuits.viz.html import render_circuit_page, render_index

if TYPE_CHECKING:
    from sparsecircuits.tasks.base import TaskData
    from sparsecircuits.weight_sparse.quickstart import QuickstartReport

Event = Callable[[str], None]


@dataclass
class ModelContext:
    """A model with what the page needs from it: tokenizer, corpus windows, mean baselines."""

    model: Transformer
    tokenizer: Tokenizer
    windows: Tensor | None  # [w, n_ctx] corpus token windows (None: no contexts)
    means: dict[str, Tensor] | None  # mean activations (the default ablation baseline)


def load_model_context(checkpoint: Path, cache_dir: Path, n_windows: int = 64, on_event: Event = lambda m: None) -> ModelContext:
    """Load a checkpoint, its tokenizer, `n_windows` held-out windows of its pretraining corpus
    (the stdlib when its metadata names none; tokenized and cached) and its mean baselines."""
    from sparsecircuits.ablation import cached_means
    from sparsecircuits.data.batches import checkpoint_corpus, val_windows
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    if ck.tokenizer_path is None:
        raise ValueError(f"{ck.path} has no tokenizer.json; the page needs the model's tokenizer")
    tok = load_tokenizer(ck.tokenizer_path)
    on_event("corpus windows and mean activations (tokenized and cached on first use)")
    corpus = checkpoint_corpus(ck.meta, tok, Path(cache_dir))
    n_ctx = ck.model.cfg.n_ctx
    batches = val_windows(corpus.val, max(1, -(-n_windows // 16)), min(16, n_windows), n_ctx)
    windows = torch.cat(batches)[:n_windows, :-1]
    means = cached_means(ck.model, corpus.train, Path(cache_dir))
    return ModelContext(ck.model, tok, windows, means)


def held_out_task(circuit: Circuit, tok: Tokenizer, n_ctx: int, task_file: Path | None = None) -> TaskData | None:
    """The circuit's task examples that pruning held out (same n, seed and split), or None when the
    task is not a built-in one and no task file is given."""
    from sparsecircuits.tasks.base import get_task, load_jsonl_task, load_task
    from sparsecircuits.weight_sparse.prune import split_indices

    md = circuit.metadata
    if task_file is not None:
        data = load_jsonl_task(task_file, tok, n_ctx)
    else:
        name = md.get("task")
        try:
            get_task(str(name))
        except ValueError:
            return None
        counts = md.get("n_examples") if isinstance(md.get("n_examples"), dict) else {}
        n = int(sum(counts.values())) if counts else 256
        data = load_task(str(name), tok, n_ctx, n=n)
    seed = md.get("hyperparameters", {}).get("seed") if isinstance(md.get("hyperparameters"), dict) else None
    if seed is None:
        return data
    _, held = split_indices(len(data), int(seed))
    return data.subset(torch.sort(held).values)


def _effects(ctx: ModelContext, circuit: Circuit, data: TaskData, cfg: ViewConfig) -> dict[str, float]:
    from sparsecircuits.ablation import circuit_masks
    from sparsecircuits.evaluate import MaskedTask
    from sparsecircuits.viz.task_panel import circuit_sites
    from sparsecircuits.weight_sparse.prune import node_effects

    sites = circuit_sites(circuit, ctx.model)
    baseline = str(circuit.metadata.get("hyperparameters", {}).get("baseline", "mean"))
    if sites is None or (baseline == "mean" and ctx.means is None):
        return {}
    flat_on = torch.cat([m.flatten() for m in circuit_masks(circuit, sites).values()])
    if not 0 < int(flat_on.sum()) <= cfg.effect_nodes:
        return {}
    task = MaskedTask(ctx.model, data.subset(slice(0, cfg.effect_examples)), baseline, ctx.means, sites)
    return node_effects(task, flat_on)


def circuit_page_data(circuit: Circuit, ctx: ModelContext | None = None, cfg: ViewConfig | None = None,
                      task_file: Path | None = None, title: str | None = None, on_event: Event = lambda m: None) -> dict[str, Any]:
    """Steps 1-4 of the module docstring."""
    from sparsecircuits.viz.activations import channel_nodes, context_rows, node_activations
    from sparsecircuits.viz.task_panel import qk_attention, task_predictions

    cfg = cfg or ViewConfig()
    data = page_data(circuit, title)
    if ctx is None:
        data["notes"].append("written without a model: no activation contexts, histograms or task predictions "
                             "(`sparsecircuits view CIRCUIT.json --model CHECKPOINT` adds them)")
        return data
    used: set[int] = set()
    model = ctx.model
    with torch.no_grad():
        chan = channel_nodes(circuit.nodes, model)
        if ctx.windows is not None and chan:
            on_event(f"top contexts and histograms of {len(chan)} nodes over {len(ctx.windows)} corpus windows")
            nodes = [circuit.nodes[j] for j in chan]
            hist_tokens = max(256, min(8192, (1 << 24) // len(nodes)))
            acts = node_activations(model, nodes, ctx.windows, cfg.top_k, cfg.bins, hist_tokens=hist_tokens)
            rows = context_rows(ctx.windows, acts)
            for pos, j in enumerate(chan):
                data["nodes"][j]["top"] = rows[pos]
                data["nodes"][j]["hist"] = {"lo": float(acts.hist_lo[pos]), "hi": float(acts.hist_hi[pos]),
                                            "counts": acts.hist[pos].tolist(), "zeros": int(acts.zeros[pos]),
                                            "total": acts.hist_tokens}
                used.update(t for r in rows[pos] for t in r["tokens"])
        task = held_out_task(circuit, ctx.tokenizer, model.cfg.n_ctx, task_file)
        if task is None:
            data["notes"].append(f"no task panel: task {circuit.metadata.get('task')!r} is not a built-in task "
                                 "(pass --task-file for a JSONL task)")
        else:
            on_event(f"task panel: {len(task)} held-out examples of {task.name}")
            panel = task_predictions(model, circuit, task, ctx.means, cfg.examples)
            data["notes"] += panel.pop("notes")
            data["task"] = panel
            for ex in panel["examples"]:
                used.update(ex["tokens"])
                used.update([ex["correct"], ex["incorrect"]] + [ex[k]["pred"] for k in ("full", "circuit") if ex[k]])
            for j, rows in qk_attention(model, circuit.nodes, task, cfg.attn_examples).items():
                data["nodes"][j]["attn"] = rows
            if not any(n.get("effect") is not None for n in data["nodes"]) and cfg.effect_nodes > 0:
                on_event("single-node ablation effects")
                effects = _effects(ctx, circuit, task, cfg)
                for n in data["nodes"]:
                    n["effect"] = effects.get(n["id"], n.get("effect"))
                if effects:
                    data["notes"].append(f"ablation effects computed by the viewer on {min(cfg.effect_examples, len(task))} "
                                         "held-out examples: mean logit difference of the circuit minus the circuit without the node")
    data["vocab"] = {str(t): ctx.tokenizer.decode([t], skip_special_tokens=False) for t in sorted(used)}
    return data


def write_circuit_page(circuit: Circuit, path: Path, ctx: ModelContext | None = None, cfg: ViewConfig | None = None,
                       task_file: Path | None = None, title: str | None = None, on_event: Event = lambda m: None) -> Path:
    """Write one self-contained HTML page for a circuit (atomically); returns its path."""
    html = render_circuit_page(circuit_page_data(circuit, ctx, cfg, task_file, title, on_event))
    atomic_write_text(Path(path), html)
    return Path(path)


class QuickstartPages:
    """The pages of a quickstart run, next to its JSON. `circuit(task, kind)` writes one circuit's page
    (`circuits/{kind}/<task>.html`, plus `<task>.bisection.png` with matplotlib) as soon as the circuit
    is saved, so pages can be written while later circuits are still being pruned; `index(report)`
    writes the pages not written yet, the size comparison plot and `index.html` (a table of all tasks
    linking to the pages). Each model is loaded once, on its first page."""

    def __init__(self, out_dir: Path, cache_dir: Path, checkpoints: dict[str, str | Path], cfg: ViewConfig | None = None,
                 on_event: Event = lambda m: None) -> None:
        from sparsecircuits.viz import plots

        self.out, self.cache_dir, self.checkpoints = Path(out_dir), Path(cache_dir), checkpoints
        self.cfg, self.on_event = cfg, on_event
        self.contexts: dict[str, ModelContext] = {}
        self.written: set[tuple[str, str]] = set()
        self.have_mpl = plots.matplotlib_available()

    def circuit(self, task: str, kind: str) -> Path:
        from sparsecircuits.viz import plots

        src = self.out / "circuits" / kind / f"{task}.json"
        if kind not in self.contexts:
            self.on_event(f"loading the {kind} model for the circuit pages")
            self.contexts[kind] = load_model_context(Path(self.checkpoints[kind]), self.cache_dir,
                                                     (self.cfg or ViewConfig()).windows, self.on_event)
        circuit = Circuit.load(src)
        self.on_event(f"page for the {kind} {task} circuit")
        page = write_circuit_page(circuit, src.with_suffix(".html"), self.contexts[kind], self.cfg,
                                  title=f"{task}: {kind} model", on_event=self.on_event)
        if self.have_mpl:
            plots.bisection_plot(circuit, src.with_suffix(".bisection.png"))
        self.written.add((task, kind))
        return page

    def index(self, report: QuickstartReport) -> Path:
        from sparsecircuits.viz import plots

        out, have_mpl = self.out, self.have_mpl
        links, images = [], {}
        for r in report.rows:
            row_links = {}
            for kind in ("sparse", "dense"):
                if getattr(r, f"{kind}_circuit") and (out / "circuits" / kind / f"{r.task}.json").exists():
                    if (r.task, kind) not in self.written:
                        self.circuit(r.task, kind)
                    row_links[kind] = f"circuits/{kind}/{r.task}.html"
            links.append(row_links)
        if have_mpl and any(r.sparse_circuit and r.dense_circuit for r in report.rows):
            images["circuit size, weight-sparse vs dense"] = plots.size_plot(report, out / "sizes.png")
        columns = ["task", "answers", "acc sparse", "acc dense", "nodes", "edges", "dense nodes", "dense edges", "dense/sparse edges"]
        rows = []
        for r in report.rows:
            sc, dc = r.sparse_circuit, r.dense_circuit
            row: list[Any] = [r.task, f"{r.answers[0]!r} / {r.answers[1]!r}", r.sparse.accuracy, r.dense.accuracy]
            if sc and dc:
                row += [sc["n_nodes"], sc["n_edges"], dc["n_nodes"], dc["n_edges"], f"{dc['n_edges'] / max(sc['n_edges'], 1):.1f}x"]
            else:
                row += [None, None, None, None, "not solved"]
            rows.append(row)
        notes = list(report.notes) + [f"geometric mean of circuit edges: sparse {report.geomean_sparse_edges:.0f}, dense "
                                      f"{report.geomean_dense_edges:.0f} (dense/sparse {report.geomean_ratio:.1f}x)",
                                      f"sparse model {report.sparse_model}; dense twin {report.dense_model}; {report.seconds:.0f} s"]
        if not have_mpl:
            notes.append("plots not drawn: install the `viz` extra (matplotlib)")
        index = out / "index.html"
        atomic_write_text(index, render_index("sparsecircuits quickstart: task circuits, weight-sparse vs dense",
                                              columns, rows, links, notes, images))
        return index


def write_quickstart_report(report: QuickstartReport, cache_dir: Path, cfg: ViewConfig | None = None,
                            on_event: Event = lambda m: None) -> Path:
    """All pages of a quickstart run at once (see `QuickstartPages`); returns the index."""
    checkpoints = {"sparse": report.sparse_model, "dense": report.dense_model}
    return QuickstartPages(Path(report.out_dir), cache_dir, checkpoints, cfg, on_event).index(report)
