"""A training run of a weight-sparse model (Gao et al. 2025) or its dense twin: data, model, optimizer,
the step loop (one step is `train.train_step`), validation, checkpoints and resume.

`train_run(spec, out_dir, ...)` trains the model described by a `RunSpec` and writes into `out_dir`:
  metrics.jsonl                   one JSON line per logged step (loss, lr, L0, tokens/s, val loss)
  checkpoints/step-NNNNNNN/       checkpoint folders (see `model/checkpoint.py`), the newest few kept
`resume=True` continues from the newest checkpoint of `out_dir` with the saved configs (only the
fields in `RESUMABLE` may change), truncates metrics.jsonl to that step, and reproduces the
uninterrupted run exactly: batches depend only on (seed, step) and the optimizer moments and RNG
state are restored. The library never prints; progress goes to the `on_step` / `on_data` callbacks.

Under torchrun (`distributed.py`) every process runs `train_run`: `batch_size` stays the global batch
and each rank trains on its rows of it through DDP; rank 0 prepares the data first (it may train the
tokenizer and fill the token cache) and hands the tokenizer to the others, validation windows are
split over the ranks, and rank 0 alone writes checkpoints and metrics and calls the callbacks. A
checkpoint holds no trace of the world size, so a run can resume with any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch.nn.parallel import DistributedDataParallel

from sparsecircuits import distributed
from sparsecircuits.config_utils import config_diff
from sparsecircuits.data.batches import (
    TokenData,
    bigram_baseline_loss,
    prepare_data,
    sample_batch,
    val_windows,
)
from sparsecircuits.data.corpus import DataConfig
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.model import checkpoint as ckpt
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.weight_sparse.train import (
    StepInput,
    TrainConfig,
    autocast_for,
    lm_loss,
    make_optimizer,
    resolve_device,
    train_step,
)

# TrainConfig fields that may differ on --resume without changing the training trajectory.
RESUMABLE = ("val_every", "ckpt_every", "keep_checkpoints", "log_every", "device", "threads", "compile",
             "fused_adam")


@dataclass
class RunSpec:
    """Everything that defines a run (saved in every checkpoint's meta.json)."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "data": {**dataclasses.asdict(self.data), "sources": list(self.data.sources)},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(ModelConfig.from_dict(d["model"]), TrainConfig(**d["train"]), DataConfig(**d["data"]))


@dataclass
class StepReport:
    step: int  # optimizer steps done
    total: int
    loss: float
    lr: float
    kept_hidden: float
    tokens_per_s: float
    val_loss: float | None


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    step: int
    train_loss: float | None
    val_loss: float | None
    bigram_baseline: float
    stopped_early: bool


@torch.no_grad()
def evaluate(model: Transformer, windows: list[torch.Tensor], device: torch.device, precision: str) -> float:
    """Mean validation loss over fixed windows, in nats/token."""
    was_training = model.training
    model.eval()
    losses = []
    for w in windows:
        with autocast_for(device, precision):
            losses.append(float(lm_loss(model, w.to(device))))
    model.train(was_training)
    return sum(losses) / len(losses)


def optimizer_tensors(model: Transformer, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam moments (and step counts) keyed by parameter name, for safetensors."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            out[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value).clone()
    return out


def restore_optimizer(model: Transformer, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        name, field = key[len("optim.") :].rsplit(".", 1)
        if name not in params:
            raise ckpt.CheckpointError(f"optimizer state names unknown parameter {name!r}")
        p = params[name]
        if field != "step" and value.shape != p.shape:
            raise ckpt.CheckpointError(f"optimizer state {key}: shape {tuple(value.shape)} vs {tuple(p.shape)}")
        if field == "step":  # the fused kernel keeps its step counts on the parameters' device
            fused = any(g.get("fused") for g in opt.param_groups)
            opt.state[p][field] = value.to(p.device, torch.float32) if fused else value
        else:
            opt.state[p][field] = value.to(p.device)


def _resume_spec(spec: RunSpec, folder: Path) -> tuple[RunSpec, dict[str, Any]]:
    meta = ckpt.read_json(folder / ckpt.META)
    saved = RunSpec.from_dict(meta["spec"])
    diffs = config_diff(saved.train, spec.train, ignore=RESUMABLE) + config_diff(saved.data, spec.data)
    diffs += config_diff(saved.model, spec.model, ignore=("d_vocab",))
    if diffs:
        raise ValueError("cannot resume: the run was started with different settings: " + "; ".join(diffs))
    keep = {k: getattr(spec.train, k) for k in RESUMABLE}
    return RunSpec(saved.model, dataclasses.replace(saved.train, **keep), saved.data), meta


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


@dataclass
class _State:
    spec: RunSpec
    data: TokenData
    model: Transformer
    opt: torch.optim.Optimizer
    start: int
    bigram: float
    ctx: distributed.DistContext


def _locate(out_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (None for a fresh run), after checking the folder's state."""
    existing = ckpt.list_steps(out_dir)
    if existing and not resume:
        raise ValueError(f"{str(out_dir)!r} already holds checkpoints; pass resume (--resume) or another output folder")
    if resume and not existing:
        raise ValueError(f"cannot resume: no checkpoint in {str(out_dir)!r}")
    return str(existing[-1]) if resume else None


def _data(spec: RunSpec, cache_dir: Path, tok: Tokenizer | None, on_data: Any, ctx: distributed.DistContext) -> TokenData:
    """Rank 0 prepares the data (training the tokenizer if needed), then the others with its tokenizer."""
    mine: dict[str, TokenData] = {}

    def first() -> str:
        mine["data"] = prepare_data(spec.data, cache_dir, tokenizer=tok, progress=on_data)
        return mine["data"].tokenizer.to_str()

    tok_json = ctx.agree(first)
    data = mine.get("data") or prepare_data(spec.data, cache_dir, tokenizer=Tokenizer.from_str(tok_json))
    if len(set(ctx.gather_objects(data.fingerprint))) > 1:
        raise ValueError("the ranks read different training data (corpus fingerprints differ); every node "
                         "needs the same sources")
    return data


def _setup(spec: RunSpec, out_dir: Path, cache_dir: Path, resume: bool, on_data: Any,
           ctx: distributed.DistContext) -> _State:
    found = ctx.agree(lambda: _locate(out_dir, resume))
    folder, meta, tok = None, {}, None
    if found is not None:
        folder = Path(found)
        if not (folder / ckpt.META).exists():
            raise ValueError(f"rank {ctx.rank} cannot see checkpoint {found!r}: the run folder must be on a "
                             "filesystem shared by every node")
        spec, meta = _resume_spec(spec, folder)
        tok = load_tokenizer(folder / ckpt.TOKENIZER)
    data = _data(spec, cache_dir, tok, on_data, ctx)
    if resume and meta.get("data_fingerprint") != data.fingerprint:
        raise ValueError("cannot resume: the training data changed since the run started (fingerprint differs)")
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, d_vocab=data.tokenizer.get_vocab_size()))
    ctx.shard_rows(spec.train.batch_size, "TrainConfig.batch_size")  # fail early when it does not split
    torch.manual_seed(spec.train.seed)
    device = distributed.process_device(ctx, resolve_device(spec.train.device))
    model = Transformer(spec.model).to(device)
    opt = make_optimizer(model, spec.train)
    if folder is not None:
        loaded = ckpt.load_checkpoint(folder, with_train_state=True)
        model.load_state_dict(loaded.model.state_dict())
        assert loaded.train_state is not None
        restore_optimizer(model, opt, loaded.train_state)
        torch.set_rng_state(loaded.train_state["rng.torch"])
        return _State(spec, data, model, opt, int(meta["step"]), float(meta["bigram_baseline"]), ctx)
    if spec.train.init_from:
        _init_from(model, Path(spec.train.init_from), data.tokenizer)
    bigram = ctx.agree(lambda: bigram_baseline_loss(data.train, data.val, data.tokenizer.get_vocab_size()))
    return _State(spec, data, model, opt, 0, bigram, ctx)


def _init_from(model: Transformer, folder: Path, tok: Tokenizer) -> None:
    """Warm start (`TrainConfig.init_from`): copy a checkpoint's weights into the fresh model."""
    loaded = ckpt.load_checkpoint(folder)
    if loaded.tokenizer_path is None or json.loads(loaded.tokenizer_path.read_text()) != json.loads(tok.to_str()):
        raise ValueError(f"cannot initialise from {folder}: its tokenizer differs from this run's "
                         "(train the run on the same corpus and vocabulary settings)")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in loaded.model.state_dict().items()}
    if ours != theirs:
        diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise ValueError(f"cannot initialise from {folder}: parameter shapes differ ({', '.join(diff[:4])})")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.copy_(loaded.model.state_dict()[name])


def _save(st: _State, out_dir: Path, step: int, metrics: dict[str, Any]) -> Path | None:
    """Write a checkpoint from rank 0 after checking that every rank holds the same weights."""
    distributed.check_replicas(st.ctx, dict(st.model.named_parameters()))
    path = None
    if st.ctx.is_main:
        path = _write(st, out_dir, step, metrics)
    st.ctx.barrier()  # nobody moves on (or exits and resumes) before the checkpoint is complete
    return path


def _write(st: _State, out_dir: Path, step: int, metrics: dict[str, Any]) -> Path:
    state = optimizer_tensors(st.model, st.opt)
    state["rng.torch"] = torch.get_rng_state()
    meta = {
        "step": step,
        "spec": st.spec.to_dict(),
        "data_fingerprint": st.data.fingerprint,
        "bigram_baseline": st.bigram,
        "metrics": metrics,
        "format": "sparsecircuits-checkpoint-v1",
    }
    path = ckpt.save_checkpoint(
        ckpt.step_dir(out_dir, step),
        st.model,
        meta=meta,
        tokenizer_json=st.data.tokenizer.to_str(),
        train_state=state,
    )
    ckpt.prune_steps(out_dir, st.spec.train.keep_checkpoints)
    return path


def _val_loss(st: _State, windows: list[torch.Tensor], device: torch.device) -> float:
    """Validation loss; with several processes each evaluates every world_size-th window."""
    ctx, precision = st.ctx, st.spec.train.precision
    if not ctx.enabled:
        return evaluate(st.model, windows, device, precision)
    mine = windows[ctx.rank :: ctx.world_size]
    total = evaluate(st.model, mine, device, precision) * len(mine) if mine else 0.0
    return ctx.mean([total])[0] * ctx.world_size / len(windows)


def _runner(st: _State, device: torch.device) -> torch.nn.Module:
    """What runs the forward pass: the model, in DDP across processes, compiled if asked."""
    runner: torch.nn.Module = st.model
    if st.ctx.enabled:
        runner = DistributedDataParallel(st.model, device_ids=[device.index] if device.type == "cuda" else None)
    if st.spec.train.compile:
        runner = torch.compile(runner)  # type: ignore[assignment]
    return runner


def train_run(
    spec: RunSpec,
    out_dir: Path,
    cache_dir: Path,
    *,
    resume: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    on_data: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> RunResult:
    """Train (or resume) a run; see the module docstring. `should_stop(step)` ends it early, as a kill
    would (under torchrun it must give the same answer on every rank). Callbacks run on rank 0 only."""
    out_dir = Path(out_dir)
    ctx = distributed.init_from_env(spec.train.device)
    if not ctx.is_main:
        on_step = on_data = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    st = _setup(spec, out_dir, Path(cache_dir), resume, on_data, ctx)
    cfg, model = st.spec.train, st.model
    device = next(model.parameters()).device
    autocast = lambda: autocast_for(device, cfg.precision)  # noqa: E731
    runner = _runner(st, device)
    rows = ctx.shard_rows(cfg.batch_size, "TrainConfig.batch_size")
    windows = val_windows(st.data.val, cfg.val_batches, cfg.batch_size, st.spec.model.n_ctx)
    metrics_path = out_dir / "metrics.jsonl"
    if ctx.is_main:
        _truncate_metrics(metrics_path, st.start)
    last = {"loss": None, "val_loss": None}
    path, t0, tokens = None, time.perf_counter(), 0
    model.train()
    for step in range(st.start, cfg.steps):
        # The step's global batch is the same at any world size; this rank trains on its rows.
        batch_BT = sample_batch(st.data.train, cfg.batch_size, st.spec.model.n_ctx, cfg.seed, step)
        tokens_BT = batch_BT[rows].to(device)
        inp = StepInput(tokens_BT, step, cfg.lr_at(step), cfg.kept(step))
        out = train_step(model, st.opt, cfg, inp, autocast, forward=runner)
        loss = ctx.mean([out.loss])[0] if ctx.enabled else out.loss
        done, tokens = step + 1, tokens + batch_BT[:, :-1].numel()
        val = None
        if done == cfg.steps or (cfg.val_every and done % cfg.val_every == 0):
            val = _val_loss(st, windows, device)
            last["val_loss"] = val
        last["loss"] = loss
        tps = tokens / max(time.perf_counter() - t0, 1e-9)
        if ctx.is_main and (done % cfg.log_every == 0 or val is not None or done == cfg.steps):
            rec = {"step": done, "loss": loss, "lr": inp.lr, "grad_rms": out.grad_rms,
                   "kept_hidden": inp.kept["hidden"], "kept_embed": inp.kept["embed"], "tokens_per_s": tps}
            if val is not None:
                rec["val_loss"] = val
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done == cfg.steps or (cfg.ckpt_every and done % cfg.ckpt_every == 0):
            path = _save(st, out_dir, done, {**last, "bigram_baseline": st.bigram}) or path
        if on_step is not None:
            on_step(StepReport(done, cfg.steps, loss, inp.lr, inp.kept["hidden"], tps, val))
        if should_stop is not None and should_stop(done) and done < cfg.steps:
            return RunResult(out_dir, path, done, last["loss"], last["val_loss"], st.bigram, True)
    latest = ckpt.list_steps(out_dir)
    return RunResult(out_dir, latest[-1] if latest else path, cfg.steps, last["loss"], last["val_loss"], st.bigram, False)
