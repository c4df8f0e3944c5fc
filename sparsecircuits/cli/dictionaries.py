"""CLI commands for sparse dictionaries: `train-dict`, `eval-dict`, `features`, `convert-dict`, `dicts list`.

Rendering only; the work is in `sparsecircuits.dictionaries`. `--arch` choices are the registry's
names (`dictionaries/config.py: ARCHITECTURE_NAMES`, kept equal to `ARCHITECTURES` by a test) and the
training flags come from `DictTrainConfig`. A sweep is several values
of `--width` and/or `--k`: every combination is trained from one activation stream.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    at_least,
    cache_dir,
    check_hooks,
    check_input_file,
    check_output_path,
    collect,
    command_parser,
)
from sparsecircuits.dictionaries.config import ARCHITECTURE_NAMES, DictTrainConfig


def _train_dict_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    t = command_parser(sub, name, help)
    t.add_argument("--model", type=Path, required=True, help="checkpoint folder or run folder")
    t.add_argument("--hook", required=True, help="hook the dictionary reads, e.g. blocks.1.hook_resid_post")
    t.add_argument("--out-hook", default="", help="hook it predicts (a transcoder), e.g. blocks.1.hook_mlp_out; "
                   "default: --hook (an SAE)")
    t.add_argument("--arch", choices=ARCHITECTURE_NAMES, default="topk", help="architecture (default: topk)")
    t.add_argument("--width", type=at_least(1), nargs="+", default=[1024], help="features; several = a sweep (default: 1024)")
    t.add_argument("--k", type=at_least(1), nargs="+", default=[32], help="active features per token for topk/batchtopk; "
                   "several = a sweep (default: 32)")
    t.add_argument("--skip", action=argparse.BooleanOptionalAction, default=False,
                   help="affine skip connection (transcoders; default: off)")
    t.add_argument("--out", type=Path, required=True, help="output folder (one SAELens folder per dictionary)")
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the checkpoint in --out (default: off)")
    t.add_argument("--store", type=Path, default=None, help="activation store folder: written once, reused after")
    t.add_argument("--store-tokens", type=int, default=0, help="tokens to store (default: the training tokens)")
    t.add_argument("--cache-dir", type=Path, default=None, help="token cache (default: $SPARSECIRCUITS_CACHE)")
    add_config_flags(t, DictTrainConfig, "dictionary training")


def _eval_dict_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    e = command_parser(sub, name, help)
    e.add_argument("dictionary", type=Path, nargs="+", help="dictionary folders (SAELens layout)")
    e.add_argument("--model", type=Path, required=True, help="checkpoint folder or run folder")
    e.add_argument("--batches", type=at_least(1), default=8, help="validation batches (default: 8)")
    e.add_argument("--batch-size", type=at_least(1), default=16, help="sequences per batch (default: 16)")
    e.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    e.add_argument("--cache-dir", type=Path, default=None, help="token cache")


def _features_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    f = command_parser(sub, name, help)
    f.add_argument("--model", type=Path, required=True, help="checkpoint folder or run folder")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--dictionary", type=Path, help="dictionary folder, or a transcoder set (as `graph --transcoders`) "
                     "with --layer")
    src.add_argument("--neurons", help="hook whose channels are the features, e.g. blocks.0.mlp.hook_post")
    f.add_argument("--layer", type=int, default=None, help="the layer to show when --dictionary is a transcoder set; "
                   "its lower layers are then the default --upstream")
    f.add_argument("--out", type=Path, default=None, help="folder for features.safetensors + features.json")
    f.add_argument("--html", type=Path, default=None,
                   help="also write the feature dashboard, one offline HTML page, e.g. dashboards/L1.html "
                   "(open it with #f=123 for feature 123)")
    f.add_argument("--batches", type=at_least(1), default=16, help="batches of validation windows (default: 16)")
    f.add_argument("--batch-size", type=at_least(1), default=16, help="sequences per batch (default: 16)")
    f.add_argument("--top", type=at_least(1), default=16, help="examples per feature (default: 16)")
    f.add_argument("--context", type=at_least(1), default=16, help="tokens of context per example (default: 16)")
    f.add_argument("--top-tokens", type=int, default=10,
                   help="promoted and suppressed output tokens per feature on the dashboard (default: 10)")
    f.add_argument("--upstream", type=Path, default=None,
                   help="transcoders of earlier layers (a folder of per-layer transcoder folders or a circuit-tracer "
                   "set, as `graph --transcoders`): the dashboard of a transcoder lists each feature's top "
                   "input-invariant upstream features (default: none)")
    f.add_argument("--upstream-top", type=int, default=10, help="upstream features per feature (default: 10)")
    f.add_argument("--cache-dir", type=Path, default=None, help="token cache")


def _convert_dict_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    c = command_parser(sub, name, help)
    c.add_argument("pickle", type=Path, help="the .pt pickle file: only convert files you trust")
    c.add_argument("--out", type=Path, required=True, help="output dictionary folder")
    c.add_argument("--hook", default="", help="input hook, if the file does not record it")
    c.add_argument("--out-hook", default="", help="output hook of a transcoder, if the file does not record it")


def _dicts_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    d = command_parser(sub, name, help)
    actions = d.add_subparsers(dest="dicts_command", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="every dictionary under PATH, in any published layout: layout, hook, "
                            "width, architecture, layer", description="List the dictionaries found under PATH "
                            "(read from configs and tensor headers; nothing is unpickled except .pt files through "
                            "torch.load(weights_only=True)).")
    ls.add_argument("path", help="a folder or file, or a Hugging Face repo id [+ folder] found in the HF cache")
    ls.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                    help="print JSON instead of a table (default: off)")
    ls.add_argument("--max-depth", type=at_least(0), default=8, help="folder levels searched below PATH (default: 8)")


def _windows(model, data, batches: int, batch_size: int):  # noqa: ANN001, ANN202
    from sparsecircuits.data.batches import val_windows

    return val_windows(data.val, batches, batch_size, model.cfg.n_ctx)


def cmd_train_dict(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits import distributed
    from sparsecircuits.ablation import weights_fingerprint
    from sparsecircuits.dictionaries import DictConfig, train_dictionaries
    from sparsecircuits.dictionaries.activations import (
        ModelActivations,
        checkpoint_tokens,
        hook_widths,
        store_activations,
        store_key,
    )
    from sparsecircuits.model.checkpoint import load_checkpoint

    cfg = collect(args, DictTrainConfig, {})
    check_output_path(args.out, "dir")
    check_output_path(args.store, "dir", "--store")
    ck = load_checkpoint(args.model)
    model = ck.model
    check_hooks([args.hook, args.out_hook], model)
    out_hook = args.out_hook or args.hook
    widths = hook_widths(model, [args.hook, out_hook])
    ks = args.k if args.arch in ("topk", "batchtopk") else args.k[:1]
    cfgs = [DictConfig(arch=args.arch, hook=args.hook, out_hook=out_hook, d_in=widths[args.hook],
                       d_out=widths[out_hook], width=w, k=k, skip=args.skip)
            for w, k in itertools.product(args.width, ks)]
    data = checkpoint_tokens(ck, cache_dir(args))
    store = None
    ctx = distributed.init_from_env(str(next(model.parameters()).device))  # no-op unless under torchrun
    if args.store is not None:
        hooks = sorted({args.hook, out_hook})
        seqs = max(1, cfg.buffer_tokens // model.cfg.n_ctx)
        src = ModelActivations(model, data.train, hooks, seqs, cfg.seed, cfg.model_batch)
        n_chunks = max(1, -(-(args.store_tokens or cfg.tokens) // src.chunk_tokens))
        key = store_key(weights_fingerprint(model), data.fingerprint, hooks, seqs, cfg.seed, n_chunks)
        if ctx.is_main:  # rank 0 writes the store; the others then find it complete and reuse it
            with console.status(f"storing activations in {args.store}"):
                store_activations(src, args.store, n_chunks, key)
        ctx.barrier()
        store = store_activations(src, args.store, n_chunks, key).folder
    names = ", ".join(c.name for c in cfgs)
    console.print(Text.assemble((f"Training {len(cfgs)} dictionar{'y' if len(cfgs) == 1 else 'ies'}", "bold"), f" ({names}) on "
                  f"{args.hook}{' -> ' + out_hook if out_hook != args.hook else ''}: {cfg.steps} steps of "
                  f"{cfg.batch_size} tokens -> {args.out}"))
    progress = Progress(TextColumn("train", style="bold", markup=False), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[stats]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    meta = {"model": str(ck.path), "model_name": Path(ck.path).name, "context_size": model.cfg.n_ctx}
    with progress:
        task = progress.add_task("train", total=cfg.steps, stats="")

        def on_step(r) -> None:  # noqa: ANN001
            s = r.dicts[0]
            more = f" (+{len(r.dicts) - 1})" if len(r.dicts) > 1 else ""
            stats = (f"{s.name}{more}: FVU {s.fvu:.3f}  L0 {s.l0:.1f}  dead {s.dead_frac:.1%}  "
                     f"{r.tokens_per_s:,.0f} tok/s")
            progress.update(task, completed=r.step, stats=stats)

        result = train_dictionaries(model, data.train, cfgs, cfg, args.out, resume=args.resume, store=store,
                                    meta=meta, on_step=on_step)
    table = Table(title=f"dictionaries after {result.step} steps (training batch)")
    for col in ("dictionary", "FVU", "L0", "dead", "folder"):
        table.add_column(col, justify="left" if col in ("dictionary", "folder") else "right")
    for s in result.stats:
        table.add_row(s.name, f"{s.fvu:.3f}", f"{s.l0:.1f}", f"{s.dead_frac:.1%}", str(result.paths.get(s.name, "")))
    console.print(table)
    return 0


def cmd_eval_dict(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.dictionaries import evaluate_dictionary, load_dictionary
    from sparsecircuits.dictionaries.activations import checkpoint_tokens
    from sparsecircuits.model.checkpoint import load_checkpoint

    check_output_path(args.json, "file", "--json")
    for folder in args.dictionary:
        check_input_file(folder, "dictionary", "dir")
    dicts = {folder: load_dictionary(folder) for folder in args.dictionary}  # a broken one fails before tokenizing
    ck = load_checkpoint(args.model)
    windows = _windows(ck.model, checkpoint_tokens(ck, cache_dir(args)), args.batches, args.batch_size)
    table = Table(title=f"dictionaries spliced into {ck.path}")
    cols = ("dictionary", "L0", "FVU", "CE clean", "CE spliced", "KL", "recovered (zero)", "recovered (mean)",
            "dead", "dense")
    for col in cols:
        table.add_column(col, justify="left" if col == "dictionary" else "right")
    results = {}
    t0 = time.perf_counter()
    for folder, d in dicts.items():
        with console.status(f"evaluating {folder}"):
            ev = evaluate_dictionary(ck.model, d, windows)
        results[str(folder)] = ev.to_dict()
        table.add_row(str(folder), f"{ev.l0:.1f}", f"{ev.fvu:.3f}", f"{ev.ce_clean:.3f}", f"{ev.ce_spliced:.3f}",
                      f"{ev.kl_spliced:.3f}", f"{ev.recovered_zero:.1%}", f"{ev.recovered_mean:.1%}",
                      f"{ev.dead_frac:.1%}", f"{ev.dense_frac:.1%}")
    console.print(table)
    console.print(f"{sum(len(w) for w in windows) * ck.model.cfg.n_ctx:,} tokens, {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        from sparsecircuits.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0


def cmd_features(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.dictionaries import (
        dictionary_source,
        feature_examples,
        neuron_source,
        save_feature_examples,
    )
    from sparsecircuits.dictionaries.activations import checkpoint_tokens
    from sparsecircuits.model.checkpoint import load_checkpoint

    if args.out is None and args.html is None:
        raise ValueError("nothing to write: give --out (the tables) and/or --html (the dashboard)")
    if args.upstream is not None and (args.html is None or args.dictionary is None):
        raise ValueError("--upstream needs --html and a --dictionary (a transcoder)")
    check_output_path(args.out, "dir")
    check_output_path(args.html, "file", "--html")
    check_input_file(args.dictionary, "--dictionary", "any")
    ck = load_checkpoint(args.model)
    check_hooks([args.neurons], ck.model)  # a misspelt hook fails before the corpus is tokenized
    d, transcoder_set = _features_dictionary(args)
    if d is not None:  # feature_examples encodes float32 activations on the model's device
        import torch

        d = d.to(ck.model.W_E.device, torch.float32)
    windows = [w[:, :-1] for w in _windows(ck.model, checkpoint_tokens(ck, cache_dir(args)), args.batches, args.batch_size)]
    source = dictionary_source(d) if d is not None else neuron_source(ck.model, args.neurons)
    with console.status(f"top contexts of {source.width} features"):
        ex = feature_examples(ck.model, source, windows, k=args.top, context=args.context)
    if args.out is not None:
        save_feature_examples(ex, args.out)
    alive = int((ex.density > 0).sum())
    console.print(f"{source.width} features ({alive} fire) over {ex.n_tokens:,} tokens"
                  f"{' -> ' + str(args.out) if args.out is not None else ''}", markup=False)
    if args.html is not None:
        with console.status("dashboard"):
            path, notes = _write_dashboard(args, ck, d, ex, transcoder_set)
        for note in notes:
            console.print(f"note: {note}", style="yellow", markup=False)
        console.print(f"-> {path} ({path.stat().st_size / 1e6:.1f} MB; open {path.name}#f=0 for feature 0)", markup=False)
    return 0


def _features_dictionary(args: argparse.Namespace):  # noqa: ANN202
    """(the dictionary of `--dictionary` [`--layer`] or None for --neurons, the transcoder set or None)."""
    from sparsecircuits.dictionaries import load_dictionary
    from sparsecircuits.dictionaries.formats import CFG

    if args.dictionary is None:
        return None, None
    if (Path(args.dictionary) / CFG).exists():
        if args.layer is not None:
            raise ValueError(f"--layer is for transcoder sets; {args.dictionary} is one dictionary")
        return load_dictionary(args.dictionary), None
    tcs = _transcoder_set(args.dictionary)
    if args.layer is None or args.layer not in tcs:
        raise ValueError(f"{args.dictionary} is a transcoder set: pick one with --layer (layers: {sorted(tcs)})")
    return tcs[args.layer], tcs


def _transcoder_set(path: Path) -> dict:
    """Per-layer transcoders of a circuit-tracer set or of a folder of dictionary folders (what `graph
    --transcoders` takes; command modules may not import `cli.graph`, whose `load_transcoders` this
    composes the same way from the shared loaders)."""
    from sparsecircuits.cli.loading import load_dictionaries
    from sparsecircuits.dictionaries import load_transcoder_set
    from sparsecircuits.viz.dashboard_data import dictionary_layer

    path = Path(path).parent if Path(path).suffix in (".yaml", ".yml") else Path(path)
    if (path / "config.yaml").exists():
        return load_transcoder_set(path)
    out: dict = {}
    for d in load_dictionaries([path]):
        if not d.cfg.is_transcoder or dictionary_layer(d) in out:
            raise ValueError(f"{path} must hold one transcoder per layer; {d.cfg.name} on {d.cfg.hook!r} is not "
                             "a transcoder or repeats a layer")
        out[dictionary_layer(d)] = d
    return out


def _write_dashboard(args: argparse.Namespace, ck, d, ex, transcoder_set):  # noqa: ANN001, ANN202
    """Wire the dashboard's numbers (logit effects, upstream features) and write the page."""
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.dictionaries.feature_effects import logit_effects
    from sparsecircuits.viz.dashboard import dashboard_links, write_dashboard
    from sparsecircuits.viz.dashboard_data import dashboard_data, upstream_features

    model = ck.model
    if ck.tokenizer_path is None:
        raise ValueError(f"{ck.path} has no tokenizer.json; the dashboard shows token strings")
    tok = load_tokenizer(ck.tokenizer_path)
    out_hook = d.cfg.out_hook if d is not None else args.neurons
    effects = logit_effects(model, out_hook, d.W_dec.detach() if d is not None else None, args.top_tokens)
    name = "neurons" if d is None else Path(args.dictionary).name + (f" L{args.layer}" if transcoder_set else "")
    info = {"title": f"{name} \u00b7 {out_hook}", "hook": ex.hook, "out_hook": out_hook, "width": ex.top_acts.shape[0],
            "model": str(args.model), "name": d.cfg.name if d is not None else "neurons",
            "dictionary": str(Path(args.dictionary).resolve()) if d is not None and not transcoder_set else None,
            "logit_note": None if effects is not None else
            f"{out_hook} has no direct path to the logits (attention input, q/k/v or MLP input)"}
    notes = []
    if effects is not None:
        what = ("its W_dec row" if d is not None else
                "a neuron's W_out column" if out_hook.endswith("hook_post") else "a unit vector")
        notes.append(f"logit effect: the feature's output direction ({what}) carried through the final norm as a linear "
                     "map (LayerNorm centres it; both norms multiply by the gain; the per-token scale is held at 1) "
                     "and W_U; biases, the bigram table and a softcap are left out")
    upstream, links = None, {}
    ups = transcoder_set
    if args.upstream is not None:
        ups = _transcoder_set(args.upstream)
    if ups is not None and d is not None:
        if not d.cfg.is_transcoder:
            raise ValueError(f"--upstream: {args.dictionary} is not a transcoder (hook {d.cfg.hook!r})")
        upstream = upstream_features(ups, d, args.upstream_top)
    if upstream is not None and upstream.layer.shape[1] == 0:  # the lowest layer: nothing upstream
        upstream = None
    if upstream is not None and ups is not None:
        below = sorted(set(upstream.layer.flatten().tolist()) - {-1})
        idents = [(str(L), {"hook": ups[L].cfg.hook, "out_hook": ups[L].cfg.out_hook, "width": ups[L].cfg.width})
                  for L in below]
        folder = Path(args.html).parent
        found = dashboard_links(folder, idents, folder)[0] if folder.is_dir() else {}
        links = {int(L): href for L, href in found.items()}
        notes.append("upstream features: d_i \u00b7 e_f, the input-invariant connection of Dunefsky et al. 2024 "
                     "(transcoder_circuits.analysis.input_invariant), over the transcoders of lower layers; layers "
                     f"linked to their dashboards: {sorted(links) or 'none found next to this page'}")
    data = dashboard_data(ex, lambda t: tok.decode([t], skip_special_tokens=False), info, effects, upstream, links,
                          notes)
    return write_dashboard(args.html, data), [n for n in notes if n.startswith("upstream")]


def cmd_convert_dict(args: argparse.Namespace, console: Console) -> int:
    import warnings

    from sparsecircuits.dictionaries import convert_pickle
    from sparsecircuits.dictionaries.formats import CFG

    check_input_file(args.pickle, "pickle")
    check_output_path(args.out, "dir", replaces=(CFG,))  # the folder is replaced whole
    console.print(Text.assemble(("warning", "yellow"), f": {args.pickle} is a pickle; it is read with "
                                "torch.load(weights_only=True) (no code from it runs), but only convert files from a "
                                "source you trust"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = convert_pickle(args.pickle, args.out, args.hook, args.out_hook)
    console.print(f"converted {args.pickle} -> {path}")
    return 0


def cmd_dicts(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.dictionaries.layouts import find_dictionaries
    from sparsecircuits.dictionaries.layouts.hub import resolve

    root = str(resolve(args.path))
    rows = find_dictionaries(root, args.max_depth)
    if args.json:
        console.print(json.dumps([r.to_dict() for r in rows], indent=1), markup=False, highlight=False, soft_wrap=True)
        return 0
    if not rows:
        console.print(f"no dictionaries found under {args.path}", markup=False)
        return 0
    table = Table(title=f"dictionaries under {args.path}" + (f" ({root})" if root != str(args.path) else ""))
    for col in ("path", "layout", "hook", "width", "d_in", "architecture", "layer", "n"):
        table.add_column(col, justify="right" if col in ("width", "d_in", "layer", "n") else "left")
    for r in rows:
        path = (r.path[len(root):].lstrip("/") or ".") if r.path.startswith(root) else r.path
        hook = r.hook + (f" -> {r.out_hook}" if r.out_hook and r.out_hook != r.hook else "")
        if r.error:
            table.add_row(Text(path), Text(r.layout), Text(r.error, style="red"), "", "", "", "", "")
            continue
        table.add_row(Text(path), Text(r.layout), Text(hook), str(r.width or ""), str(r.d_in or ""), Text(r.arch),
                      "" if r.layer is None else str(r.layer), str(r.count))
    console.print(table)
    return 0


PARSERS: dict[str, ParserBuilder] = {"train-dict": _train_dict_parser, "eval-dict": _eval_dict_parser,
                                     "features": _features_parser, "convert-dict": _convert_dict_parser,
                                     "dicts": _dicts_parser}
COMMANDS = {"train-dict": cmd_train_dict, "eval-dict": cmd_eval_dict, "features": cmd_features,
            "convert-dict": cmd_convert_dict, "dicts": cmd_dicts}
