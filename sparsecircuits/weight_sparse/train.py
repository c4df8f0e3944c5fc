"""Training weight-sparse (and dense twin) transformers, after Gao et al. (2025).

One step (`train_step`):
  1. next-token cross-entropy on a batch (bf16 autocast on GPU, fp32 on CPU);
  2. gradients rescaled to global RMS 1 ("essential for stability" in Gao et al.);
  3. Adam, betas (0.9, 0.95), eps 0.1 by default, at the scheduled learning rate: 1% linear warmup,
     linear decay to zero, times sqrt(L0_target / L0_now) while the weights are being sparsified;
  4. weight sparsity: every matrix of `Transformer.sparse_weights()` keeps its top-k |w| with at
     least `min_per_neuron` per neuron (`model/sparsity.py`'s `project_`), k following the linear L0 schedule;
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.model.sparsity import project_, target_nonzeros
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.weight_sparse.config import TrainConfig  # torch-free, for the CLI


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
