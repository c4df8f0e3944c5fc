"""Dictionary architectures, each registered in `ARCHITECTURES` (see `base.py` for the interface).

* `relu` — ReLU SAE (Bricken et al. 2023, "Towards Monosemanticity"; Anthropic's April 2024 update):
  z = ReLU(pre); penalty l1 · Σ_i z_i ‖W_dec,i‖, so the decoder norm is free (no unit-norm
  constraint). Dead features are resampled during training (`train.resample_dead_`).
* `topk` — TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the k
  largest pre-activations per token, then ReLU. No penalty; dead features get the auxiliary-k loss
  (`aux_k_loss`): the k_aux largest dead pre-activations must reconstruct the residual error.
* `batchtopk` — BatchTopK (Bussmann et al. 2024): keep the k·B largest activations over the whole
  batch, so the per-token count varies. For inference a single threshold θ (an exponential moving
  average of the smallest kept activation) replaces the batch: z = pre · 1[pre > θ]. Saved as
  JumpReLU with θ for every feature.
* `jumprelu` — JumpReLU (Rajamanoharan et al. 2024, "Jumping ahead"): z = pre · H(pre − θ_i) with a
  learned θ_i = exp(log θ_i) > 0. Straight-through estimators with a rectangle kernel of width ε give
  θ its gradient, both through the output (−θ/ε · K((pre − θ)/ε)) and through the L0 penalty
  l0 · Σ_i H(pre − θ_i) (−1/ε · K(...)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparsecircuits.dictionaries.base import (
    DictConfig,
    Dictionary,
    SparsityCoefs,
    SparsityTerms,
    rectangle,
    register,
)

JUMPRELU_THRESHOLD_INIT = 0.1  # in units of normalised pre-activations (order 1)
BATCHTOPK_THRESHOLD_MOMENTUM = 0.99


@register
class ReLUDictionary(Dictionary):
    arch = "relu"
    unit_decoder = False

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def sparsity_terms(self, x_BD: Tensor, pre_BF: Tensor, coefs: SparsityCoefs) -> SparsityTerms:
        acts_BF = torch.relu(pre_BF)
        penalty = coefs.l1 * (acts_BF * self.W_dec.norm(dim=1)).sum(-1).mean()
        return SparsityTerms(acts_BF, penalty)


def topk_per_token(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of the last dimension, then ReLU; the rest are 0."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


@register
class TopKDictionary(Dictionary):
    arch = "topk"
    uses_k = True

    def activation(self, pre: Tensor) -> Tensor:
        return topk_per_token(pre, self.cfg.k)

    def sparsity_terms(self, x_BD: Tensor, pre_BF: Tensor, coefs: SparsityCoefs) -> SparsityTerms:
        # Keep (indices, values) so training decodes sparsely (k decoder rows per token). The
        # encoder side stays dense: on CPU a dense [batch, width] gradient matmul is faster than
        # gathering k encoder columns per token (measured 38k vs 17k tokens/s at width 1024).
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=-1, sorted=False)
        vals_BK = torch.relu(vals_BK)
        acts_BF = torch.zeros_like(pre_BF).scatter(-1, idx_BK, vals_BK.detach())
        return SparsityTerms(acts_BF, pre_BF.new_zeros(()), indices=idx_BK, values=vals_BK)


@register
class BatchTopKDictionary(Dictionary):
    arch = "batchtopk"
    uses_k = True
    has_threshold = True

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        # < 0 means "not estimated yet": inference then falls back to per-token top-k.
        self.register_buffer("threshold", torch.tensor(-1.0))

    def activation(self, pre: Tensor) -> Tensor:
        if float(self.threshold) < 0:
            return topk_per_token(pre, self.cfg.k)
        return pre * (pre > self.threshold)

    def sparsity_terms(self, x_BD: Tensor, pre_BF: Tensor, coefs: SparsityCoefs) -> SparsityTerms:
        acts_BF = torch.relu(pre_BF)
        flat = acts_BF.flatten()
        vals, idx = flat.topk(min(self.cfg.k * pre_BF.shape[0], flat.numel()), sorted=False)
        kept = torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts_BF)
        with torch.no_grad():
            pos = vals[vals > 0]
            if pos.numel():
                lo = pos.min()
                m = BATCHTOPK_THRESHOLD_MOMENTUM
                new = lo if float(self.threshold) < 0 else m * self.threshold + (1 - m) * lo
                self.threshold.copy_(new)
        return SparsityTerms(kept, pre_BF.new_zeros(()))

    def threshold_vector(self) -> Tensor | None:
        return self.threshold.clamp_min(0).expand(self.cfg.width).clone()

    @torch.no_grad()
    def load_threshold(self, threshold: Tensor) -> None:
        if threshold.numel() and not torch.equal(threshold, threshold[:1].expand_as(threshold)):
            raise ValueError("a BatchTopK dictionary has one threshold for all features; got differing values")
        self.threshold.copy_(threshold[0] if threshold.numel() else torch.tensor(-1.0))


class _JumpReLUFn(torch.autograd.Function):
    """z = pre · H(pre − θ); d/dpre = H(pre − θ); d/dθ = −(θ/ε) K((pre − θ)/ε) (pseudo-derivative)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pre = grad * (pre > theta)
        g_theta = (grad * -(theta / eps) * rectangle((pre - theta) / eps)).reshape(-1, theta.shape[-1]).sum(0)
        return g_pre, g_theta, None


class _StepFn(torch.autograd.Function):
    """H(pre − θ); d/dθ = −(1/ε) K((pre − θ)/ε); no gradient to pre (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = (grad * -(1.0 / eps) * rectangle((pre - theta) / eps)).reshape(-1, theta.shape[-1]).sum(0)
        return None, g_theta, None


def jumprelu(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU with the straight-through threshold gradient."""
    return _JumpReLUFn.apply(pre, theta, bandwidth)


def step_l0(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """Per-entry H(pre − θ) with the straight-through threshold gradient (sum it for L0)."""
    return _StepFn.apply(pre, theta, bandwidth)


@register
class JumpReLUDictionary(Dictionary):
    arch = "jumprelu"
    has_threshold = True

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.width,), math.log(JUMPRELU_THRESHOLD_INIT)))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        theta = self.threshold
        return pre * (pre > theta)

    def sparsity_terms(self, x_BD: Tensor, pre_BF: Tensor, coefs: SparsityCoefs) -> SparsityTerms:
        theta = self.threshold
        acts_BF = jumprelu(pre_BF, theta, coefs.bandwidth)
        penalty = coefs.l0 * step_l0(pre_BF, theta, coefs.bandwidth).sum(-1).mean()
        return SparsityTerms(acts_BF, penalty)

    def threshold_vector(self) -> Tensor | None:
        return self.threshold.detach().clone()

    @torch.no_grad()
    def load_threshold(self, threshold: Tensor) -> None:
        if (threshold <= 0).any():
            # Gemma Scope thresholds are positive; a zero threshold is a plain ReLU for that feature.
            threshold = threshold.clamp_min(torch.finfo(threshold.dtype).tiny)
        self.log_threshold.copy_(threshold.log())


def aux_k_loss(d: Dictionary, pre_BF: Tensor, residual_BD: Tensor, dead_F: Tensor, k_aux: int) -> Tensor:
    """Auxiliary-k loss of Gao et al. (2024): reconstruct the main reconstruction's residual with the
    `k_aux` largest pre-activations among dead features, normalised by the residual's variance.

    Returns 0 when no feature is dead.
    """
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return pre_BF.new_zeros(())
    k = min(k_aux, n_dead)
    masked = pre_BF.masked_fill(~dead_F, float("-inf"))
    vals, idx = masked.topk(k, dim=-1, sorted=False)
    acts_BF = torch.zeros_like(pre_BF).scatter(-1, idx, torch.relu(vals))
    recon_BD = acts_BF @ d.W_dec
    target = residual_BD.detach()
    denom = (target - target.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (recon_BD - target).pow(2).sum(-1).mean() / denom
