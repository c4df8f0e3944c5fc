"""Per-node activation data for the circuit page, computed in batch over corpus windows: the top
activating contexts of every node and a histogram of its activations.

Steps of `node_activations` (one pass, whatever the number of nodes):
  1. group the channel nodes by hook site; each node is one channel of its site's activation,
     flattened over trailing dims (q channels are `head * d_head + i`, as in `graph.Node`);
  2. for each batch of windows, `run_with_cache` filtered to those sites only, gather the circuit's
     channels into one `[batch, pos, node]` tensor;
  3. per window and node take the position of largest |activation| (one context per window, so
     the top contexts are distinct windows; |x| because channels are signed and AbsTopK keeps by
     magnitude), then merge with the running best with `torch.topk` over windows, all nodes at once;
  4. keep activations of the first `hist_tokens` tokens and, after the pass, bin each node's
     nonzero values between its own min and max with one `bincount` over all nodes (zeros are
     counted apart: in a model with activation sparsity most values are exactly 0).
`context_rows` cuts the token windows around each top position for display.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.graph import Node
from sparsecircuits.model.transformer import Transformer

# Kinds whose nodes are single channels of a hook site's activation (contexts make sense for them).
CHANNEL_KINDS = frozenset({"resid_read", "q", "k", "v", "resid_write", "neuron", "embed"})


@dataclass
class NodeActivations:
    """Step 3 and 4 results for `n` nodes (in the order they were given)."""

    top_value: Float[Tensor, "n k"]  # signed activation at the top positions (NaN where fewer than k windows)
    top_window: Int[Tensor, "n k"]  # window index
    top_pos: Int[Tensor, "n k"]  # position in the window
    hist: Int[Tensor, "n bins"]  # counts of nonzero activations per bin
    hist_lo: Float[Tensor, " n"]
    hist_hi: Float[Tensor, " n"]
    zeros: Int[Tensor, " n"]  # exact zeros among the histogram tokens
    hist_tokens: int  # tokens the histogram counts


def channel_nodes(nodes: list[Node], model: Transformer) -> list[int]:
    """Positions (in `nodes`) of the nodes that are channels of one of the model's hook sites."""
    points = model.hook_points
    return [i for i, n in enumerate(nodes) if n.kind in CHANNEL_KINDS and n.site in points and n.index >= 0]


@torch.no_grad()
def node_activations(
    model: Transformer, nodes: list[Node], windows: Int[Tensor, "w pos"], k: int = 8, bins: int = 32,
    batch_size: int = 16, hist_tokens: int = 8192,
) -> NodeActivations:
    """Steps 1-4 of the module docstring for channel nodes (see `channel_nodes`)."""
    sites: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        sites.setdefault(n.site, []).append(j)
    order = [j for js in sites.values() for j in js]  # node positions in gather order
    index = {s: torch.tensor([nodes[j].index for j in js]) for s, js in sites.items()}
    n_nodes = len(nodes)
    device = next(model.parameters()).device
    best_abs_KN = torch.full((0, n_nodes), -1.0)
    best_val_KN = torch.zeros(0, n_nodes)
    best_win_KN = torch.zeros(0, n_nodes, dtype=torch.long)
    best_pos_KN = torch.zeros(0, n_nodes, dtype=torch.long)
    kept: list[Tensor] = []
    n_kept = 0
    for start in range(0, len(windows), batch_size):
        batch_BT = windows[start : start + batch_size].to(device)
        _, cache = model.run_with_cache(batch_BT, names_filter=list(sites))
        parts = [cache[s].flatten(2)[..., index[s].to(device)] for s in sites]
        acts_BTN = torch.cat(parts, dim=-1).float().cpu()[..., torch.argsort(torch.tensor(order))]
        abs_BN, pos_BN = acts_BTN.abs().max(dim=1)
        val_BN = acts_BTN.gather(1, pos_BN.unsqueeze(1)).squeeze(1)
        win_BN = (torch.arange(len(batch_BT)) + start).unsqueeze(1).expand_as(pos_BN)
        cand_abs = torch.cat([best_abs_KN, abs_BN])
        top = torch.topk(cand_abs, min(k, len(cand_abs)), dim=0).indices
        best_abs_KN = cand_abs.gather(0, top)
        best_val_KN = torch.cat([best_val_KN, val_BN]).gather(0, top)
        best_win_KN = torch.cat([best_win_KN, win_BN]).gather(0, top)
        best_pos_KN = torch.cat([best_pos_KN, pos_BN]).gather(0, top)
        if n_kept < hist_tokens:
            flat = acts_BTN.reshape(-1, n_nodes)[: hist_tokens - n_kept]
            kept.append(flat)
            n_kept += len(flat)
    hist, lo, hi, zeros = _histograms(torch.cat(kept) if kept else torch.zeros(0, n_nodes), bins)
    pad = k - len(best_val_KN)
    if pad > 0:  # fewer windows than k: pad with NaN values
        best_val_KN = torch.cat([best_val_KN, torch.full((pad, n_nodes), float("nan"))])
        best_win_KN = torch.cat([best_win_KN, torch.zeros(pad, n_nodes, dtype=torch.long)])
        best_pos_KN = torch.cat([best_pos_KN, torch.zeros(pad, n_nodes, dtype=torch.long)])
    return NodeActivations(best_val_KN.T, best_win_KN.T, best_pos_KN.T, hist, lo, hi, zeros, n_kept)


def _histograms(acts_TN: Float[Tensor, "tok n"], bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 4: per-node histograms of the nonzero values, all nodes in one bincount."""
    n = acts_TN.shape[1]
    nonzero = acts_TN != 0
    big = torch.finfo(acts_TN.dtype).max
    lo = torch.where(nonzero, acts_TN, big).amin(0) if len(acts_TN) else torch.zeros(n)
    hi = torch.where(nonzero, acts_TN, -big).amax(0) if len(acts_TN) else torch.zeros(n)
    empty = ~nonzero.any(0) if len(acts_TN) else torch.ones(n, dtype=torch.bool)
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    width = (hi - lo).clamp_min(1e-12)
    b_TN = ((acts_TN - lo) / width * bins).long().clamp(0, bins - 1)
    codes = (b_TN + torch.arange(n) * bins)[nonzero]
    hist = torch.bincount(codes, minlength=n * bins).view(n, bins)
    return hist, lo, hi, (~nonzero).sum(0)


def context_rows(windows: Int[Tensor, "w pos"], acts: NodeActivations, before: int = 12,
                 after: int = 3) -> list[list[dict]]:
    """Per node, its top contexts as {tokens, at, value}: `before` tokens before the top position and
    `after` after it, `at` = the top token's position in `tokens`."""
    out = []
    wins, poss, vals = acts.top_window.tolist(), acts.top_pos.tolist(), acts.top_value.tolist()
    for w_row, p_row, v_row in zip(wins, poss, vals):
        rows = []
        for w, p, v in zip(w_row, p_row, v_row):
            if v != v or v == 0.0:  # NaN padding, or a node that never fires
                continue
            lo = max(0, p - before)
            rows.append({"tokens": windows[w, lo : p + after + 1].tolist(), "at": p - lo, "value": v})
        out.append(rows)
    return out
