"""Packed batches: prompts of different lengths laid end to end in one row, with no padding.

Task prompts vary in length (20-37 tokens in the shipped tasks): padded to the longest, a batch
spends a tenth to a third of its compute on padding, and running it as length-sorted chunks
instead pays a forward's fixed cost once per chunk. Packed, a batch of prompts is one row
`[1, sum(lengths)]`: everything that works position by position (embeddings, norms, projections,
AbsTopK, MLPs, every hook on them) runs once, on real tokens only. Attention alone must keep the
prompts apart: its q, k, v are laid out padded, `[batch, max_len, ...]` (right padding, so under the
causal mask no real query reaches a padded key), attended, and the real positions gathered back
into the packed row. `Transformer.forward(tokens, packed=lengths)` runs this way.

Prompts that begin alike can share their common prefix (`shared_prefix_packing`): the row then holds
each distinct prefix once, a prompt's tokens are its path through that prefix tree, and the padded
layout for attention gathers each prompt's path (`Packing.index`). Nothing else changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor


class Layout(NamedTuple):
    """The prompts of a packed row laid out padded for attention, in groups of prompts padded to the
    longest of their group (right padding that repeats each prompt's last token: finite, and behind
    every real query under the causal mask)."""

    groups: tuple[tuple[Tensor, int], ...]  # (rows, max_len) of each group: its prompts, padded length
    slots: Int[Tensor, " slots"]  # packed index of every padded slot, group after group (row-major)
    tokens: Int[Tensor, " packed"]  # packed index -> a slot holding it as a real token (a position in `slots`)
    rows: Int[Tensor, " batch"]  # row -> its position in the groups' rows laid end to end


class Packing(NamedTuple):
    """Where each prompt of a packed row lies (`packing_of`, `shared_prefix_packing`)."""

    lengths: Int[Tensor, " batch"]
    index: Int[Tensor, "batch max_len"]  # packed index of each prompt's tokens (past its end: its last token's)
    positions: Int[Tensor, "1 packed"]  # position of each packed token within its prompt(s)
    max_len: int
    whole: Layout  # one group: every prompt padded to the longest (attention whose scores or pattern are hooked)
    grouped: Layout  # prompts of similar length in groups (fused attention: less padding)


def _layout(groups: list[Tensor], index: Tensor, lengths: Tensor) -> Layout:
    slots, real, shapes, offset = [], [], [], 0
    for rows in groups:
        max_len = int(lengths[rows].max())
        slots.append(index[rows, :max_len].flatten())
        is_real = torch.arange(max_len, device=index.device)[None, :] < lengths[rows][:, None]
        real.append(offset + torch.nonzero(is_real.flatten()).flatten())
        shapes.append((rows, max_len))
        offset += len(rows) * max_len
    all_slots, real_slots = torch.cat(slots), torch.cat(real)
    # the first real slot of each packed token (a shared prefix appears in several prompts)
    first = torch.full((int(index.max()) + 1,), len(real_slots), dtype=torch.long, device=index.device)
    first.scatter_reduce_(0, all_slots[real_slots], torch.arange(len(real_slots), device=index.device), "amin")
    return Layout(tuple(shapes), all_slots, real_slots[first], torch.argsort(torch.cat(groups)))


def _packing(lengths: Tensor, index: Tensor, positions: Tensor, group_rows: int, n_groups: int) -> Packing:
    by_length = torch.argsort(lengths, stable=True)
    grouped = _layout(list(by_length.split(max(group_rows, -(-len(lengths) // n_groups)))), index, lengths)
    whole = _layout([torch.arange(len(lengths), device=lengths.device)], index, lengths)
    return Packing(lengths, index, positions, int(lengths.max()), whole, grouped)


def _check_lengths(lengths: Tensor) -> Tensor:
    if lengths.dim() != 1 or not len(lengths):
        raise ValueError(f"packed lengths must be a non-empty 1-d tensor, got shape {tuple(lengths.shape)}")
    if int(lengths.min()) < 1:
        raise ValueError(f"packed prompts need at least one token each, got a length {int(lengths.min())}")
    return lengths.long()


def packing_of(lengths: Tensor, group_rows: int = 16, n_groups: int = 4) -> Packing:
    """The `Packing` of prompts with these lengths (each >= 1), laid end to end in order. For attention
    they are sorted by length into about `n_groups` groups of at least `group_rows` prompts: attention
    costs rows x length^2, so padding costs more there than anywhere else (prompts of 20-37 tokens
    padded to 37 do twice the attention work of a length-sorted grouping)."""
    lengths = _check_lengths(lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(int(lengths.max()), device=lengths.device)
    index = starts[:, None] + torch.minimum(pos[None, :], lengths[:, None] - 1)
    positions = (torch.arange(int(lengths.sum()), device=lengths.device)
                 - torch.repeat_interleave(starts, lengths)).unsqueeze(0)
    return _packing(lengths, index, positions, group_rows, n_groups)


def shared_prefix_packing(tokens: Tensor, lengths: Tensor, group_rows: int = 16,
                          n_groups: int = 4) -> tuple[Tensor, Packing]:
    """Right-padded prompts `[batch, pos]` packed with their common prefixes stored once: the packed
    row holds each distinct prefix's last token once (a prefix tree of the prompts, in order of first
    appearance), and each prompt reads its own path through it. Under causal attention a token's
    activations depend only on its prefix, so prompts that begin alike compute the shared part once
    (the shipped tasks' training batches: 16-21% fewer tokens). Only for computations where nothing
    but the tokens differs between prompts (not per-prompt baselines or inputs). Returns the packed
    token row `[1, n]` and its `Packing`."""
    lengths = _check_lengths(lengths)
    if tokens.dim() != 2 or len(tokens) != len(lengths) or int(lengths.max()) > tokens.shape[1]:
        raise ValueError(f"prompts must be right-padded tokens [batch, pos] with a length <= pos each; got tokens "
                         f"{tuple(tokens.shape)} and {len(lengths)} lengths up to {int(lengths.max())}")
    node: dict[tuple[int, int], int] = {}
    paths, row_tokens, depth = [], [], []
    for toks, n in zip(tokens.tolist(), lengths.tolist()):
        parent, path = -1, []
        for p, t in enumerate(toks[:n]):
            child = node.get((parent, t))
            if child is None:
                child = node[(parent, t)] = len(row_tokens)
                row_tokens.append(t)
                depth.append(p)
            path.append(child)
            parent = child
        paths.append(path)
    max_len = int(lengths.max())
    index = torch.tensor([path + path[-1:] * (max_len - len(path)) for path in paths], device=tokens.device)
    row = torch.tensor(row_tokens, dtype=tokens.dtype, device=tokens.device).unsqueeze(0)
    positions = torch.tensor(depth, device=tokens.device).unsqueeze(0)
    return row, _packing(lengths.to(tokens.device), index, positions, group_rows, n_groups)


def replicate(packing: Packing, copies: int, group_rows: int = 16, n_groups: int = 4) -> Packing:
    """The `Packing` of `row.repeat(1, copies)`: copies of a packed row side by side, copy j's prompts
    after copy j - 1's (rows j * batch ... (j + 1) * batch - 1)."""
    n = packing.positions.shape[1]
    index = torch.cat([packing.index + j * n for j in range(copies)])
    return _packing(packing.lengths.repeat(copies), index, packing.positions.repeat(1, copies), group_rows, n_groups)


def pack(x: Tensor, lengths: Tensor) -> Tensor:
    """Right-padded `[batch, pos, ...]` (prompt b in its first lengths[b] positions) -> packed `[1, sum, ...]`."""
    is_real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    return x[is_real].unsqueeze(0)


def to_padded(x: Tensor, layout: Layout) -> list[Tensor]:
    """Packed `[1, sum(lengths), ...]` -> each group's prompts right-padded, `[rows, max_len, ...]`."""
    parts = x[0].index_select(0, layout.slots).split([len(rows) * n for rows, n in layout.groups])
    return [part.view(len(rows), n, *x.shape[2:]) for part, (rows, n) in zip(parts, layout.groups)]


def to_packed(padded: list[Tensor], layout: Layout) -> Tensor:
    """Each group's prompts right-padded `[rows, max_len, ...]` -> packed `[1, sum(lengths), ...]`."""
    flat = torch.cat([p.reshape(-1, *p.shape[2:]) for p in padded])
    return flat.index_select(0, layout.tokens).unsqueeze(0)


def at_positions(packing: Packing, at: Tensor) -> Tensor:
    """Packed indices of position `at[b]` of each prompt b."""
    return packing.index[torch.arange(len(at), device=at.device), at]
