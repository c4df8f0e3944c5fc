"""Training sparse dictionaries — one or a sweep of several — from one activation stream.

`train_dictionaries(model, tokens, cfgs, train_cfg, out_dir)` steps:
  1. check every hook exists and is `[batch, pos, d]`, and each config's widths match the model;
  2. build the stream (`activations.py`): from the model, or from a disk store written once;
  3. input normalisation (optional): per hook a scale s with E‖s·x‖ = sqrt(d) on the first chunk
     (Conerly et al. 2024); the scale is folded back into the weights when saving;
  4. per dictionary: init (`init_dictionary`), b_dec = mean target of the first chunk, its own Adam;
  5. every step, every dictionary (`train_step`): loss = ‖ŷ − y‖² (summed over dims, mean over
     tokens) + sparsity penalty (ReLU: L1 weighted by decoder norms, warmed up; JumpReLU: L0) +
     aux-k loss on dead features (TopK/BatchTopK, Gao et al. 2024); for unit-decoder architectures
     the gradient component parallel to each decoder row is removed before the Adam step and rows are
     renormalised after it; lr: linear warmup, constant, linear decay to 0 over the last `decay_frac`;
  6. dead features: a feature is dead when it has not fired for `dead_tokens` tokens; ReLU
     dictionaries resample dead features at the `resample_at` fractions of training (Bricken et al.
     2023): encoder and decoder directions from high-error tokens, Adam moments reset;
  7. checkpoints: one atomic folder `checkpoint/` with every dictionary's parameters, Adam moments and
     dead-feature counters at the same step, plus an exported SAELens folder per dictionary;
     `resume=True` continues exactly (batches are a pure function of (seed, step)).
The library never prints; progress goes to `on_step(SweepReport)`.

Under torchrun (`distributed.py`) `batch_size` is the global batch: each rank trains on its rows of
the step's batch, gradients are averaged with one all-reduce per dictionary (its step does not run
through `forward`, so not through a DDP wrapper), firing flags are OR-ed and running buffers
(BatchTopK's threshold) averaged, resampling sees the gathered global batch, and rank 0 alone writes.
Every rank computes the activation chunks itself; with an activation store it only reads them.
BatchTopK's top-k and the aux-k normalisation are then per rank's share of the batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecircuits import distributed
from sparsecircuits.atomic import atomic_dir
from sparsecircuits.config_utils import config_diff
from sparsecircuits.dictionaries.activations import (
    ModelActivations,
    ShuffledBatches,
    StoredActivations,
    hook_order,
    hook_widths,
)
from sparsecircuits.dictionaries.architectures import aux_k_loss
from sparsecircuits.dictionaries.base import DictConfig, Dictionary, SparsityCoefs, make_dictionary
from sparsecircuits.dictionaries.config import DictTrainConfig  # torch-free, for the CLI
from sparsecircuits.dictionaries.formats import fold_scaling, save_dictionary
from sparsecircuits.model.checkpoint import CheckpointError, read_json, read_tensors
from sparsecircuits.model.transformer import Transformer

RESUMABLE = ("ckpt_every", "log_every", "threads")


@dataclass
class StepInput:
    x: Tensor  # [batch, d_in] normalised input
    y: Tensor  # [batch, d_out] normalised target
    lr: float
    coefs: SparsityCoefs
    dead: Tensor  # [width] bool: features dead before this step


@dataclass
class TrainStepOutput:
    loss: float
    mse: float
    fvu: float  # fraction of variance unexplained on this batch
    l0: float  # mean active features per token
    penalty: float
    aux: float
    fired: Tensor  # [width] bool: features active on this batch


@dataclass
class Trainee:
    """One dictionary being trained, with its optimizer and bookkeeping."""

    name: str
    dictionary: Dictionary
    opt: torch.optim.Adam
    scale_in: float
    scale_out: float
    since_fired: Tensor  # [width] int64: tokens since the feature last fired


@dataclass
class DictStats:
    name: str
    loss: float
    fvu: float
    l0: float
    dead_frac: float


@dataclass
class SweepReport:
    step: int
    total: int
    tokens_per_s: float
    dicts: list[DictStats]


@dataclass
class SweepResult:
    out_dir: Path
    step: int
    paths: dict[str, Path]  # name -> exported SAELens folder
    stats: list[DictStats]
    stopped_early: bool


def train_step(d: Dictionary, opt: torch.optim.Adam, inp: StepInput, aux_k: int, aux_coef: float,
               sync: Callable[[], None] | None = None) -> TrainStepOutput:
    """One optimizer step of one dictionary (see the module docstring, step 5); `sync` runs right
    after the backward pass (the gradient all-reduce across processes)."""
    for group in opt.param_groups:
        group["lr"] = inp.lr
    pre_BF = d.pre_acts(inp.x)
    terms = d.sparsity_terms(inp.x, pre_BF, inp.coefs)
    if terms.indices is not None and terms.values is not None:
        recon_BD = d.decode_sparse(terms.indices, terms.values, inp.x)
    else:
        recon_BD = d.decode(terms.acts, inp.x)
    err_BD = recon_BD - inp.y
    mse = err_BD.pow(2).sum(-1).mean()
    aux = pre_BF.new_zeros(())
    if d.uses_k and aux_coef > 0:
        aux = aux_k_loss(d, pre_BF, -err_BD, inp.dead, aux_k)
    loss = mse + terms.penalty + aux_coef * aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync()
    if d.unit_decoder and d.W_dec.grad is not None:
        with torch.no_grad():  # remove the gradient component that would change the row norms
            W, g = d.W_dec, d.W_dec.grad
            g.sub_((g * W).sum(1, keepdim=True) * W)
    opt.step()
    if d.unit_decoder:
        with torch.no_grad():
            d.W_dec.div_(d.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
    with torch.no_grad():
        var = (inp.y - inp.y.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        active = terms.acts.detach() > 0
    return TrainStepOutput(loss.item(), mse.item(), (mse.detach() / var).item(), active.sum(-1).float().mean().item(),
                           terms.penalty.item(), aux.item(), active.any(0))


@torch.no_grad()
def resample_dead_(t: Trainee, x: Tensor, y: Tensor, dead: Tensor, generator: torch.Generator) -> int:
    """Resample dead features (Bricken et al. 2023): draw tokens with probability ∝ squared error;
    each dead feature gets the token's normalised error as decoder row, the normalised input × 0.2 ×
    the mean alive encoder norm as encoder column, b_enc 0; its Adam moments are reset."""
    d = t.dictionary
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = y - d.decode(d.encode(x), x)
    w = err.pow(2).sum(-1)
    if float(w.sum()) <= 0:
        return 0
    rows = torch.multinomial(w, idx.numel(), replacement=True, generator=generator)
    alive = ~dead
    enc_norm = d.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    d.W_dec[idx] = err[rows] / err[rows].norm(dim=1, keepdim=True).clamp_min(1e-8)
    xin = x[rows] / x[rows].norm(dim=1, keepdim=True).clamp_min(1e-8)
    d.W_enc[:, idx] = (xin * enc_norm * 0.2).T
    d.b_enc[idx] = 0.0
    for p, sl in ((d.W_enc, (slice(None), idx)), (d.b_enc, (idx,)), (d.W_dec, (idx,))):
        state = t.opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
    t.since_fired[idx] = 0
    return int(idx.numel())


def _check_configs(model: Transformer, cfgs: list[DictConfig]) -> dict[str, int]:
    if not cfgs:
        raise ValueError("no dictionaries to train")
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError(f"dictionary names must be distinct, got {names}")
    widths = hook_widths(model, sorted({h for c in cfgs for h in (c.hook, c.out_hook)}))
    for c in cfgs:
        if c.d_in != widths[c.hook] or c.d_out != widths[c.out_hook]:
            raise ValueError(f"dictionary {c.name}: d_in/d_out {c.d_in}/{c.d_out} do not match the model's "
                             f"{c.hook!r} ({widths[c.hook]}) / {c.out_hook!r} ({widths[c.out_hook]})")
        if c.is_transcoder:
            hook_order(model, c.hook, c.out_hook)
    return widths


def _scales(chunk: dict[str, Tensor], normalize: bool) -> dict[str, float]:
    if not normalize:
        return dict.fromkeys(chunk, 1.0)
    return {h: math.sqrt(a.shape[1]) / float(a.norm(dim=1).mean().clamp_min(1e-12)) for h, a in chunk.items()}


def _new_trainee(c: DictConfig, cfg: DictTrainConfig, scales: dict[str, float], first: dict[str, Tensor]) -> Trainee:
    d = make_dictionary(c)
    with torch.no_grad():
        d.b_dec.copy_(first[c.out_hook].mean(0) * scales[c.out_hook])
    opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return Trainee(c.name, d, opt, scales[c.hook], scales[c.out_hook], torch.zeros(c.width, dtype=torch.long))


def _trainee_tensors(t: Trainee) -> dict[str, Tensor]:
    out = {f"param.{k}": v.detach().clone() for k, v in t.dictionary.state_dict().items()}
    names = {id(p): n for n, p in t.dictionary.named_parameters()}
    for p, state in t.opt.state.items():
        for key, value in state.items():
            out[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value).clone()
    out["since_fired"] = t.since_fired.clone()
    out["scales"] = torch.tensor([t.scale_in, t.scale_out], dtype=torch.float64)
    return out


def _restore_trainee(t: Trainee, tensors: dict[str, Tensor], source: str) -> None:
    params = dict(t.dictionary.named_parameters())
    sd = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    try:
        t.dictionary.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not fit dictionary {t.name}: {e}") from None
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, field = key[len("optim."):].rsplit(".", 1)
            t.opt.state[params[name]][field] = value
    t.since_fired = tensors["since_fired"].clone()
    t.scale_in, t.scale_out = (float(v) for v in tensors["scales"])


def _save(out_dir: Path, step: int, trainees: list[Trainee], cfgs: list[DictConfig], cfg: DictTrainConfig,
          meta: dict[str, Any]) -> dict[str, Path]:
    from safetensors.torch import save_file

    with atomic_dir(out_dir / "checkpoint") as tmp:
        for t in trainees:
            save_file({k: v.contiguous() for k, v in _trainee_tensors(t).items()}, str(tmp / f"{t.name}.safetensors"))
        state = {"step": step, "train": dataclasses.asdict(cfg), "dicts": [dataclasses.asdict(c) for c in cfgs], "meta": meta}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    paths = {}
    for t in trainees:
        folded = fold_scaling(t.dictionary, t.scale_in, t.scale_out)
        paths[t.name] = save_dictionary(folded, out_dir / t.name, {**meta, "step": step, "tokens": step * cfg.batch_size})
    return paths


def _paths(out_dir: Path, trainees: list[Trainee]) -> dict[str, Path]:
    return {t.name: out_dir / t.name for t in trainees}


def train_dictionaries(
    model: Transformer,
    tokens: np.ndarray,
    cfgs: list[DictConfig],
    cfg: DictTrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    store: Path | None = None,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[SweepReport], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> SweepResult:
    """Train several dictionaries on one activation stream; see the module docstring."""
    out_dir, meta = Path(out_dir), dict(meta or {})
    ctx = distributed.init_from_env(next(model.parameters()).device.type)
    rows = ctx.shard_rows(cfg.batch_size, "DictTrainConfig.batch_size")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _check_configs(model, cfgs)
    ckpt = out_dir / "checkpoint"
    if ckpt.exists() and not resume:
        raise ValueError(f"{str(out_dir)!r} already holds a checkpoint; pass resume (--resume) or another folder")
    if resume and not (ckpt / "state.json").exists():
        raise ValueError(f"cannot resume: no checkpoint in {str(out_dir)!r}")
    hooks = sorted({h for c in cfgs for h in (c.hook, c.out_hook)})
    seqs = max(1, cfg.buffer_tokens // model.cfg.n_ctx)
    source: ModelActivations | StoredActivations = ModelActivations(model, tokens, hooks, seqs, cfg.seed, cfg.model_batch)
    if store is not None:
        source = StoredActivations(store)
        missing = [h for h in hooks if h not in source.widths]
        if missing:
            raise ValueError(f"activation store {str(store)!r} lacks hooks {missing}")
    batches = ShuffledBatches(source, cfg.batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    first = source.chunk(0)
    scales = _scales(first, cfg.normalize)
    trainees = [_new_trainee(c, cfg, scales, first) for c in cfgs]
    start = 0
    if resume:
        state = read_json(ckpt / "state.json")
        diffs = config_diff(DictTrainConfig(**{**state["train"], "resample_at": tuple(state["train"]["resample_at"])}),
                            cfg, ignore=RESUMABLE)
        saved = [DictConfig(**c) for c in state["dicts"]]
        if diffs or saved != cfgs:
            raise ValueError("cannot resume: the run was started with different settings: "
                             + ("; ".join(diffs) or "the dictionaries differ"))
        for t in trainees:
            _restore_trainee(t, read_tensors(ckpt / f"{t.name}.safetensors"), str(ckpt))
        start = int(state["step"])
    resample_steps = {int(f * cfg.steps) for f in cfg.resample_at}
    metrics_path = out_dir / "metrics.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not ctx.is_main:
        on_step = None
    elif metrics_path.exists():  # drop lines past the checkpoint we resume from
        keep = [ln for ln in metrics_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
        metrics_path.write_text("".join(ln + "\n" for ln in keep))
    elif resume:
        metrics_path.touch()
    t0, n_tok, paths, stats = time.perf_counter(), 0, {}, []
    for step in range(start, cfg.steps):
        batch = {h: a[rows] for h, a in batches.batch(step).items()}  # this rank's rows of the global batch
        stats = []
        for t, c in zip(trainees, cfgs):
            x, y = batch[c.hook] * t.scale_in, batch[c.out_hook] * t.scale_out
            s = cfg.sparsity_scale(step)
            coefs = SparsityCoefs(cfg.l1_coef * s, cfg.l0_coef * s, cfg.bandwidth)
            dead = t.since_fired >= cfg.dead_tokens
            sync = (lambda d=t.dictionary: distributed.average_grads_(ctx, d.parameters())) if ctx.enabled else None
            out = train_step(t.dictionary, t.opt, StepInput(x, y, cfg.lr_at(step), coefs, dead),
                             cfg.aux_k or max(1, c.d_out // 2), cfg.aux_coef, sync)
            distributed.average_buffers_(ctx, t.dictionary)
            t.since_fired = torch.where(ctx.any_(out.fired), 0, t.since_fired + cfg.batch_size)
            if c.arch == "relu" and step in resample_steps:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                resample_dead_(t, ctx.gather_rows(x), ctx.gather_rows(y), t.since_fired >= cfg.dead_tokens, g)
            dead_frac = float((t.since_fired >= cfg.dead_tokens).float().mean())
            loss, fvu, l0 = ctx.mean([out.loss, out.fvu, out.l0])  # averaged over the ranks' rows
            stats.append(DictStats(t.name, loss, fvu, l0, dead_frac))
        done = step + 1
        n_tok += cfg.batch_size
        tps = n_tok / max(time.perf_counter() - t0, 1e-9)
        if ctx.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"step": done, "tokens_per_s": tps, "dicts": [dataclasses.asdict(s) for s in stats]}) + "\n")
        if done == cfg.steps or (cfg.ckpt_every and done % cfg.ckpt_every == 0):
            distributed.check_replicas(ctx, {f"{t.name}.{k}": v for t in trainees
                                             for k, v in t.dictionary.state_dict().items()})
            paths = _save(out_dir, done, trainees, cfgs, cfg, meta) if ctx.is_main else _paths(out_dir, trainees)
            ctx.barrier()
        if on_step is not None:
            on_step(SweepReport(done, cfg.steps, tps, stats))
        if should_stop is not None and should_stop(done) and done < cfg.steps:
            return SweepResult(out_dir, done, paths, stats, True)
    if not paths:  # resumed at the final step
        paths = _paths(out_dir, trainees)
    return SweepResult(out_dir, cfg.steps, paths, stats, False)
