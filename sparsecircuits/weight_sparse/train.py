"""Training weight-sparse (and dense twin) transformers, after Gao et al. (2025).

One step (`train_step`):
  1. next-token cross-entropy on a batch (bf16 autocast on GPU, fp32 on CPU);
  2. gradients rescaled to global RMS 1 ("essential for stability" in Gao et al.);
  3. Adam, betas (0.9, 0.95), eps 0.1 by default, at the scheduled learning rate: 1% linear warmup,
     linear decay to zero, times sqrt(L0_target / L0_now) while the weights are being sparsified;
  4. weight sparsity: every matrix of `Transformer.sparse_weights()` keeps its top-k |w| with at
     least `min_per_neuron` per neuron (`sparsity.project_`), k following the linear L0 schedule;
  5. decoupled weight decay after the projection, w <- w - wd * lr * w, on matrices but not on the
     bigram table, biases, norms or sinks (zeros stay zero).

Batches are a pure function of (seed, step), and the model, optimizer moments and RNG state are
checkpointed, so a run killed at any point and resumed from its last checkpoint reproduces the
uninterrupted run exactly (on the same device and thread count).

GPU path: bf16 autocast (`precision`), the fused Adam kernel (`fused_adam`) and `torch.compile`
(`compile`) are used only on CUDA by default; on the CPU the step is plain fp32 eager PyTorch.
Several processes (torchrun, `distributed.py`) run the forward/backward through a DDP wrapper, so
the gradients are averaged before step 2 and every later step is identical on every rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.config_utils import opt, require_at_least
from sparsecircuits.model.sparsity import kept_fraction, project_, target_nonzeros
from sparsecircuits.model.transformer import Transformer

PRECISIONS = ("auto", "fp32", "bf16")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class TrainConfig:
    steps: int = opt(1500, "optimizer steps")
    batch_size: int = opt(16, "sequences per step (each n_ctx tokens)")
    lr: float = opt(1e-2, "peak learning rate")
    warmup_frac: float = opt(0.01, "fraction of steps of linear warmup; [0, 1)")
    beta1: float = opt(0.9, "Adam beta1")
    beta2: float = opt(0.95, "Adam beta2")
    eps: float = opt(0.1, "Adam epsilon (Gao et al. use a large 0.1)")
    weight_decay: float = opt(0.1, "decoupled weight decay, applied after the sparsity projection")
    grad_rms_norm: bool = opt(True, "rescale the gradient to global RMS 1 every step")
    dense: bool = opt(False, "train the dense twin: no weight sparsity, same shapes")
    weight_frac: float = opt(0.125, "target kept fraction of hidden matrices (q,k,v,o,MLP); (0, 1]")
    embed_frac: float = opt(0.25, "target kept fraction of the embedding and unembedding; (0, 1]")
    min_per_neuron: int = opt(4, "nonzeros every neuron/channel keeps at least (j)")
    anneal_start: float = opt(0.01, "fraction of training at which sparsification starts")
    anneal_end: float = opt(0.5, "fraction of training at which the target L0 is reached")
    lr_l0_scaling: bool = opt(True, "multiply the lr by sqrt(L0_target / L0_now) while annealing")
    seed: int = opt(0, "seed of the initialisation and of the batch order")
    val_every: int = opt(250, "steps between validation-loss evaluations (0 = only at the end)")
    val_batches: int = opt(8, "validation batches per evaluation")
    ckpt_every: int = opt(500, "steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = opt(2, "most recent checkpoints kept in the run folder (>= 1)")
    log_every: int = opt(10, "steps between lines of metrics.jsonl")
    device: str = opt("auto", "torch device: auto (cuda if available) | cpu | cuda | cuda:N")
    precision: str = opt("auto", f"compute precision: {' | '.join(PRECISIONS)} (auto = bf16 on GPU, fp32 on CPU)")
    threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    compile: bool = opt(False, "torch.compile the forward pass (mostly useful on GPU; on CPU it needs a C++ compiler)")
    fused_adam: bool = opt(True, "use the fused Adam kernel when training on CUDA (never on CPU)")
    init_from: str = opt("", "checkpoint folder whose weights start the run: continued training with a fresh "
                         "optimizer and lr schedule (same shapes and tokenizer; empty = random init)")

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "val_batches", "keep_checkpoints", "log_every")
        require_at_least(self, 1, *positive)
        require_at_least(self, 0, "val_every", "ckpt_every", "threads", "min_per_neuron")
        for name in ("weight_frac", "embed_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"TrainConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"TrainConfig.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0.0 <= self.anneal_start <= self.anneal_end <= 1.0:
            raise ValueError("TrainConfig.anneal_start and anneal_end must satisfy 0 <= start <= end <= 1")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.lr and eps must be > 0 and weight_decay >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("TrainConfig.beta1 and beta2 must be in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not _DEVICE_RE.fullmatch(self.device):
            raise ValueError(f"TrainConfig.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def kept(self, step: int) -> dict[str, float]:
        """Scheduled kept fraction per weight group at a step (1.0 everywhere for the dense twin)."""
        if self.dense:
            return {"hidden": 1.0, "embed": 1.0}
        f = {"hidden": self.weight_frac, "embed": self.embed_frac}
        return {g: kept_fraction(step, self.steps, t, self.anneal_start, self.anneal_end) for g, t in f.items()}

    def lr_at(self, step: int) -> float:
        """Learning rate at a step: warmup, linear decay, times sqrt(L0_target / L0_now)."""
        warm = max(1, int(round(self.warmup_frac * self.steps)))
        base = self.lr * min((step + 1) / warm, max(0.0, (self.steps - step) / max(1, self.steps - warm)))
        if self.lr_l0_scaling and not self.dense:
            base *= math.sqrt(self.weight_frac / self.kept(step)["hidden"])
        return base


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def autocast_for(device: torch.device, precision: str) -> Any:
    """bf16 autocast on GPU (auto/bf16), nothing on CPU unless bf16 is asked for explicitly."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def lm_loss(model: Transformer, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy of `tokens[:, :-1] -> tokens[:, 1:]`, in nats."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())


@dataclass
class StepInput:
    tokens: Tensor  # [batch, n_ctx + 1]
    step: int
    lr: float
    kept: dict[str, float]


@dataclass
class StepOutput:
    loss: float
    grad_rms: float  # before rescaling


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.Adam:
    """Plain Adam; weight decay is applied by hand in `train_step`, after the projection.
    On CUDA with `fused_adam` the fused kernel runs it (same update, one launch)."""
    fused = cfg.fused_adam and next(model.parameters()).device.type == "cuda"
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                            fused=True if fused else None)


def decayed_params(model: Transformer) -> list[Tensor]:
    """Matrices that take weight decay: every 2-D weight except the bigram table."""
    return [p for n, p in model.named_parameters() if p.dim() == 2 and not n.endswith("W_bigram")]


def train_step(
    model: Transformer,
    opt_: torch.optim.Optimizer,
    cfg: TrainConfig,
    inp: StepInput,
    autocast: Callable[[], Any],
    forward: torch.nn.Module | None = None,
) -> StepOutput:
    """One optimisation step (see the module docstring for the order of operations).

    `forward` runs the forward pass instead of `model` itself: a DDP and/or `torch.compile` wrapper
    of `model` (the parameters, projection and decay are always `model`'s own).
    """
    with autocast():
        loss = lm_loss(forward if forward is not None else model, inp.tokens)  # type: ignore[arg-type]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum()
    n = sum(g.numel() for g in grads)
    grad_rms = (sq / n).sqrt()
    if cfg.grad_rms_norm:
        torch._foreach_div_(grads, grad_rms.clamp_min(1e-12).to(grads[0].dtype))
    for group in opt_.param_groups:
        group["lr"] = inp.lr
    opt_.step()
    opt_.zero_grad(set_to_none=True)
    project_weights(model, cfg, inp.kept)
    if cfg.weight_decay > 0:
        with torch.no_grad():
            torch._foreach_mul_(decayed_params(model), 1.0 - cfg.weight_decay * inp.lr)
    return StepOutput(loss=float(loss.detach()), grad_rms=float(grad_rms))


def project_weights(model: Transformer, cfg: TrainConfig, kept: dict[str, float]) -> None:
    """Project every sparse matrix onto its scheduled top-k set (no-op while fully dense)."""
    if cfg.dense:
        return
    params = dict(model.named_parameters())
    for sw in model.sparse_weights():
        frac = kept[sw.group]
        if frac >= 1.0:
            continue
        w = params[sw.name]
        k = target_nonzeros(tuple(w.shape), frac, cfg.min_per_neuron, sw.neuron_dim)
        project_(w, k, cfg.min_per_neuron, sw.neuron_dim)


def target_nonzeros_at(model: Transformer, cfg: TrainConfig, step: int) -> dict[str, int]:
    """Nonzero target of every sparse matrix at a step (numel for the dense twin)."""
    params = dict(model.named_parameters())
    kept = cfg.kept(step)
    return {
        sw.name: target_nonzeros(tuple(params[sw.name].shape), kept[sw.group], cfg.min_per_neuron, sw.neuron_dim)
        for sw in model.sparse_weights()
    }
