"""Bridged interventions: edit a residual channel of the weight-sparse model and carry the edit into the
dense model through the bridges (Gao et al. 2025, arXiv 2511.13653, "Bridges": edits in the sparse
model steer the dense one).

An `Intervention` acts on channels of the sparse residual stream at one bridge site: `ablate` sets
them to a baseline (the sparse model's mean activation there, or zero), `steer` adds `alpha`.
`bridged_intervention` steps, on a task's prompts:
  1. direct, in the sparse model: h_s' = edit(h_s) at the site (all positions);
  2. bridged, in the dense model: h_d' = h_d + dec(edit(enc(h_d))) - dec(enc(h_d)), so the dense
     activation moves only by the decoded change of the edited code (the bridge's reconstruction
     error stays in h_d);
  3. the task metric (logit difference, `tasks.base.logit_diff`) of both models with and without the
     edit, per prompt: the change in the sparse model is the prediction, the change in the dense
     model the outcome. `InterventionResult.summary()` gives the means, the fraction of prompts
     whose changes agree in sign, and their correlation.
Channel choices: explicit, from a circuit's residual-channel nodes (`circuit_channels`), or the ones
with the largest direct effect in the sparse model (`channel_effects`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.graph import Circuit
from sparsecircuits.model.hooks import HookPoint
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData, last_logits, logit_diff
from sparsecircuits.weight_sparse.bridges import Bridges
from sparsecircuits.weight_sparse.config import MODES  # torch-free, for the CLI


@dataclass
class Intervention:
    site: str  # a bridge site, e.g. "blocks.1.hook_resid_mid"
    channels: tuple[int, ...]  # channels of the sparse residual stream
    mode: str  # "ablate" | "steer"
    alpha: float = 0.0  # steer: added to each channel
    baseline: Tensor | None = None  # ablate: [d_sparse] values (e.g. the mean); None = zero

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.mode not in MODES:
            raise ValueError(f"Intervention.mode must be one of {MODES}, got {self.mode!r}")
        if not self.channels:
            raise ValueError("Intervention.channels must name at least one channel")

    def check(self, bridges: Bridges) -> None:
        """ValueError if the site has no bridge or a channel is out of range."""
        bridges.index(self.site)
        bad = [c for c in self.channels if not 0 <= c < bridges.d_sparse]
        if bad:
            raise ValueError(f"channels {bad} out of range: the sparse residual stream has {bridges.d_sparse} "
                             f"channels (0..{bridges.d_sparse - 1})")
        if self.baseline is not None and self.baseline.shape != (bridges.d_sparse,):
            raise ValueError(f"Intervention.baseline must have shape ({bridges.d_sparse},), got {tuple(self.baseline.shape)}")


def apply_intervention(z: Float[Tensor, "... d_sparse"], iv: Intervention) -> Float[Tensor, "... d_sparse"]:
    """The edited sparse residual: channels set to the baseline (ablate) or shifted by alpha (steer)."""
    out = z.clone()
    idx = torch.tensor(iv.channels, device=z.device)
    if iv.mode == "steer":
        out[..., idx] += iv.alpha
    elif iv.baseline is None:
        out[..., idx] = 0.0
    else:
        out[..., idx] = iv.baseline.to(z)[idx]
    return out


def _diff(model: Transformer, data: TaskData, hooks: list[Any]) -> Tensor:
    with model.hooks(hooks):
        return logit_diff(last_logits(model(data.tokens), data.lengths), data)


@dataclass
class InterventionResult:
    site: str
    channels: tuple[int, ...]
    mode: str
    dense_clean: Tensor  # [n] logit differences
    dense_edit: Tensor
    sparse_clean: Tensor
    sparse_edit: Tensor

    @property
    def dense_change(self) -> Tensor:
        return self.dense_edit - self.dense_clean

    @property
    def sparse_change(self) -> Tensor:
        return self.sparse_edit - self.sparse_clean

    def summary(self) -> dict[str, Any]:
        d, s = self.dense_change, self.sparse_change
        corr = float(torch.corrcoef(torch.stack([d, s]))[0, 1]) if len(d) > 1 else float("nan")
        return {
            "site": self.site, "channels": list(self.channels), "mode": self.mode, "n_prompts": len(d),
            "dense_clean_mean": float(self.dense_clean.mean()), "sparse_clean_mean": float(self.sparse_clean.mean()),
            "dense_change_mean": float(d.mean()), "sparse_change_mean": float(s.mean()),
            "sign_agreement": float((torch.sign(d) == torch.sign(s)).float().mean()),
            "same_direction": bool(torch.sign(d.mean()) == torch.sign(s.mean())),
            "correlation": corr,
            "per_prompt": [{"dense_change": float(a), "sparse_change": float(b)} for a, b in zip(d, s)],
        }


@torch.no_grad()
def bridged_intervention(
    dense: Transformer, sparse: Transformer, bridges: Bridges, data: TaskData, iv: Intervention
) -> InterventionResult:
    """Steps 1-3 of the module docstring."""
    iv.check(bridges)

    def direct(h: Tensor, hook: HookPoint) -> Tensor:
        return apply_intervention(h, iv)

    def bridged(h: Tensor, hook: HookPoint) -> Tensor:
        z = bridges.encode(iv.site, h)
        return h + bridges.decode(iv.site, apply_intervention(z, iv)) - bridges.decode(iv.site, z)

    return InterventionResult(
        iv.site, iv.channels, iv.mode,
        dense_clean=_diff(dense, data, []), dense_edit=_diff(dense, data, [(iv.site, bridged)]),
        sparse_clean=_diff(sparse, data, []), sparse_edit=_diff(sparse, data, [(iv.site, direct)]),
    )


@torch.no_grad()
def channel_effects(
    sparse: Transformer, data: TaskData, site: str, mode: str, alpha: float = 0.0, baseline: Tensor | None = None
) -> Float[Tensor, " d_sparse"]:
    """Mean change of the sparse model's logit difference when each channel alone is edited at `site`."""
    clean = _diff(sparse, data, []).mean()
    out = torch.zeros(sparse.cfg.d_model)
    for c in range(sparse.cfg.d_model):
        iv = Intervention(site, (c,), mode, alpha, baseline)
        out[c] = _diff(sparse, data, [(site, lambda h, hook, iv=iv: apply_intervention(h, iv))]).mean() - clean
    return out


def circuit_channels(circuit: Circuit, site: str, n_layers: int) -> list[int]:
    """Residual channels of `site` that a pruned circuit (Gao et al.) keeps.

    The residual basis is shared by every reader and writer, so a channel read by `ln1` of block i is
    channel c of `blocks.i.hook_resid_pre`, one read by `ln2` or written by attention is c of
    `blocks.i.hook_resid_mid`, and one written by the MLP is c of `blocks.i.hook_resid_post` (=
    `blocks.{i+1}.hook_resid_pre`)."""
    def resid_site(node_site: str, layer: int) -> str | None:
        if node_site.endswith("ln1.hook_normalized"):
            return f"blocks.{layer}.hook_resid_pre"
        if node_site.endswith(("ln2.hook_normalized", "hook_attn_out")):
            return f"blocks.{layer}.hook_resid_mid"
        if node_site.endswith("hook_mlp_out"):
            return f"blocks.{layer + 1}.hook_resid_pre" if layer + 1 < n_layers else f"blocks.{layer}.hook_resid_post"
        return None

    found = {n.index for n in circuit.nodes if n.kind in ("resid_read", "resid_write")
             and resid_site(n.site, n.layer) == site}
    return sorted(found)
