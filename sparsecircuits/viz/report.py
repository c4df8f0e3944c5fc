"""Writing circuit pages and the quickstart report: the glue between a circuit, an optional model and
the HTML writer. The CLI (`sparsecircuits view`, `quickstart`) calls these; they never print and
report progress through an `on_event(message)` callback.

`circuit_page_data` steps:
  1. the page data from the circuit alone (`viz.data.page_data`): graph, summary, curve;
  2. with a model (`ModelContext`): top contexts and histograms of every channel node over corpus
     windows in one batched pass (`viz.activations`);
  3. with the circuit's task: per-example predictions of the full model and the circuit on
     held-out examples, attention of q/k nodes (`viz.task_panel`), and, when the circuit has no
     ablation effects (neither as its scores nor apart) and is small enough, exact single-node
     ablation effects (`weight_sparse.prune.node_effects`);
  4. the strings of every token id used, decoded one by one;
  5. links to other pages (the report's index, the same task's circuit in the twin model) and
     extra lines for the reading guide (the report's "solved" rule), given by the caller.

The quickstart's index page (`QuickstartPages.index`) says what was run and what the words mean
(solved, target, baseline, node, edge), then per task an example prompt with both answers
(whitespace made visible), accuracies, each circuit's size and task loss against the target, and
links to every page; a size chart as inline SVG (no matplotlib needed).
"""

from __future__ import annotations

import os
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
from sparsecircuits.viz.data import BASELINES, page_data, scores_are_effects, target_status
from sparsecircuits.viz.html import CircuitCell, IndexRow, render_circuit_page, render_quickstart_index

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
                      task_file: Path | None = None, title: str | None = None, on_event: Event = lambda m: None,
                      links: list[tuple[str, str]] | None = None, guide_lines: list[str] | None = None) -> dict[str, Any]:
    """Steps 1-5 of the module docstring. `links`: (text, relative href) shown at the top of the page;
    `guide_lines`: extra lines for its "how to read this" panel."""
    from sparsecircuits.viz.activations import channel_nodes, context_rows, node_activations, node_stats
    from sparsecircuits.viz.task_panel import qk_attention, task_predictions

    cfg = cfg or ViewConfig()
    data = page_data(circuit, title)
    data["links"] = [{"text": t, "href": h} for t, h in (links or [])]
    data["guide"]["lines"] += list(guide_lines or [])
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
                data["nodes"][j]["contexts"] = rows[pos]
                data["nodes"][j]["hist"] = node_stats(acts, pos)
                used.update(t for sign in ("pos", "neg") for r in rows[pos][sign] for t in r["tokens"])
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
            have = scores_are_effects(circuit.metadata) or any(n.get("effect") is not None for n in data["nodes"])
            if not have and cfg.effect_nodes > 0:
                on_event("single-node ablation effects")
                effects = _effects(ctx, circuit, task, cfg)
                for n in data["nodes"]:
                    n["effect"] = effects.get(n["id"], n.get("effect"))
                if effects:
                    data["notes"].append(f"ablation effects computed by the viewer on {min(cfg.effect_examples, len(task))} "
                                         "held-out examples: mean logit difference of the circuit minus the circuit without the node")
    data["vocab"] = {str(t): ctx.tokenizer.decode([t], skip_special_tokens=False) for t in sorted(used)}
    return data


def rebase_hrefs(hrefs: dict[str, str], source_dir: Path, page_dir: Path) -> dict[str, str]:
    """Relative links written for a file in `source_dir`, made relative to a page in `page_dir`."""
    out = {}
    for key, href in hrefs.items():
        path, _, frag = href.partition("#")
        target = os.path.normpath(os.path.join(os.path.abspath(source_dir), path))
        rel = Path(os.path.relpath(target, os.path.abspath(page_dir))).as_posix()
        out[key] = rel + ("#" + frag if frag else "")
    return out


def write_circuit_page(circuit: Circuit, path: Path, ctx: ModelContext | None = None, cfg: ViewConfig | None = None,
                       task_file: Path | None = None, title: str | None = None, on_event: Event = lambda m: None,
                       links: list[tuple[str, str]] | None = None, guide_lines: list[str] | None = None,
                       source_dir: Path | None = None) -> Path:
    """Write one self-contained HTML page for a circuit (atomically); returns its path. `source_dir`:
    the folder of the circuit's JSON, which its dashboard links are relative to (default: the page's)."""
    data = circuit_page_data(circuit, ctx, cfg, task_file, title, on_event, links, guide_lines)
    if source_dir is not None:
        data["dashboards"] = rebase_hrefs(data["dashboards"], Path(source_dir), Path(path).parent)
    html = render_circuit_page(data)
    atomic_write_text(Path(path), html)
    return Path(path)


class QuickstartPages:
    """The pages of a quickstart run, next to its JSON. `circuit(task, kind)` writes one circuit's page
    (`circuits/{kind}/<task>.html`, plus `<task>.bisection.png` with matplotlib) as soon as the circuit
    is saved, so pages can be written while later circuits are still being pruned; `index(report)`
    writes the pages not written yet and `index.html` (what was run, what the words mean, a row per
    task linking to its pages, an inline size chart; `sizes.png` too with matplotlib). Every circuit
    page links back to the index and to the same task's circuit in the other model. Each model is
    loaded once, on its first page."""

    def __init__(self, out_dir: Path, cache_dir: Path, checkpoints: dict[str, str | Path], cfg: ViewConfig | None = None,
                 on_event: Event = lambda m: None, solve_threshold: float | None = None) -> None:
        from sparsecircuits.viz import plots

        self.out, self.cache_dir, self.checkpoints = Path(out_dir), Path(cache_dir), checkpoints
        self.cfg, self.on_event, self.solve_threshold = cfg, on_event, solve_threshold
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
        twin = "dense" if kind == "sparse" else "sparse"
        links = [("\u2190 all tasks (index)", "../../index.html"), (f"{task} in the {twin} model", f"../{twin}/{task}.html")]
        rules = []
        if self.solve_threshold is not None:
            rules.append(f"solved: the quickstart prunes a task only where the weight-sparse model's accuracy on it is "
                         f"\u2265 {self.solve_threshold:g}; both models are then pruned to the same target")
        page = write_circuit_page(circuit, src.with_suffix(".html"), self.contexts[kind], self.cfg,
                                  title=f"{task}: {'weight-sparse' if kind == 'sparse' else 'dense'} model",
                                  on_event=self.on_event, links=links, guide_lines=rules)
        if self.have_mpl:
            plots.bisection_plot(circuit, src.with_suffix(".bisection.png"))
        self.written.add((task, kind))
        return page

    def index(self, report: QuickstartReport) -> Path:
        from sparsecircuits.viz import plots

        rows = []
        examples = _task_examples([r.task for r in report.rows], Path(self.checkpoints["sparse"]))
        for r in report.rows:
            row = IndexRow(r.task, _summary_of(r.task), *examples.get(r.task, (None, None, None)), r.sparse.accuracy,
                           r.dense.accuracy, r.solved)
            for kind in ("sparse", "dense"):
                src = self.out / "circuits" / kind / f"{r.task}.json"
                if getattr(r, f"{kind}_circuit") and src.exists():
                    if (r.task, kind) not in self.written:
                        self.circuit(r.task, kind)
                    md = Circuit.load(src).metadata
                    t = target_status(md)
                    row.circuits[kind] = CircuitCell(int(md.get("n_nodes", 0)), int(md.get("n_edges", 0)), t["loss"],
                                                     t["target"], t["reached"], f"circuits/{kind}/{r.task}.html",
                                                     t["asked"])
            rows.append(row)
        if self.have_mpl and any(r.sparse_circuit and r.dense_circuit for r in report.rows):
            plots.size_plot(report, self.out / "sizes.png")  # for papers; the page draws its own chart
        index = self.out / "index.html"
        rows.sort(key=lambda r: not r.circuits)  # pruned tasks first (stable: the report's order within each)
        atomic_write_text(index, _render_index(report, rows, self.solve_threshold))
        return index


def _summary_of(task: str) -> str:
    import sparsecircuits.tasks  # noqa: F401  (registers the built-in tasks)
    from sparsecircuits.tasks.base import TASKS

    return TASKS[task].summary if task in TASKS else ""


def _task_examples(tasks: list[str], checkpoint: Path) -> dict[str, tuple[str, str, str]]:
    """Per task, its first example as the model sees it: (prompt, correct token, incorrect token),
    decoded from the tokens (a task may move a shared answer prefix into the prompt)."""
    import json

    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import resolve
    from sparsecircuits.tasks.base import TaskError, load_task

    try:
        folder = resolve(checkpoint)
        tok = load_tokenizer(folder / "tokenizer.json")
        n_ctx = int(json.loads((folder / "config.json").read_text())["n_ctx"])
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for name in tasks:
        try:
            data = load_task(name, tok, n_ctx, n=2)
        except (TaskError, ValueError):
            continue
        ids = data.tokens[0, : int(data.lengths[0])].tolist()
        out[name] = (tok.decode(ids, skip_special_tokens=False), tok.decode([int(data.correct[0])], skip_special_tokens=False),
                     tok.decode([int(data.incorrect[0])], skip_special_tokens=False))
    return out


def _render_index(report: QuickstartReport, rows: list[IndexRow], solve_threshold: float | None) -> str:
    cfg = report.prune_config
    target = float(cfg.get("target_loss", float("nan")))
    pruned = [r for r in rows if r.circuits]
    reached = {k: sum(1 for r in pruned if k in r.circuits and r.circuits[k].reached) for k in ("sparse", "dense")}
    n_solved = sum(r.solved for r in rows)
    thr = f"\u2265 {solve_threshold:g}" if solve_threshold is not None else "at the solve threshold"
    lead = (f"{len(rows)} tasks evaluated on a weight-sparse model and its dense twin; the sparse model solves "
            f"{n_solved} (accuracy {thr}), and for each of those both models were pruned to the smallest circuit whose "
            f"task loss is at most {target:g} nats (or, where the full model itself is above that, its own loss plus a "
            f"slack). The target was reached by {reached['sparse']} of {len(pruned)} "
            f"weight-sparse and {reached['dense']} of {len(pruned)} dense circuits; each row gives the loss reached.")
    baseline = str(cfg.get("baseline", "mean"))
    definitions = [
        ("task", "a binary next-token contrast: a prompt, a correct and an incorrect next token (both shown, "
                 "whitespace made visible: \u00b7 space, \u23ce newline)"),
        ("accuracy", "the fraction of the task's examples where the model gives the correct token the higher logit"),
        ("solved", f"the weight-sparse model's accuracy is {thr}; only solved tasks are pruned"),
        ("task loss", "binary cross-entropy over the two answer tokens on held-out examples, in nats "
                      "(0.69 = chance between them; 0 = certain and right)"),
        ("target", f"pruning keeps the fewest nodes whose circuit has task loss \u2264 {target:g} nats; where the "
                   "full model cannot reach it the target is relaxed to the full model's loss plus a slack. A loss "
                   "marked \u2717 is above its target: that circuit did not reach it"),
        ("baseline", f"ablated nodes (everything outside the circuit) are replaced by "
                     f"{BASELINES.get(baseline, baseline)} ('{baseline}')"),
        ("node", "one channel kept by the pruning mask: a residual channel read by attention or an MLP, a q/k/v "
                 "channel of a head, an attention or MLP write channel, or an MLP neuron"),
        ("edge", "a nonzero weight between two kept nodes, plus the residual stream's identities and q\u00b7k pairs "
                 "(Gao et al. 2025 count circuit size in edges)"),
        ("dense / sparse edges", "how many times more edges the dense twin's circuit needs for the same task"),
    ]
    notes = list(report.notes) + [
        f"geometric mean of circuit edges over the pruned tasks: weight-sparse {report.geomean_sparse_edges:.0f}, "
        f"dense {report.geomean_dense_edges:.0f} (dense/sparse {report.geomean_ratio:.1f}\u00d7)"]
    footer = (f"weight-sparse model {report.sparse_model}; dense twin {report.dense_model}; pruning: "
              f"{cfg.get('steps', '?')} steps, baseline {baseline}, target {target:g} nats; {report.seconds:.0f} s")
    title = f"Task circuits, weight-sparse vs dense (target task loss {target:g} nats)"
    return render_quickstart_index(title, lead, definitions, rows, notes, footer)


def write_quickstart_report(report: QuickstartReport, cache_dir: Path, cfg: ViewConfig | None = None,
                            on_event: Event = lambda m: None, solve_threshold: float | None = None) -> Path:
    """All pages of a quickstart run at once (see `QuickstartPages`); returns the index."""
    checkpoints = {"sparse": report.sparse_model, "dense": report.dense_model}
    return QuickstartPages(Path(report.out_dir), cache_dir, checkpoints, cfg, on_event, solve_threshold).index(report)
