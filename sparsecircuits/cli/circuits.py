"""CLI commands for circuits: `quickstart`, `prune`, `compare`, `tasks` (rendering only; the work is
in `weight_sparse/quickstart.py`, `weight_sparse/prune.py` and `evaluate.py`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    at_least,
    cache_dir,
    check_input_file,
    check_output_path,
    check_tasks,
    collect,
    command_parser,
    train_model,
)
from sparsecircuits.cli.loading import precheck_task_file
from sparsecircuits.graph import compare_sizes, geometric_mean, load_circuit_dir
from sparsecircuits.weight_sparse.config import QUICKSTART_PRUNE, PruneConfig


def _quickstart_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("--out", type=Path, default=Path("quickstart-report"), help="report folder (default: quickstart-report)")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                   help="train both models from scratch (preset quickstart, ~1 h each on 2 CPU cores) instead of the "
                        "shipped ones (default: off)")
    p.add_argument("--tasks", nargs="*", default=None, help="tasks to run (default: all)")
    p.add_argument("--n-examples", type=at_least(2), default=256, help="examples per task (half train, half held out) (default: 256)")
    p.add_argument("--solve-threshold", type=float, default=0.9,
                   help="accuracy of the sparse model from which a task counts as solved and is pruned (default: 0.9)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits)")
    p.add_argument("--workers", type=at_least(0), default=0,
                   help="prunes run at once, each in its own process (default: 0 = one per CPU core; 1 = in-process)")
    add_config_flags(p, PruneConfig, "pruning", defaults=QUICKSTART_PRUNE)


def _prune_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a built-in task (see `sparsecircuits tasks`)")
    src.add_argument("--task-file", type=Path, help="a JSONL task: prompt, correct, incorrect[, counterfactual]")
    p.add_argument("--out", type=Path, required=True, help="circuit JSON to write")
    p.add_argument("--n-examples", type=at_least(1), default=256, help="examples of a built-in task (default: 256)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache for tokens and mean activations")
    add_config_flags(p, PruneConfig, "pruning")


def _compare_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("sparse", type=Path, help="folder of the sparse model's circuit JSONs")
    p.add_argument("dense", type=Path, help="folder of the dense model's circuit JSONs")


def _tasks_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = command_parser(sub, name, help)
    p.add_argument("checkpoint", type=Path, nargs="?", default=None, help="checkpoint to evaluate")
    p.add_argument("--n-examples", type=at_least(1), default=256, help="examples per task (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed the task examples are drawn with (default: 0)")
    p.add_argument("--exclude-seed", type=int, default=None,
                   help="leave out every example whose prompt or counterfactual occurs among the candidates of the "
                        "--exclude-n examples drawn at this seed (a validation set disjoint from the default evaluation)")
    p.add_argument("--exclude-n", type=int, default=256, help="size of the excluded set (with --exclude-seed; default: 256)")
    p.add_argument("--task-file", type=Path, default=None,
                   help="with a checkpoint or --model: evaluate your own JSONL task (prompt, correct, incorrect"
                        "[, counterfactual] per line) instead of the built-in ones")
    p.add_argument("--json", type=Path, default=None,
                   help="with a checkpoint or --model: also write each task's accuracy, loss, logit difference and "
                        "answer tokens to this JSON file")
    p.add_argument("--model", default=None,
                   help="evaluate a Hugging Face model instead: a local folder or a name in the HF cache "
                        "(downloaded only if online and huggingface_hub is installed)")


def cmd_quickstart(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.cli.console import StageBars, stage_progress
    from sparsecircuits.viz.report import QuickstartPages
    from sparsecircuits.weight_sparse.quickstart import ASSETS, run_quickstart

    check_tasks(args.tasks or [])  # a typo fails now, not after minutes of tokenizing (or an hour of --retrain)
    check_output_path(args.out, "dir")
    cfg = collect(args, PruneConfig, QUICKSTART_PRUNE)
    sparse, dense = ASSETS / "sparse", ASSETS / "dense"
    if args.retrain:
        sparse, dense = _retrain(args, console)
    console.print(Text.assemble(("sparsecircuits quickstart", "bold"), f": circuits in {sparse} vs its dense twin -> {args.out}"))
    pages = QuickstartPages(args.out, cache_dir(args), {"sparse": sparse, "dense": dense}, on_event=console.log,
                            solve_threshold=args.solve_threshold)
    with stage_progress(console) as bars:
        report = run_quickstart(args.out, cache_dir(args), sparse, dense, args.tasks, cfg, args.n_examples, args.solve_threshold,
                                on_event=console.log, workers=args.workers, progress=StageBars(bars),
                                on_circuit=pages.circuit)
    table = Table(title=f"Task circuits, weight-sparse vs dense (target task loss {cfg.target_loss:g} nats)",
                  caption=f"loss: task loss of the circuit on held-out examples (nats); * target not reached; "
                          f"\u2020 target relaxed to the full model's own loss + {cfg.target_slack:g} (the full model "
                          f"is above {cfg.target_loss:g})")
    for col in ("task", "answers", "acc sparse", "acc dense", "nodes", "edges", "loss", "dense nodes", "dense edges",
                "dense loss", "ratio"):
        table.add_column(col, justify="left" if col in ("task", "answers") else "right")
    for r in report.rows:
        sc, dc = r.sparse_circuit, r.dense_circuit
        cells = [r.task, f"{r.answers[0]!r} / {r.answers[1]!r}", f"{r.sparse.accuracy:.2f}", f"{r.dense.accuracy:.2f}"]
        if sc and dc:
            ratio = dc["n_edges"] / max(sc["n_edges"], 1)
            for c in (sc, dc):
                mark = "" if c["reached_target"] else "*"
                relaxed = "\u2020" if c["losses"]["full"] > cfg.target_loss else ""
                cells += [f"{c['n_nodes']}{mark}", f"{c['n_edges']}{mark}", f"{c['losses']['circuit']:.3f}{mark}{relaxed}"]
            cells.append(f"{ratio:.1f}x")
        else:
            cells += ["-", "-", "-", "-", "-", "-", "not solved"]
        table.add_row(*cells)
    console.print(table)
    console.print(f"geometric mean of circuit edges: sparse {report.geomean_sparse_edges:.0f}, dense "
                  f"{report.geomean_dense_edges:.0f} (dense/sparse {report.geomean_ratio:.1f}x); "
                  f"{report.seconds:.0f} s; report: {Path(args.out) / 'report.json'}")
    for note in report.notes:
        console.print(Text.assemble(("note", "yellow"), f": {note} (marked *)"))
    with console.status("index page"):
        index = pages.index(report)
    console.print(f"circuit pages: {index} (one self-contained HTML file per circuit; open in any browser)")
    return 0


def _retrain(args: argparse.Namespace, console: Console) -> tuple[Path, Path]:
    runs = Path(args.out) / "models"
    for dense in (False, True):
        name = "dense" if dense else "sparse"
        console.print(f"retraining the {name} model (preset quickstart)")
        targs = argparse.Namespace(preset="quickstart", out=runs / name, resume=(runs / name).exists(),
                                   cache_dir=args.cache_dir, **{"TrainConfig.dense": dense})
        train_model(targs, console)
    return runs / "sparse", runs / "dense"


def cmd_prune(args: argparse.Namespace, console: Console) -> int:
    check_tasks([args.task])
    check_output_path(args.out, "file")  # before the prune, not after it
    check_input_file(args.task_file, "--task-file")
    precheck_task_file(args.task_file, args.checkpoint)  # before torch: a bad file fails in milliseconds
    from sparsecircuits.ablation import checkpoint_means
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.tasks.base import load_jsonl_task, load_task
    from sparsecircuits.weight_sparse.prune import PruneConfig, prune_task

    cfg = collect(args, PruneConfig, {})
    ck = load_checkpoint(args.checkpoint)
    if ck.tokenizer_path is None:
        raise ValueError(f"{ck.path} has no tokenizer.json; tasks need the model's tokenizer")
    tok = load_tokenizer(ck.tokenizer_path)
    n_ctx = ck.model.cfg.n_ctx
    data = load_jsonl_task(args.task_file, tok, n_ctx) if args.task_file else load_task(args.task, tok, n_ctx, args.n_examples)
    means = checkpoint_means(ck.model, ck.meta, tok, cache_dir(args)) if cfg.baseline == "mean" else None
    t0 = time.perf_counter()
    with console.status(f"pruning {data.name}") as status:
        result = prune_task(ck.model, data, cfg, means,
                            on_step=lambda s, n, loss, k: status.update(f"pruning {data.name}: step {s}/{n}, loss {loss:.3f}, {k} nodes on"))
    result.circuit.metadata["model"] = str(ck.path)
    result.circuit.save(args.out)
    md = result.circuit.metadata
    console.print(f"{data.name}: {md['n_nodes']} nodes, {md['n_edges']} edges; task loss circuit "
                  f"{md['losses']['circuit']:.3f} / full {md['losses']['full']:.3f} / empty {md['losses']['empty']:.3f}"
                  f"{'' if md['reached_target'] else ' (target not reached)'}; {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    rows = compare_sizes(load_circuit_dir(args.sparse), load_circuit_dir(args.dense))
    if not rows:
        raise ValueError(f"no task has a circuit in both {args.sparse} and {args.dense}")
    table = Table(title="circuit size: weight-sparse vs dense")
    for col in ("task", "sparse nodes", "sparse edges", "dense nodes", "dense edges", "dense/sparse edges"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in rows:
        table.add_row(r.task, str(r.sparse_nodes), str(r.sparse_edges), str(r.dense_nodes), str(r.dense_edges),
                      f"{r.edge_ratio:.1f}x")
    gs = geometric_mean([float(r.sparse_edges) for r in rows])
    gd = geometric_mean([float(r.dense_edges) for r in rows])
    table.add_row("geometric mean", "", f"{gs:.0f}", "", f"{gd:.0f}", f"{gd / max(gs, 1e-9):.1f}x")
    console.print(table)
    return 0


def cmd_tasks(args: argparse.Namespace, console: Console) -> int:
    source = args.checkpoint if args.checkpoint is not None else getattr(args, "model", None)
    if args.checkpoint is not None and getattr(args, "model", None):
        raise ValueError("give either a checkpoint or --model, not both")
    out_json = getattr(args, "json", None)
    task_file = getattr(args, "task_file", None)
    if source is None and (out_json is not None or task_file is not None):
        raise ValueError(f"{'--json' if out_json is not None else '--task-file'} needs a checkpoint or --model to evaluate")
    check_output_path(out_json, "file", "--json")
    check_input_file(task_file, "--task-file")
    precheck_task_file(task_file, source)  # before torch: a bad file fails in milliseconds
    import sparsecircuits.tasks  # noqa: F401  (torch; registers the built-in tasks)
    from sparsecircuits.tasks.base import TASKS, TaskError, load_task, prompt_texts

    table = Table(title="tasks")
    table.add_column("task")
    table.add_column("what is predicted and why it is determined")
    model = tok = None
    results: dict[str, dict[str, object]] = {}
    if source is not None:
        from sparsecircuits.cli.loading import load_model

        model, tok, _ = load_model(source)  # a checkpoint without tokenizer.json fails here, clearly
        for col in ("answers", "accuracy", "loss"):
            table.add_column(col, justify="right")
    if task_file is not None:
        from sparsecircuits.tasks.base import load_jsonl_task

        data = load_jsonl_task(task_file, tok, model.cfg.n_ctx)  # errors name the file and line
        results[data.name] = _evaluate_row(table, model, data, f"your task ({task_file})")
    for name, spec in sorted(TASKS.items()) if task_file is None else ():
        if model is None:
            table.add_row(name, spec.summary)
            continue
        try:
            exclude = set() if args.exclude_seed is None else prompt_texts(name, args.exclude_n, args.exclude_seed)
            data = load_task(name, tok, model.cfg.n_ctx, args.n_examples, args.seed, exclude)
            results[name] = _evaluate_row(table, model, data, spec.summary)
        except TaskError as e:
            table.add_row(name, spec.summary, "-", "-", str(e)[:40])
            results[name] = {"error": str(e)}
    console.print(table)
    if out_json is not None:
        import json

        from sparsecircuits.atomic import atomic_write_text

        record = {"model": str(source), "n_examples": args.n_examples, "seed": args.seed,
                  "excluded": None if args.exclude_seed is None else {"seed": args.exclude_seed, "n": args.exclude_n},
                  "task_file": None if task_file is None else str(task_file), "tasks": results}
        atomic_write_text(out_json, json.dumps(record, indent=1))
        console.print(f"wrote {out_json}")
    return 0


def _evaluate_row(table: Table, model, data, summary: str) -> dict[str, object]:  # noqa: ANN001
    """Evaluate the full model on a task, add its table row, return its JSON record."""
    from sparsecircuits.evaluate import evaluate_task

    ev = evaluate_task(model, data)
    table.add_row(data.name, summary, f"{data.answer_strings[0]!r} / {data.answer_strings[1]!r}",
                  f"{ev.accuracy:.2f}", f"{ev.loss:.3f}")
    return {"accuracy": ev.accuracy, "loss": ev.loss, "logit_diff": ev.logit_diff, "n_examples": len(data),
            "answers": list(data.answer_strings)}


PARSERS: dict[str, ParserBuilder] = {"quickstart": _quickstart_parser, "prune": _prune_parser,
                                     "compare": _compare_parser, "tasks": _tasks_parser}
COMMANDS = {"quickstart": cmd_quickstart, "prune": cmd_prune, "compare": cmd_compare, "tasks": cmd_tasks}
