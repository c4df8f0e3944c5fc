"""Joint training of a weight-sparse model and its bridges to a frozen dense model (Gao et al. 2025,
arXiv 2511.13653, "Bridges"); the loss is `bridges.bridge_loss`.

`train_bridges(setup, train_cfg, bridge_cfg, out_dir)` reuses the pieces of `weight_sparse/train.py`: batches are
`sample_batch(seed, step)`; the learning rate follows `TrainConfig.lr_at` (warmup, linear decay,
sqrt(L0) scaling); one step is
  1. the joint loss on a batch, backward (the dense model is frozen; gradients reach the sparse
     model and the bridges);
  2. the sparse model's gradient rescaled to RMS 1 and Adam with the `TrainConfig` betas and eps, as
     in `train.train_step`; the bridges use their own Adam group (lr `bridge_lr` on the same
     warmup/decay, eps 1e-8: they are ordinary dense linear maps);
  3. weight sparsity (`train.project_weights`, the `TrainConfig` L0 schedule) and decoupled weight
     decay on the sparse model's matrices (`train.decayed_params`); none on the bridges.
Before step 0 the bridges may be set to ridge least-squares fits on >= 64 sequences of the corpus (`lstsq_init`).

A bridge checkpoint (`checkpoints/step-NNNNNNN/`, written atomically, newest `keep_checkpoints` kept)
is a checkpoint of the sparse model (`model/checkpoint.py`: config.json, model.safetensors, tokenizer.json,
meta.json, train_state.safetensors with the Adam moments of both groups and the RNG state) plus
  bridges.safetensors   W_enc, b_enc, W_dec, b_dec stacked over sites
  bridges.json          format, step, sites, widths, the path and weight fingerprint of the dense
                        checkpoint, where the sparse model started, BridgeConfig, TrainConfig, metrics
so every command that takes a checkpoint reads the bridged sparse model from the same folder.
`resume=True` continues exactly from the newest checkpoint (same device and thread count).
The library never prints; progress goes to `on_step`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from sparsecircuits.ablation import weights_fingerprint
from sparsecircuits.config_utils import config_diff
from sparsecircuits.data.batches import sample_batch, val_windows
from sparsecircuits.model import checkpoint as ckpt
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.weight_sparse.bridges import (
    BridgeConfig,
    BridgeLoss,
    Bridges,
    bridge_loss,
    bridge_metrics,
    bridge_sites,
    check_compatible,
    fit_lstsq_,
    hybrid_sites_at,
)
from sparsecircuits.weight_sparse.run import RESUMABLE, optimizer_tensors, restore_optimizer
from sparsecircuits.weight_sparse.train import TrainConfig, decayed_params, project_weights

FORMAT = "sparsecircuits-bridges-v1"
BRIDGES_JSON, BRIDGES_WEIGHTS = "bridges.json", "bridges.safetensors"


class Joint(nn.Module):
    """The trained parameters under one module, so optimizer state is keyed `sparse.*` / `bridges.*`."""

    def __init__(self, sparse: Transformer, bridges: Bridges) -> None:
        super().__init__()
        self.sparse, self.bridges = sparse, bridges


@dataclass
class BridgeSetup:
    """What a bridge run starts from."""

    dense: Transformer  # frozen
    dense_path: str  # its checkpoint folder (recorded in bridges.json)
    sparse: Transformer  # the sparse model's starting point (trained in place)
    sparse_init: str  # where it came from: a checkpoint path or "preset:<name>"
    train_tokens: np.ndarray  # token streams of the corpus (`data.batches`)
    val_tokens: np.ndarray
    tokenizer_json: str | None = None
    data_spec: dict[str, Any] | None = None  # DataConfig of the corpus, for the sparse model's meta.json


@dataclass
class BridgeStepReport:
    step: int  # steps done
    total: int
    losses: dict[str, float]  # BridgeLoss.as_dict()
    lr: float
    tokens_per_s: float
    val: dict[str, float] | None  # mean held-out metrics when evaluated this step


@dataclass
class BridgeRunResult:
    out_dir: Path
    checkpoint: Path | None
    step: int
    last: dict[str, float] | None
    val: dict[str, dict[str, float]] | None  # bridge_metrics of the final evaluation
    stopped_early: bool


def make_bridge_optimizer(joint: Joint, cfg: TrainConfig, bcfg: BridgeConfig) -> torch.optim.Adam:
    betas = (cfg.beta1, cfg.beta2)
    return torch.optim.Adam([
        {"params": list(joint.sparse.parameters()), "lr": cfg.lr, "eps": cfg.eps, "betas": betas},
        {"params": list(joint.bridges.parameters()), "lr": bcfg.bridge_lr, "eps": 1e-8, "betas": betas},
    ])


def bridge_lr_at(cfg: TrainConfig, bcfg: BridgeConfig, step: int) -> float:
    """The bridges' learning rate: `bridge_lr` on the model's warmup/decay, without the L0 factor."""
    return dataclasses.replace(cfg, lr=bcfg.bridge_lr, lr_l0_scaling=False).lr_at(step)


def bridge_step(
    dense: Transformer, joint: Joint, opt_: torch.optim.Optimizer, cfg: TrainConfig, bcfg: BridgeConfig,
    tokens: torch.Tensor, step: int,
) -> BridgeLoss:
    """One optimisation step (module docstring, steps 1-3)."""
    kl_sites = hybrid_sites_at(joint.bridges.sites, bcfg.hybrid_sites, cfg.seed, step)
    out = bridge_loss(dense, joint.sparse, joint.bridges, tokens, bcfg, kl_sites)
    out.total.backward()
    grads = [p.grad for p in joint.sparse.parameters() if p.grad is not None]
    if cfg.grad_rms_norm and grads:
        rms = (torch.stack([g.float().pow(2).sum() for g in grads]).sum() / sum(g.numel() for g in grads)).sqrt()
        torch._foreach_div_(grads, rms.clamp_min(1e-12))
    lr = cfg.lr_at(step)
    opt_.param_groups[0]["lr"], opt_.param_groups[1]["lr"] = lr, bridge_lr_at(cfg, bcfg, step)
    opt_.step()
    opt_.zero_grad(set_to_none=True)
    project_weights(joint.sparse, cfg, cfg.kept(step))
    if cfg.weight_decay > 0:
        with torch.no_grad():
            torch._foreach_mul_(decayed_params(joint.sparse), 1.0 - cfg.weight_decay * lr)
    return out


def _info(setup: BridgeSetup, bridges: Bridges, cfg: TrainConfig, bcfg: BridgeConfig, step: int,
          dense_fp: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "step": step, "dense": setup.dense_path, "dense_fingerprint": dense_fp,
            "sparse": ".", "sparse_init": setup.sparse_init, "sites": bridges.sites,
            "d_dense": bridges.d_dense, "d_sparse": bridges.d_sparse,
            "bridge_config": dataclasses.asdict(bcfg), "train_config": dataclasses.asdict(cfg), "metrics": metrics}


def _save(out_dir: Path, joint: Joint, opt_: torch.optim.Optimizer, info: dict[str, Any],
          setup: BridgeSetup, cfg: TrainConfig) -> Path:
    state = optimizer_tensors(joint, opt_)  # type: ignore[arg-type]
    state["rng.torch"] = torch.get_rng_state()
    meta: dict[str, Any] = {"step": info["step"], "format": "sparsecircuits-checkpoint-v1", "bridges": BRIDGES_JSON,
                            "metrics": {"loss": info["metrics"].get("lm"), "val_loss": info["metrics"].get("val_lm")}}
    if setup.data_spec is not None:
        meta["spec"] = {"model": joint.sparse.cfg.to_dict(), "train": dataclasses.asdict(cfg), "data": setup.data_spec}
    weights = {k: v.detach().cpu().contiguous() for k, v in joint.bridges.state_dict().items()}
    extra = {BRIDGES_WEIGHTS: save_safetensors(weights), BRIDGES_JSON: json.dumps(info, indent=2).encode()}
    path = ckpt.save_checkpoint(ckpt.step_dir(out_dir, info["step"]), joint.sparse, meta=meta,
                                tokenizer_json=setup.tokenizer_json, train_state=state, extra_files=extra)
    ckpt.prune_steps(out_dir, cfg.keep_checkpoints)
    return path


def _resume(folder: Path, setup: BridgeSetup, joint: Joint, cfg: TrainConfig, bcfg: BridgeConfig,
            dense_fp: str) -> tuple[TrainConfig, int]:
    info = ckpt.read_json(folder / BRIDGES_JSON)
    saved, saved_b = TrainConfig(**info["train_config"]), BridgeConfig(**info["bridge_config"])
    diffs = config_diff(saved, cfg, ignore=RESUMABLE) + config_diff(saved_b, bcfg)
    if info["dense_fingerprint"] != dense_fp:
        diffs.append(f"dense model: the weights of {setup.dense_path!r} differ from those the run started with")
    if diffs:
        raise ValueError("cannot resume: the run was started with different settings: " + "; ".join(diffs))
    ckpt.load_state_checked(joint.sparse, ckpt.read_tensors(folder / ckpt.WEIGHTS), str(folder / ckpt.WEIGHTS))
    ckpt.load_state_checked(joint.bridges, ckpt.read_tensors(folder / BRIDGES_WEIGHTS), str(folder / BRIDGES_WEIGHTS))
    return dataclasses.replace(saved, **{k: getattr(cfg, k) for k in RESUMABLE}), int(info["step"])


def train_bridges(
    setup: BridgeSetup, cfg: TrainConfig, bcfg: BridgeConfig, out_dir: Path, *, resume: bool = False,
    on_step: Callable[[BridgeStepReport], None] | None = None, should_stop: Callable[[int], bool] | None = None,
) -> BridgeRunResult:
    """Train (or resume) bridges and the sparse model jointly; see the module docstring."""
    out_dir = Path(out_dir)
    check_compatible(setup.dense.cfg, setup.sparse.cfg)
    existing = ckpt.list_steps(out_dir)
    if existing and not resume:
        raise ValueError(f"{str(out_dir)!r} already holds checkpoints; pass resume (--resume) or another output folder")
    if resume and not existing:
        raise ValueError(f"cannot resume: no checkpoint in {str(out_dir)!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dense, sparse = setup.dense.eval(), setup.sparse.train()
    dense.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    bridges = Bridges(bridge_sites(sparse.cfg), dense.cfg.d_model, sparse.cfg.d_model, bcfg.enc_topk)
    joint = Joint(sparse, bridges)
    opt_ = make_bridge_optimizer(joint, cfg, bcfg)
    dense_fp = weights_fingerprint(dense)
    seq = min(bcfg.seq_len or sparse.cfg.n_ctx, sparse.cfg.n_ctx)
    start = 0
    if resume:
        cfg, start = _resume(existing[-1], setup, joint, cfg, bcfg, dense_fp)
        state = ckpt.read_tensors(existing[-1] / ckpt.TRAIN_STATE)
        restore_optimizer(joint, opt_, state)  # type: ignore[arg-type]
        torch.set_rng_state(state["rng.torch"])
    elif bcfg.lstsq_init:
        # At least 64 sequences: the fit has d+1 unknowns per output and must not interpolate one batch.
        first = sample_batch(setup.train_tokens, max(64, cfg.batch_size), seq, cfg.seed, 0)[:, :-1]
        with torch.no_grad():
            _, hd = dense.run_with_cache(first, names_filter=bridges.sites)
            _, hs = sparse.run_with_cache(first, names_filter=bridges.sites)
        fit_lstsq_(bridges, hd.activations, hs.activations, bcfg.ridge)
    windows = val_windows(setup.val_tokens, cfg.val_batches, cfg.batch_size, seq)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    if metrics_path.exists():  # drop lines past the checkpoint we resume from
        keep = [ln for ln in metrics_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
        metrics_path.write_text("".join(ln + "\n" for ln in keep))
    last: dict[str, float] | None = None
    val: dict[str, dict[str, float]] | None = None
    path, t0, n_tokens = None, time.perf_counter(), 0
    for step in range(start, cfg.steps):
        tokens = sample_batch(setup.train_tokens, cfg.batch_size, seq, cfg.seed, step)
        last = bridge_step(dense, joint, opt_, cfg, bcfg, tokens, step).as_dict()
        done, n_tokens = step + 1, n_tokens + tokens[:, :-1].numel()
        evaluated = done == cfg.steps or bool(cfg.val_every and done % cfg.val_every == 0)
        if evaluated:
            sparse.eval()
            val = bridge_metrics(dense, sparse, bridges, windows)
            sparse.train()
        rec: dict[str, Any] = {"step": done, **last, "lr": cfg.lr_at(step)}
        if evaluated and val is not None:
            rec.update({f"val_{k}": v for k, v in val["mean"].items()})
        if done % cfg.log_every == 0 or evaluated:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done == cfg.steps or (cfg.ckpt_every and done % cfg.ckpt_every == 0):
            metrics = {**last, **({f"val_{k}": v for k, v in val["mean"].items()} if val else {})}
            path = _save(out_dir, joint, opt_, _info(setup, bridges, cfg, bcfg, done, dense_fp, metrics), setup, cfg)
        tps = n_tokens / max(time.perf_counter() - t0, 1e-9)
        if on_step is not None:
            on_step(BridgeStepReport(done, cfg.steps, last, rec["lr"], tps, val["mean"] if evaluated and val else None))
        if should_stop is not None and should_stop(done) and done < cfg.steps:
            return BridgeRunResult(out_dir, path, done, last, val, True)
    latest = ckpt.list_steps(out_dir)
    return BridgeRunResult(out_dir, latest[-1] if latest else path, cfg.steps, last, val, False)


@dataclass
class LoadedBridges:
    path: Path  # the bridge checkpoint folder
    dense: Transformer
    sparse: Transformer
    bridges: Bridges
    info: dict[str, Any]  # bridges.json
    sparse_checkpoint: ckpt.Checkpoint  # the sparse model's checkpoint (same folder): tokenizer, meta


def load_bridges(path: Path, dense_path: Path | None = None) -> LoadedBridges:
    """Load a bridge checkpoint (or the newest of a bridge run folder) with its dense and sparse models.

    `dense_path` overrides the dense checkpoint recorded in bridges.json (e.g. after moving it); its
    weights must still match the recorded fingerprint."""
    folder = ckpt.resolve(path)
    info = ckpt.read_json(folder / BRIDGES_JSON)
    if info.get("format") != FORMAT:
        raise ckpt.CheckpointError(f"{str(folder)!r} is not a bridge checkpoint (format {info.get('format')!r})")
    sparse_ck = ckpt.load_checkpoint(folder)
    dense = ckpt.load_checkpoint(dense_path or Path(info["dense"])).model
    check_compatible(dense.cfg, sparse_ck.model.cfg)
    if weights_fingerprint(dense) != info["dense_fingerprint"]:
        raise ValueError(f"the dense checkpoint {str(dense_path or info['dense'])!r} is not the one these bridges "
                         "were trained with (weight fingerprint differs)")
    if (dense.cfg.d_model, sparse_ck.model.cfg.d_model) != (info["d_dense"], info["d_sparse"]):
        raise ValueError(f"bridges.json widths {info['d_dense']}/{info['d_sparse']} do not match the models' d_model")
    bcfg = BridgeConfig(**info["bridge_config"])
    bridges = Bridges(info["sites"], info["d_dense"], info["d_sparse"], bcfg.enc_topk)
    ckpt.load_state_checked(bridges, ckpt.read_tensors(folder / BRIDGES_WEIGHTS), str(folder / BRIDGES_WEIGHTS))
    for m in (dense, sparse_ck.model, bridges):
        m.eval().requires_grad_(False)
    return LoadedBridges(folder, dense, sparse_ck.model, bridges, info, sparse_ck)


__all__ = ["BridgeSetup", "BridgeStepReport", "BridgeRunResult", "LoadedBridges", "train_bridges", "load_bridges",
           "bridge_step", "make_bridge_optimizer"]
