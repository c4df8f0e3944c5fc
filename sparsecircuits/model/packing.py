"""Packed batches: prompts of different lengths laid end to end in one row, with no padding.

Task prompts vary in length (20-37 tokens in the shipped tasks): padded to the longest, a batch
spends a tenth to a third of its compute on padding, and running it as length-sorted chunks
instead pays a forward's fixed cost once per chunk. Packed, a batch of prompts is one row
`[1, sum(lengths)]`: everything that works position by position (embeddings, norms, projections,
AbsTopK, MLPs, every hook on them) runs once, on real tokens only. Attention alone must keep the
prompts apart: its q, k, v are laid out padded, `[batch, max_len, ...]` (right padding, so under the
causal mask no real query reaches a padded key), attended, and the real positions gathered back
into the packed row. `Transformer.forward(tokens, packed=lengths)` runs this way.
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
    tokens: Int[Tensor, " packed"]  # packed index -> its slot (a position in `slots`)
    rows: Int[Tensor, " batch"]  # row -> its position in the groups' rows laid end to end


class Packing(NamedTuple):
    """Where each prompt of a packed row lies (`packing_of`)."""

    lengths: Int[Tensor, " batch"]
    starts: Int[Tensor, " batch"]  # packed index of each prompt's first token
    positions: Int[Tensor, "1 packed"]  # position of each token within its prompt
    max_len: int
    whole: Layout  # one group: every prompt padded to the longest (attention whose scores or pattern are hooked)
    grouped: Layout  # prompts of similar length in groups (fused attention: less padding)


def _layout(groups: list[Tensor], lengths: Tensor, starts: Tensor) -> Layout:
    slots, real, shapes, offset = [], [], [], 0
    for rows in groups:
        ln = lengths[rows]
        max_len = int(ln.max())
        pos = torch.arange(max_len, device=lengths.device)
        slots.append((starts[rows][:, None] + torch.minimum(pos[None, :], ln[:, None] - 1)).flatten())
        real.append(offset + torch.nonzero((pos[None, :] < ln[:, None]).flatten()).flatten())
        shapes.append((rows, max_len))
        offset += len(rows) * max_len
    all_slots, real_slots = torch.cat(slots), torch.cat(real)
    tokens = torch.empty_like(real_slots)
    tokens[all_slots[real_slots]] = real_slots
    return Layout(tuple(shapes), all_slots, tokens, torch.argsort(torch.cat(groups)))


def packing_of(lengths: Tensor, group_rows: int = 16, n_groups: int = 4) -> Packing:
    """The `Packing` of prompts with these lengths (each >= 1), laid end to end in order. For attention
    they are sorted by length into about `n_groups` groups of at least `group_rows` prompts: attention
    costs rows x length^2, so padding costs more there than anywhere else (prompts of 20-37 tokens
    padded to 37 do twice the attention work of a length-sorted grouping)."""
    lengths = lengths.long()
    if lengths.dim() != 1 or not len(lengths):
        raise ValueError(f"packed lengths must be a non-empty 1-d tensor, got shape {tuple(lengths.shape)}")
    if int(lengths.min()) < 1:
        raise ValueError(f"packed prompts need at least one token each, got a length {int(lengths.min())}")
    starts = torch.cumsum(lengths, 0) - lengths
    by_length = torch.argsort(lengths, stable=True)
    grouped = _layout(list(by_length.split(max(group_rows, -(-len(lengths) // n_groups)))), lengths, starts)
    whole = _layout([torch.arange(len(lengths), device=lengths.device)], lengths, starts)
    positions = (torch.arange(int(lengths.sum()), device=lengths.device)
                 - torch.repeat_interleave(starts, lengths)).unsqueeze(0)
    return Packing(lengths, starts, positions, int(lengths.max()), whole, grouped)


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
    return packing.starts + at
