"""Feature examples: top activating contexts and activation histograms for every feature at once.

A *feature source* maps the cached activations of a batch to feature activations `[batch, pos, F]`:
a dictionary's features (`dictionary_source`) or a hook's own channels, e.g. the MLP neurons at
`blocks.L.mlp.hook_post` (`neuron_source`). `feature_examples(model, source, windows)` steps:
  1. pass 1, streaming over the token windows: per batch, `torch.topk` over the batch's tokens for
     all features at once, merged with the running top-k (a `[k, F]` table) — no per-feature loops;
     firing counts give each feature's density;
  2. pass 2: rerun the batches holding a top example to read each example's context activations, and
     histogram every feature's nonzero activations into `n_bins` linear bins on [0, its max]
     (one `scatter_add` over feature·bin indices).

`FeatureExamples` layout (F features, K examples, C context tokens, B bins), saved by
`save_feature_examples` as `features.safetensors` (tensors) + `features.json` (the rest):
  top_acts      [F, K] float32  activation of each example, descending; 0 = empty slot
  top_window    [F, K] int64    index of the example's window in the evaluated windows (-1 = empty)
  top_pos       [F, K] int64    position of the example token in its window
  contexts      [F, K, C] int64 token ids of positions pos-C+1+after .. pos+after (-1 = outside the window)
  context_acts  [F, K, C] float16 the feature's activation on those tokens
  hist_counts   [F, B] int64    counts of nonzero activations per bin; bin b covers [b, b+1)·max_f/B
  density       [F] float32     fraction of evaluated tokens on which the feature fires
plus `hook`, `source` ("dictionary" or "neurons"), `n_tokens`, `context_after` (tokens after the
example included in its context). A node card shows `contexts[f]` (decoded with the model's
tokenizer) highlighted by `context_acts[f]`, and the histogram `hist_counts[f]` with max `top_acts[f, 0]`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.model.checkpoint import read_json, read_tensors
from sparsecircuits.model.transformer import Transformer

_TENSORS = ("top_acts", "top_window", "top_pos", "contexts", "context_acts", "hist_counts", "density")


@dataclass
class FeatureSource:
    """How to get `[batch, pos, F]` feature activations from cached hook activations."""

    hooks: list[str]
    width: int
    kind: str  # "dictionary" | "neurons"
    label: str  # the hook (and dictionary name) for display
    acts: Callable[[dict[str, Tensor]], Tensor]


def dictionary_source(d: Dictionary) -> FeatureSource:
    return FeatureSource([d.cfg.hook], d.cfg.width, "dictionary", d.cfg.hook,
                         lambda cache: d.encode(cache[d.cfg.hook].float()))


def neuron_source(model: Transformer, hook: str) -> FeatureSource:
    from sparsecircuits.dictionaries.activations import hook_widths

    width = hook_widths(model, [hook])[hook]
    return FeatureSource([hook], width, "neurons", hook, lambda cache: cache[hook].float())


@dataclass
class FeatureExamples:
    """See the module docstring for the layout."""

    top_acts: Tensor
    top_window: Tensor
    top_pos: Tensor
    contexts: Tensor
    context_acts: Tensor
    hist_counts: Tensor
    density: Tensor
    hook: str
    source: str
    n_tokens: int
    context_after: int


@torch.no_grad()
def feature_examples(
    model: Transformer,
    source: FeatureSource,
    windows: list[Tensor],
    k: int = 16,
    context: int = 16,
    context_after: int = 4,
    n_bins: int = 32,
) -> FeatureExamples:
    """Top-k contexts and histograms of every feature over `windows` (`[batch, pos]` token batches)."""
    if k < 1 or context < 1 or not 0 <= context_after < context or n_bins < 1:
        raise ValueError(f"need k >= 1, context >= 1, 0 <= context_after < context, n_bins >= 1; got {k}, "
                         f"{context}, {context_after}, {n_bins}")
    device = next(model.parameters()).device
    model.eval()
    F_ = source.width
    top_v = torch.zeros(k, F_, device=device)
    top_i = torch.full((k, F_), -1, dtype=torch.long, device=device)  # global token index
    fired = torch.zeros(F_, device=device)
    n, T = 0, None
    for w in windows:  # pass 1
        acts = _acts(model, source, w.to(device))
        B, T_, _ = acts.shape
        T = T_ if T is None else T
        if T_ != T:
            raise ValueError("all windows must have the same length")
        flat = acts.reshape(-1, F_)
        fired += (flat > 0).float().sum(0)
        kk = min(k, flat.shape[0])
        v, i = flat.topk(kk, dim=0)
        cat_v, cat_i = torch.cat([top_v, v]), torch.cat([top_i, i + n])
        top_v, sel = cat_v.topk(k, dim=0)
        top_i = cat_i.gather(0, sel)
        n += flat.shape[0]
    top_i = torch.where(top_v > 0, top_i, -1)
    top_v = top_v.clamp_min(0)
    assert T is not None
    per_window_rows = [w.shape[0] for w in windows]
    seq_starts = torch.tensor([0] + per_window_rows).cumsum(0)[:-1].to(device)  # first sequence of each batch
    seq = torch.where(top_i >= 0, top_i // T, -1)
    pos = torch.where(top_i >= 0, top_i % T, -1)
    C, after = context, context_after
    rel = torch.arange(C, device=device) - (C - 1 - after)  # [C]
    ctx_tok = torch.full((k, F_, C), -1, dtype=torch.long, device=device)
    ctx_act = torch.zeros(k, F_, C, device=device)
    hist = torch.zeros(F_ * n_bins, device=device)
    vmax = top_v[0].clamp_min(1e-12)  # [F]
    for b, w in enumerate(windows):  # pass 2
        w = w.to(device)
        acts = _acts(model, source, w)  # [Bw, T, F]
        flat = acts.reshape(-1, F_)
        nz = flat > 0
        bins = (flat / vmax * n_bins).long().clamp_(0, n_bins - 1) + torch.arange(F_, device=device) * n_bins
        hist.scatter_add_(0, bins[nz], torch.ones(int(nz.sum()), device=device))
        local = seq - seq_starts[b]
        here = (seq >= 0) & (local >= 0) & (local < w.shape[0])  # [k, F]
        if not here.any():
            continue
        kf = here.nonzero()  # [m, 2] (slot, feature)
        s_m, p_m, f_m = local[kf[:, 0], kf[:, 1]], pos[kf[:, 0], kf[:, 1]], kf[:, 1]
        cols = p_m[:, None] + rel  # [m, C]
        ok = (cols >= 0) & (cols < T)
        cc = cols.clamp(0, T - 1)
        ctx_tok[kf[:, 0], kf[:, 1]] = torch.where(ok, w[s_m[:, None], cc], -1)
        ctx_act[kf[:, 0], kf[:, 1]] = torch.where(ok, acts[s_m[:, None], cc, f_m[:, None]], 0.0)
    return FeatureExamples(
        top_acts=top_v.T.contiguous().cpu(), top_window=seq.T.contiguous().cpu(), top_pos=pos.T.contiguous().cpu(),
        contexts=ctx_tok.permute(1, 0, 2).contiguous().cpu(), context_acts=ctx_act.permute(1, 0, 2).half().cpu(),
        hist_counts=hist.view(F_, n_bins).long().cpu(), density=(fired / max(n, 1)).cpu(),
        hook=source.label, source=source.kind, n_tokens=n, context_after=after,
    )


def _acts(model: Transformer, source: FeatureSource, tokens: Tensor) -> Tensor:
    _, cache = model.run_with_cache(tokens, names_filter=source.hooks)
    return source.acts(cache.activations).float()


def save_feature_examples(ex: FeatureExamples, folder: Path) -> Path:
    """Write `features.safetensors` + `features.json` into `folder`, atomically."""
    from sparsecircuits.atomic import atomic_dir

    with atomic_dir(Path(folder)) as tmp:
        save_file({k: getattr(ex, k).contiguous() for k in _TENSORS}, str(tmp / "features.safetensors"))
        meta = {"hook": ex.hook, "source": ex.source, "n_tokens": ex.n_tokens, "context_after": ex.context_after,
                "format": "sparsecircuits-features-v1"}
        (tmp / "features.json").write_text(json.dumps(meta, indent=2))
    return Path(folder)


def load_feature_examples(folder: Path) -> FeatureExamples:
    folder = Path(folder)
    t = read_tensors(folder / "features.safetensors")
    meta = read_json(folder / "features.json")
    return FeatureExamples(**{k: t[k] for k in _TENSORS}, hook=meta["hook"], source=meta["source"],
                           n_tokens=int(meta["n_tokens"]), context_after=int(meta["context_after"]))
