"""Per-node activation data for the circuit page, computed in batch over corpus windows: the top
activating contexts of every node, for each sign, and a histogram and statistics of its activations.

Steps of `node_activations` (one pass, whatever the number of nodes):
  1. group the channel nodes by hook site; each node is one channel of its site's activation,
     flattened over trailing dims (q channels are `head * d_head + i`, as in `graph.Node`);
  2. for each batch of windows, `run_with_cache` filtered to those sites only, gather the circuit's
     channels into one `[batch, pos, node]` tensor;
  3. per window and node take the position of the largest and of the smallest activation (one
     context per window and sign, so the top contexts are distinct windows), then merge each with
     the running best with `torch.topk` over windows, all nodes at once. Both signs, because channels
     are signed and AbsTopK keeps by magnitude: a node that mostly fires negative (a k channel of a
     sparse model) would otherwise show only its negative contexts, and vice versa;
  4. keep activations of the first `hist_tokens` tokens and, after the pass, bin each node's
     nonzero values between its own min and max with one `bincount` over all nodes (zeros are
     counted apart: in a model with activation sparsity most values are exactly 0); mean and
     standard deviation over the same tokens.
`context_rows` cuts the token windows around each top position for display (positive values from
`top_*`, negative ones from `bottom_*`).
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

    top_value: Float[Tensor, "n k"]  # largest activation per window, descending (NaN where fewer than k windows)
    top_window: Int[Tensor, "n k"]  # window index
    top_pos: Int[Tensor, "n k"]  # position in the window
    bottom_value: Float[Tensor, "n k"]  # smallest activation per window, ascending (most negative first)
    bottom_window: Int[Tensor, "n k"]
    bottom_pos: Int[Tensor, "n k"]
    hist: Int[Tensor, "n bins"]  # counts of nonzero activations per bin
    hist_lo: Float[Tensor, " n"]
    hist_hi: Float[Tensor, " n"]
    zeros: Int[Tensor, " n"]  # exact zeros among the histogram tokens
    mean: Float[Tensor, " n"]  # over the histogram tokens, zeros included
    std: Float[Tensor, " n"]
    hist_tokens: int  # tokens the histogram counts


class _Best:
    """The running top-k windows of one sign (step 3): values [k, n] and where they are."""

    def __init__(self, n_nodes: int) -> None:
        self.value = torch.zeros(0, n_nodes)
        self.window = torch.zeros(0, n_nodes, dtype=torch.long)
        self.pos = torch.zeros(0, n_nodes, dtype=torch.long)

    def merge(self, value_BN: Tensor, window_BN: Tensor, pos_BN: Tensor, k: int) -> None:
        value = torch.cat([self.value, value_BN])
        top = torch.topk(value, min(k, len(value)), dim=0).indices
        self.value = value.gather(0, top)
        self.window = torch.cat([self.window, window_BN]).gather(0, top)
        self.pos = torch.cat([self.pos, pos_BN]).gather(0, top)

    def padded(self, k: int, sign: float) -> tuple[Tensor, Tensor, Tensor]:
        """[n, k] tensors; NaN values where fewer than k windows were seen; `sign` undoes the negation."""
        pad = k - len(self.value)
        n = self.value.shape[1]
        value = torch.cat([self.value * sign, torch.full((max(pad, 0), n), float("nan"))])
        window = torch.cat([self.window, torch.zeros(max(pad, 0), n, dtype=torch.long)])
        pos = torch.cat([self.pos, torch.zeros(max(pad, 0), n, dtype=torch.long)])
        return value.T, window.T, pos.T


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
    top, bottom = _Best(n_nodes), _Best(n_nodes)
    kept: list[Tensor] = []
    n_kept = 0
    for start in range(0, len(windows), batch_size):
        batch_BT = windows[start : start + batch_size].to(device)
        _, cache = model.run_with_cache(batch_BT, names_filter=list(sites))
        parts = [cache[s].flatten(2)[..., index[s].to(device)] for s in sites]
        acts_BTN = torch.cat(parts, dim=-1).float().cpu()[..., torch.argsort(torch.tensor(order))]
        max_BN, argmax_BN = acts_BTN.max(dim=1)
        min_BN, argmin_BN = acts_BTN.min(dim=1)
        win_BN = (torch.arange(len(batch_BT)) + start).unsqueeze(1).expand_as(argmax_BN)
        top.merge(max_BN, win_BN, argmax_BN, k)
        bottom.merge(-min_BN, win_BN, argmin_BN, k)  # negated: topk finds the most negative
        if n_kept < hist_tokens:
            flat = acts_BTN.reshape(-1, n_nodes)[: hist_tokens - n_kept]
            kept.append(flat)
            n_kept += len(flat)
    flat_TN = torch.cat(kept) if kept else torch.zeros(0, n_nodes)
    hist, lo, hi, zeros = _histograms(flat_TN, bins)
    mean = flat_TN.mean(0) if len(flat_TN) else torch.zeros(n_nodes)
    std = flat_TN.std(0, correction=0) if len(flat_TN) else torch.zeros(n_nodes)
    return NodeActivations(*top.padded(k, 1.0), *bottom.padded(k, -1.0), hist, lo, hi, zeros, mean, std, n_kept)


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
                 after: int = 3) -> list[dict[str, list[dict]]]:
    """Per node, its top contexts of each sign, {"pos": [...], "neg": [...]}, each row {tokens, at,
    value}: `before` tokens before the top position and `after` after it, `at` = the top token's
    position in `tokens`. "pos" holds only positive values (largest first), "neg" only negative ones
    (most negative first)."""
    def rows(wins: Tensor, poss: Tensor, vals: Tensor, sign: float) -> list[list[dict]]:
        out = []
        for w_row, p_row, v_row in zip(wins.tolist(), poss.tolist(), vals.tolist()):
            kept = []
            for w, p, v in zip(w_row, p_row, v_row):
                if not v * sign > 0:  # NaN padding, zero, or the other sign
                    continue
                lo = max(0, p - before)
                kept.append({"tokens": windows[w, lo : p + after + 1].tolist(), "at": p - lo, "value": v})
            out.append(kept)
        return out

    pos = rows(acts.top_window, acts.top_pos, acts.top_value, 1.0)
    neg = rows(acts.bottom_window, acts.bottom_pos, acts.bottom_value, -1.0)
    return [{"pos": p, "neg": n} for p, n in zip(pos, neg)]


def node_stats(acts: NodeActivations, j: int) -> dict[str, float | int]:
    """The activation statistics of node `j` for its card (and histogram)."""
    return {"lo": float(acts.hist_lo[j]), "hi": float(acts.hist_hi[j]), "counts": acts.hist[j].tolist(),
            "zeros": int(acts.zeros[j]), "total": acts.hist_tokens, "mean": float(acts.mean[j]),
            "std": float(acts.std[j])}
