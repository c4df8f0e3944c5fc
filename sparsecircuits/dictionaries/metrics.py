"""Dictionary quality: reconstruction, sparsity, and the model's loss with the dictionary spliced in.

`evaluate_dictionary(model, d, windows)` steps, per batch of token windows:
  1. run the clean model, caching the dictionary's input and output hooks, and record CE loss;
  2. encode the input: L0, per-feature firing counts, squared error and target variance (FVU);
  3. spliced run: the output hook's activation is replaced by the dictionary's prediction (for a
     transcoder the input is read at the input hook earlier in the same forward pass, so upstream
     changes propagate, as in Dunefsky et al. 2024); CE and KL(clean ‖ spliced);
  4. the same with the error added back (ŷ + (y − ŷ), must equal the clean loss: a check of the
     splice), with zero ablation and with mean ablation (mean over the evaluation tokens) of the output hook.
Fraction of loss recovered = (CE_ablated − CE_spliced) / (CE_ablated − CE_clean), against zero and mean
ablation. Dead = never fired on the evaluation tokens; dense = fires on more than `dense_threshold` of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.dictionaries.activations import hook_order
from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.transformer import Transformer


@torch.no_grad()
def fvu(recon: Float[Tensor, "n d"], target: Float[Tensor, "n d"]) -> float:
    """Fraction of variance unexplained: Σ‖y − ŷ‖² / Σ‖y − mean(y)‖² over tokens."""
    var = (target - target.mean(0)).pow(2).sum()
    return float((target - recon).pow(2).sum() / var.clamp_min(1e-12))


def density_histogram(density_F: Tensor, n_bins: int = 20, lo: float = 1e-6) -> tuple[list[int], list[float]]:
    """Histogram of log10 feature density (dead features are counted in the lowest bin)."""
    edges = torch.linspace(torch.log10(torch.tensor(lo)).item(), 0.0, n_bins + 1)
    logd = torch.log10(density_F.clamp_min(lo))
    counts = torch.histc(logd, bins=n_bins, min=float(edges[0]), max=float(edges[-1]))
    return [int(c) for c in counts], [float(e) for e in edges]


@dataclass
class DictEval:
    n_tokens: int
    l0: float
    fvu: float
    ce_clean: float
    ce_spliced: float
    ce_error_added: float  # spliced with the error term added back: equals ce_clean
    ce_zero: float
    ce_mean: float
    kl_spliced: float  # KL(clean ‖ spliced), nats/token
    dead_frac: float
    dense_frac: float
    density_hist: list[int] = field(default_factory=list)
    density_edges: list[float] = field(default_factory=list)  # log10 density edges

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fvu

    @property
    def recovered_zero(self) -> float:
        return (self.ce_zero - self.ce_spliced) / max(self.ce_zero - self.ce_clean, 1e-12)

    @property
    def recovered_mean(self) -> float:
        return (self.ce_mean - self.ce_spliced) / max(self.ce_mean - self.ce_clean, 1e-12)

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out.update(explained_variance=self.explained_variance, recovered_zero=self.recovered_zero,
                   recovered_mean=self.recovered_mean)
        return out


def splice_hooks(d: Dictionary, mode: str = "recon") -> list[tuple[str, HookFn]]:
    """Hooks that replace the output hook's activation by the dictionary's prediction.

    mode "recon": ŷ; "error_added": ŷ + (y − ŷ) computed explicitly (the Marks et al. decomposition).
    """
    cfg = d.cfg
    state: dict[str, Tensor] = {}

    def read(x: Tensor, hook: HookPoint) -> None:
        state["x"] = x

    def write(y: Tensor, hook: HookPoint) -> Tensor:
        x = state.pop("x") if cfg.is_transcoder else y
        out = d(x.float(), y.float())
        new = out.recon + out.error if mode == "error_added" else out.recon
        return new.to(y.dtype)

    return ([(cfg.hook, read)] if cfg.is_transcoder else []) + [(cfg.out_hook, write)]


def _ce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")


@torch.no_grad()
def evaluate_dictionary(
    model: Transformer, d: Dictionary, windows: list[Tensor], dense_threshold: float = 0.1
) -> DictEval:
    """Metrics of `d` on token windows `[batch, n_ctx + 1]` (inputs and next-token targets)."""
    cfg = d.cfg
    for h in (cfg.hook, cfg.out_hook):
        model.resolve_hook_names(h)
    if cfg.is_transcoder:
        hook_order(model, cfg.hook, cfg.out_hook)
    device = next(model.parameters()).device
    d = d.to(device).eval()
    model.eval()
    sums = dict.fromkeys(("clean", "spliced", "error_added", "zero", "mean", "kl", "l0", "sse"), 0.0)
    fired = torch.zeros(cfg.width, device=device)
    ys, n = [], 0
    cached = []
    for w in windows:
        tok, tgt = w[:, :-1].to(device), w[:, 1:].to(device)
        logits, cache = model.run_with_cache(tok, names_filter=list(dict.fromkeys([cfg.hook, cfg.out_hook])))
        x, y = cache[cfg.hook].float(), cache[cfg.out_hook].float()
        out = d(x, y)
        active = out.acts > 0
        fired += active.flatten(0, 1).float().sum(0)
        sums["l0"] += float(active.sum())
        sums["sse"] += float(out.error.pow(2).sum())
        ys.append(y.flatten(0, 1).double().sum(0))
        sums["clean"] += float(_ce(logits, tgt))
        logp_clean = logits.float().log_softmax(-1)
        with model.hooks(splice_hooks(d)):
            sp = model(tok)
        sums["spliced"] += float(_ce(sp, tgt))
        sums["kl"] += float(F.kl_div(sp.float().log_softmax(-1), logp_clean, log_target=True, reduction="sum"))
        with model.hooks(splice_hooks(d, "error_added")):
            sums["error_added"] += float(_ce(model(tok), tgt))
        with model.hooks([(cfg.out_hook, lambda a, hook: torch.zeros_like(a))]):
            sums["zero"] += float(_ce(model(tok), tgt))
        cached.append((tok, tgt, y))
        n += tok.numel()
    mean_y = (torch.stack(ys).sum(0) / n).float()
    var = sum(float((y - mean_y).pow(2).sum()) for _, _, y in cached)
    for tok, tgt, _ in cached:
        with model.hooks([(cfg.out_hook, lambda a, hook: mean_y.to(a.dtype).expand_as(a))]):
            sums["mean"] += float(_ce(model(tok), tgt))
    density = (fired / n).cpu()
    hist, edges = density_histogram(density)
    return DictEval(
        n_tokens=n, l0=sums["l0"] / n, fvu=sums["sse"] / max(var, 1e-12),
        ce_clean=sums["clean"] / n, ce_spliced=sums["spliced"] / n, ce_error_added=sums["error_added"] / n,
        ce_zero=sums["zero"] / n, ce_mean=sums["mean"] / n, kl_spliced=sums["kl"] / n,
        dead_frac=float((density == 0).float().mean()), dense_frac=float((density > dense_threshold).float().mean()),
        density_hist=hist, density_edges=edges,
    )
