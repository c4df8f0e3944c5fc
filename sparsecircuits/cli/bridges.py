"""CLI commands for bridges (Gao et al. 2025): `train-bridges` and `bridge-intervene`.

Rendering and file choices only; the work is in `weight_sparse/bridges.py`, `weight_sparse/bridges_train.py` and
`weight_sparse/bridges_intervene.py`. Training flags come from `TrainConfig` and `BridgeConfig`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from sparsecircuits.cli.common import (
    ParserBuilder,
    add_config_flags,
    at_least,
    cache_dir,
    check_names,
    check_output_path,
    check_tasks,
    collect,
    command_parser,
)
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.weight_sparse.config import MODES, BridgeConfig, TrainConfig
from sparsecircuits.weight_sparse.presets import PRESETS, get_preset

# Defaults when continuing an already weight-sparse checkpoint: it is at its target L0 from step 0,
# and a smaller peak lr than pretraining keeps what it learned while the bridges fit.
FINETUNE_DEFAULTS: dict[str, Any] = dict(steps=500, batch_size=16, anneal_start=0.0, anneal_end=0.0,
                                         val_every=100, ckpt_every=100, val_batches=2)


def _train_bridges_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    # conflict_handler="resolve": our --dense (the dense checkpoint) takes the flag from TrainConfig.dense,
    # whose --no-dense stays (the default: the sparse model is weight-sparse).
    t = command_parser(sub, name, help, conflict_handler="resolve")
    add_config_flags(t, TrainConfig, "training")
    add_config_flags(t, BridgeConfig, "bridges")
    t.add_argument("--dense", type=Path, required=True, help="the dense checkpoint (frozen)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--sparse-init", type=Path, help="start the sparse model from this checkpoint (same vocab, "
                     "context and layers); training defaults then come from its meta.json, with "
                     + ", ".join(f"{k}={v}" for k, v in FINETUNE_DEFAULTS.items()) + " and lr / 10")
    src.add_argument("--preset", choices=list(PRESETS), help="train the sparse model from scratch with a preset's shapes")
    t.add_argument("--out", type=Path, required=True, help="bridge run folder (checkpoints/step-*/, metrics.jsonl)")
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the newest checkpoint in --out (default: off)")
    t.add_argument("--cache-dir", type=Path, default=None, help="token cache (default: $SPARSECIRCUITS_CACHE)")


def _bridge_intervene_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    i = command_parser(sub, name, help)
    i.add_argument("--bridges", type=Path, required=True, help="bridge checkpoint or bridge run folder")
    i.add_argument("--dense", type=Path, default=None, help="dense checkpoint (default: the one in bridges.json)")
    i.add_argument("--task", required=True, help="a built-in task (see `sparsecircuits tasks`)")
    i.add_argument("--site", required=True, help="bridge site, e.g. blocks.1.hook_resid_mid")
    ch = i.add_mutually_exclusive_group(required=True)
    ch.add_argument("--channels", type=int, nargs="+", help="sparse residual channels to edit")
    ch.add_argument("--circuit", type=Path, help="circuit JSON of the sparse model: edit its residual channels at --site")
    ch.add_argument("--top-channels", type=int, help="edit the N channels with the largest direct effect in the sparse "
                    "model, chosen on the selection half of the prompts")
    i.add_argument("--mode", choices=MODES, default="ablate",
                   help="ablate (set to --baseline) or steer (add --alpha) (default: ablate)")
    i.add_argument("--alpha", type=float, default=0.0, help="steer: value added to each channel (default: 0)")
    i.add_argument("--baseline", choices=["mean", "zero"], default="mean",
                   help="ablate: the sparse model's mean activation over its corpus, or zero (default: mean)")
    i.add_argument("--n-examples", type=at_least(2), default=256, help="task prompts; half select, half held out (default: 256)")
    i.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the split (default: 0)")
    i.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    i.add_argument("--cache-dir", type=Path, default=None, help="token / mean-activation cache")


def _setup(args: argparse.Namespace, console: Console):  # noqa: ANN202
    from sparsecircuits.dictionaries.activations import checkpoint_tokens
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.model.transformer import Transformer
    from sparsecircuits.weight_sparse.bridges import check_compatible
    from sparsecircuits.weight_sparse.bridges_train import BridgeSetup

    dense_ck = load_checkpoint(args.dense)
    if args.sparse_init is not None:
        sparse_ck = load_checkpoint(args.sparse_init)
        sparse, init = sparse_ck.model, str(sparse_ck.path.resolve())
        saved = sparse_ck.meta.get("spec", {}).get("train", {})
        base = {**saved, **FINETUNE_DEFAULTS, "lr": saved.get("lr", TrainConfig().lr) / 10}
        if sparse_ck.tokenizer_path and dense_ck.tokenizer_path and \
                sparse_ck.tokenizer_path.read_text() != dense_ck.tokenizer_path.read_text():
            raise ValueError(f"{str(args.sparse_init)!r} and {str(args.dense)!r} use different tokenizers")
    else:
        preset = get_preset(args.preset)
        cfg = ModelConfig(**{**preset.model, "d_vocab": dense_ck.model.cfg.d_vocab})
        check_compatible(dense_ck.model.cfg, cfg)
        sparse, init, base = Transformer(cfg), f"preset:{args.preset}", dict(preset.train)
    check_compatible(dense_ck.model.cfg, sparse.cfg)
    train = collect(args, TrainConfig, base)
    progress = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), TimeElapsedColumn(), console=console)
    tasks: dict[str, Any] = {}

    def on_data(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=max(total, 1))
        progress.update(tasks[stage], completed=done, total=max(total, 1))

    with progress:
        data = checkpoint_tokens(dense_ck, cache_dir(args), on_data)
    setup = BridgeSetup(dense_ck.model, str(dense_ck.path.resolve()), sparse, init, data.train, data.val,
                        data.tokenizer.to_str(), dense_ck.meta.get("spec", {}).get("data"))
    return setup, train


def cmd_train_bridges(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.weight_sparse.bridges_train import BridgeStepReport, train_bridges

    check_output_path(args.out, "dir")
    setup, train = _setup(args, console)
    bcfg = collect(args, BridgeConfig, {})
    console.print(Text.assemble(("Training bridges", "bold"), f" {setup.dense_path} <-> sparse ({setup.sparse_init}): "
                                f"{2 * setup.sparse.cfg.n_layers + 1} sites, {train.steps} steps of {train.batch_size} "
                                f"sequences, lr {train.lr:g} (bridges {bcfg.bridge_lr:g}) -> {args.out}"))
    progress = Progress(TextColumn("train-bridges", style="bold", markup=False), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[stats]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    bar: list[Any] = []

    def on_step(r: BridgeStepReport) -> None:
        if not bar:
            bar.append(progress.add_task("train", total=r.total, completed=r.step - 1, stats=""))
        x = r.losses
        stats = (f"lm {x['lm']:.3f} nmse {x['nmse_dec']:.3f}/{x['nmse_enc']:.3f} "
                 f"kl {x['kl_d2s']:.3f}/{x['kl_s2d']:.3f}  {r.tokens_per_s:,.0f} tok/s")
        progress.update(bar[0], completed=r.step, stats=stats)
        if r.val is not None and not console.is_terminal:
            console.print(f"step {r.step}/{r.total}  val " + " ".join(f"{k} {v:.4f}" for k, v in r.val.items()))

    t0 = time.perf_counter()
    with progress:
        result = train_bridges(setup, train, bcfg, args.out, resume=args.resume, on_step=on_step)
    table = Table(title=f"bridges trained in {time.perf_counter() - t0:.0f} s (held-out windows, mean over sites)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in (result.val or {}).get("mean", {}).items():
        table.add_row(k, f"{v:.4f}")
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)
    return 0


def _intervention(args: argparse.Namespace, lb: Any, select: Any, console: Console):  # noqa: ANN202
    import torch

    from sparsecircuits.ablation import checkpoint_means
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.graph import Circuit
    from sparsecircuits.weight_sparse.bridges_intervene import Intervention, channel_effects, circuit_channels

    check_names("bridge site", [args.site], lb.bridges.sites)  # a clear error before any slow work
    baseline = None
    if args.mode == "ablate" and args.baseline == "mean":
        tok = load_tokenizer(lb.sparse_checkpoint.tokenizer_path)
        with console.status("mean activations of the sparse model over its corpus"):
            baseline = checkpoint_means(lb.sparse, lb.sparse_checkpoint.meta, tok, cache_dir(args))[args.site]
    if args.channels:
        channels = args.channels
    elif args.circuit:
        channels = circuit_channels(Circuit.load(args.circuit), args.site, lb.sparse.cfg.n_layers)
        if not channels:
            raise ValueError(f"circuit {str(args.circuit)!r} has no residual-channel nodes at {args.site!r}")
    else:
        if not 1 <= args.top_channels <= lb.sparse.cfg.d_model:
            raise ValueError(f"--top-channels must be in [1, {lb.sparse.cfg.d_model}], got {args.top_channels}")
        with console.status(f"direct effect of each of {lb.sparse.cfg.d_model} channels (selection prompts)"):
            eff = channel_effects(lb.sparse, select, args.site, args.mode, args.alpha, baseline)
        channels = torch.argsort(eff.abs(), descending=True)[: args.top_channels].tolist()
    return Intervention(args.site, tuple(channels), args.mode, args.alpha, baseline)


def cmd_bridge_intervene(args: argparse.Namespace, console: Console) -> int:
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.tasks.base import load_task
    from sparsecircuits.weight_sparse.bridges_intervene import bridged_intervention
    from sparsecircuits.weight_sparse.bridges_train import load_bridges
    from sparsecircuits.weight_sparse.prune import split_indices

    check_tasks([args.task])
    check_output_path(args.json, "file", "--json")
    lb = load_bridges(args.bridges, args.dense)
    if lb.sparse_checkpoint.tokenizer_path is None:
        raise ValueError(f"{str(lb.path)!r} has no tokenizer.json; tasks need the tokenizer")
    data = load_task(args.task, load_tokenizer(lb.sparse_checkpoint.tokenizer_path), lb.sparse.cfg.n_ctx,
                     args.n_examples, args.seed)
    select_idx, held_idx = split_indices(len(data), args.seed)
    iv = _intervention(args, lb, data.subset(select_idx), console)
    iv.check(lb.bridges)
    res = bridged_intervention(lb.dense, lb.sparse, lb.bridges, data.subset(held_idx), iv)
    s = res.summary()
    table = Table(title=f"{args.task}: {args.mode} sparse channels {list(iv.channels)} at {args.site} "
                        f"({s['n_prompts']} held-out prompts)")
    for col in ("", "sparse (direct)", "dense (bridged)"):
        table.add_column(col, justify="right")
    table.add_row("logit diff, clean", f"{s['sparse_clean_mean']:.3f}", f"{s['dense_clean_mean']:.3f}")
    table.add_row("change (mean)", f"{s['sparse_change_mean']:+.3f}", f"{s['dense_change_mean']:+.3f}")
    console.print(table)
    console.print(f"sign agreement per prompt: {s['sign_agreement']:.2f}; correlation {s['correlation']:.2f}; "
                  f"dense moved in the predicted direction: {'yes' if s['same_direction'] else 'no'}")
    if args.json is not None:
        from sparsecircuits.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps({**s, "task": args.task, "bridges": str(lb.path)}, indent=2))
        console.print(f"wrote {args.json}")
    return 0


PARSERS: dict[str, ParserBuilder] = {"train-bridges": _train_bridges_parser, "bridge-intervene": _bridge_intervene_parser}
COMMANDS = {"train-bridges": cmd_train_bridges, "bridge-intervene": cmd_bridge_intervene}
