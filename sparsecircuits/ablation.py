"""Masks, baselines and masked runs: the one way every method intervenes on the model (DESIGN.md).

A mask is a tensor over the nodes of one hook site (its channel shape, broadcast over batch and
positions); at that hook the activation becomes `m * x + (1 - m) * baseline`. Baselines:
  mean            per-channel mean over pretraining tokens (all positions; `mean_activations`)
  zero            0
  counterfactual  the activation of the paired counterfactual prompt (same shape as x)
and, for the component graph (`component_circuits/component_graph.py`, `ABLATIONS`):
  position-mean   per position, the mean over a reference set of prompts aligned on their last
                  (answer) position (Lan et al. 2024 take it over the corrupted prompts;
                  `position_mean`)
  resample        the activation of another, randomly drawn reference prompt, aligned on the answer
                  position (`resample_aligned`; causal scrubbing's resampling ablation)
`NodeSite` lists the prunable sites of a weight-sparse model (Gao et al. 2025): per layer the
attention read channels, q, k, v channels, attention write channels, MLP read channels, MLP
neurons and MLP write channels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparsecircuits.ablation_names import ABLATIONS, BASELINES  # noqa: F401  (defined without torch, re-exported)
from sparsecircuits.graph import Circuit
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.transformer import Transformer


@dataclass(frozen=True)
class NodeSite:
    hook: str  # hook name
    kind: str  # Node kind of its nodes
    layer: int
    shape: tuple[int, ...]  # channel shape (trailing dims of the activation)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def prune_sites(model: Transformer) -> list[NodeSite]:
    """The eight node sites per layer of Gao et al., in forward order."""
    cfg = model.cfg
    H, KV, dh, d = cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model
    sites = []
    for L in range(cfg.n_layers):
        p = f"blocks.{L}"
        sites += [
            NodeSite(f"{p}.ln1.hook_normalized", "resid_read", L, (d,)),
            NodeSite(f"{p}.attn.hook_q", "q", L, (H, dh)),
            NodeSite(f"{p}.attn.hook_k", "k", L, (KV, dh)),
            NodeSite(f"{p}.attn.hook_v", "v", L, (KV, dh)),
            NodeSite(f"{p}.hook_attn_out", "resid_write", L, (d,)),
            NodeSite(f"{p}.ln2.hook_normalized", "resid_read", L, (d,)),
            NodeSite(f"{p}.mlp.hook_post", "neuron", L, (cfg.d_mlp,)),
            NodeSite(f"{p}.hook_mlp_out", "resid_write", L, (d,)),
        ]
    return sites


def mask_hook(mask: Tensor, baseline: Tensor | None) -> HookFn:
    """Hook replacing x by m * x + (1 - m) * baseline (baseline None = zero)."""

    def fn(x: Tensor, hook: HookPoint) -> Tensor:
        m = mask.to(x.dtype)
        if baseline is None:
            return x * m
        # One kernel instead of three; exact at m = 0 and m = 1 (torch.lerp returns end at weight 1).
        return torch.lerp(baseline.to(x.dtype), x, m)

    return fn


def masked_hooks(masks: dict[str, Tensor], baselines: dict[str, Tensor] | None) -> list[tuple[str, HookFn]]:
    """Hooks applying every mask with its baseline (missing baseline = zero ablation)."""
    base = baselines or {}
    return [(hook, mask_hook(m, base.get(hook))) for hook, m in masks.items()]


@torch.no_grad()
def counterfactual_baselines(model: Transformer, cf_tokens: Tensor, hooks: list[str]) -> dict[str, Tensor]:
    """Activations of the counterfactual prompts at the given hooks (full model, no masks)."""
    _, cache = model.run_with_cache(cf_tokens, names_filter=hooks)
    return {h: cache[h] for h in hooks}


def channel_hooks(model: Transformer) -> list[str]:
    """Hook points whose activation is [batch, pos, *channels] (not attention scores/patterns, and not the
    per-head split inputs, which would switch every block to split mode and copy the residual per head)."""
    skip = ("hook_attn_scores", "hook_pattern", "hook_scale", "hook_q_input", "hook_k_input", "hook_v_input")
    return [n for n in model.hook_points if not n.endswith(skip)]


@torch.no_grad()
def mean_activations(model: Transformer, batches: list[Tensor]) -> dict[str, Float[Tensor, "..."]]:
    """Per-channel mean of every channel hook over all tokens of `batches` ([batch, pos] each)."""
    hooks = channel_hooks(model)
    sums: dict[str, Tensor] = {}
    count = 0
    device = next(model.parameters()).device
    for b in batches:
        _, cache = model.run_with_cache(b.to(device), names_filter=hooks)
        for h in hooks:
            s = cache[h].double().sum(dim=(0, 1))
            sums[h] = s if h not in sums else sums[h] + s
        count += b.shape[0] * b.shape[1]
    return {h: (s / count).float().cpu() for h, s in sums.items()}


def _offset_slots(lengths: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Per position of each prompt, its slot = distance from the prompt's last position + width - 1
    (last position -> width - 1), and whether it is a real (non-padding) position."""
    off = torch.arange(width).unsqueeze(0) - (lengths.cpu().unsqueeze(1) - 1)
    return (off + width - 1).clamp(0, 2 * width - 2), (off <= 0) & (off > -lengths.cpu().unsqueeze(1))


def position_mean(ref: Float[Tensor, "m pos *ch"], ref_lengths: Tensor,
                  lengths: Tensor | None = None, width: int | None = None) -> Float[Tensor, "n pos *ch"]:
    """Per-position means of reference activations, aligned on the prompts' last position.

    Returned in the layout of n target prompts (`lengths`; default the reference prompts themselves,
    `width` positions, default the reference's): position t of prompt i gets the mean over reference
    prompts of their position at the same distance from the end; positions no reference reaches and
    padding get 0."""
    m, rw = ref.shape[:2]
    lengths = ref_lengths if lengths is None else lengths
    width = rw if width is None else width
    span = max(rw, width)
    slot, ok = _offset_slots(ref_lengths, rw)
    slot = slot + span - rw
    flat = ref.reshape(m, rw, -1).double()
    dev = ref.device
    sums = torch.zeros(2 * span - 1, flat.shape[-1], dtype=torch.float64, device=dev)
    counts = torch.zeros(2 * span - 1, dtype=torch.float64, device=dev)
    sums.index_add_(0, slot[ok].to(dev), flat[ok.to(dev)])
    counts.index_add_(0, slot[ok].to(dev), torch.ones(int(ok.sum()), dtype=torch.float64, device=dev))
    table = sums / counts.clamp(min=1).unsqueeze(1)
    tslot, tok = _offset_slots(lengths, width)
    out = table[(tslot + span - width).to(dev)] * tok.to(dev).unsqueeze(-1)
    return out.to(ref.dtype).view(len(lengths), width, *ref.shape[2:])


def resample_aligned(ref: Float[Tensor, "m pos *ch"], ref_lengths: Tensor, lengths: Tensor,
                     generator: torch.Generator) -> Float[Tensor, "n pos *ch"]:
    """Resampling ablation: for each of n prompts (`lengths`), the activations of a random reference
    prompt aligned on the last position (same layout and width as `ref`); positions the donor is too
    short for get the reference position mean."""
    m, width = ref.shape[:2]
    n = len(lengths)
    donor = torch.randint(0, m, (n,), generator=generator)
    src = torch.arange(width).unsqueeze(0) - lengths.cpu().unsqueeze(1) + ref_lengths.cpu()[donor].unsqueeze(1)
    ok = (src >= 0) & (src < width)
    picked = ref[donor.unsqueeze(1).to(ref.device), src.clamp(0, width - 1).to(ref.device)]
    fallback = position_mean(ref, ref_lengths, lengths, width)
    shape = (n, width) + (1,) * (ref.dim() - 2)
    return torch.where(ok.to(ref.device).view(shape), picked, fallback)


def weights_fingerprint(model: Transformer) -> str:
    """sha256 over the model's config and parameters (identifies a checkpoint's weights)."""
    h = hashlib.sha256(repr(sorted(model.cfg.to_dict().items())).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_means(
    model: Transformer, tokens: np.ndarray, cache_dir: Path, n_seqs: int = 64, seed: int = 1234
) -> dict[str, Tensor]:
    """Mean baselines over `n_seqs` pretraining windows, cached per (weights, data, n_seqs, seed)."""
    from sparsecircuits.data.batches import sample_batch

    n_ctx = model.cfg.n_ctx
    key = hashlib.sha256(
        f"{weights_fingerprint(model)}:{len(tokens)}:{int(tokens[:4096].sum())}:{n_seqs}:{seed}".encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / "means" / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))
    per = 16
    batches = [sample_batch(tokens, min(per, n_seqs - i), n_ctx, seed, i)[:, :-1] for i in range(0, n_seqs, per)]
    means = mean_activations(model, batches)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(means, str(tmp))
    tmp.replace(path)
    return means


def circuit_masks(circuit: Circuit, sites: list[NodeSite]) -> dict[str, Tensor]:
    """Masks that keep exactly a circuit's nodes at the given sites (1 = kept)."""
    by_site: dict[str, list[int]] = {}
    for n in circuit.nodes:
        by_site.setdefault(n.site, []).append(n.index)
    masks = {}
    for s in sites:
        m = torch.zeros(s.size)
        if s.hook in by_site:
            m[torch.tensor(by_site[s.hook])] = 1.0
        masks[s.hook] = m.view(s.shape)
    return masks


def checkpoint_means(model: Transformer, meta: dict, tokenizer: object, cache_dir: Path) -> dict[str, Tensor]:
    """Mean baselines of a trained checkpoint over its own pretraining corpus (from its metadata;
    the stdlib when it has none), tokenized with its tokenizer. Cached."""
    from sparsecircuits.data.batches import checkpoint_corpus

    corpus = checkpoint_corpus(meta, tokenizer, Path(cache_dir))  # type: ignore[arg-type]
    return cached_means(model, corpus.train, Path(cache_dir))
