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


class Group(NamedTuple):
    """Prompts of a packed row that attend together, padded to the longest of them."""

    rows: Int[Tensor, " rows"]  # the prompts (rows of the batch) in this group
    slots: Int[Tensor, " slots"]  # [len(rows) * max_len] packed index of each padded slot (padding repeats the last token)
    real: Int[Tensor, " packed"]  # padded slot (row-in-group * max_len + pos) of each of the group's tokens, packed order
    max_len: int


class Packing(NamedTuple):
    """Where each prompt of a packed row lies (`packing_of`)."""

    lengths: Int[Tensor, " batch"]
    starts: Int[Tensor, " batch"]  # packed index of each prompt's first token
    positions: Int[Tensor, "1 packed"]  # position of each token within its prompt
    whole: Group  # every prompt, padded to the longest (attention whose scores or pattern are hooked)
    groups: tuple[Group, ...]  # prompts of similar length, for fused attention (less padding)
    unsort: Tensor  # packed index -> index in the groups' tokens laid end to end
    rows_unsort: Tensor  # row -> index in the groups' rows laid end to end


def _group(rows: Tensor, lengths: Tensor, starts: Tensor) -> Group:
    ln = lengths[rows]
    max_len = int(ln.max())
    pos = torch.arange(max_len, device=lengths.device)
    slots = starts[rows][:, None] + torch.minimum(pos[None, :], ln[:, None] - 1)
    real = torch.nonzero((pos[None, :] < ln[:, None]).flatten()).flatten()
    return Group(rows, slots.flatten(), real, max_len)


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
    everyone = torch.arange(len(lengths), device=lengths.device)
    whole = _group(everyone, lengths, starts)
    by_length = torch.argsort(lengths, stable=True)
    groups = tuple(_group(rows, lengths, starts)
                   for rows in by_length.split(max(group_rows, -(-len(lengths) // n_groups))))
    grouped_rows = torch.cat([g.rows for g in groups])
    packed_of_grouped = torch.cat([g.slots.index_select(0, g.real) for g in groups])
    unsort = torch.argsort(packed_of_grouped)
    positions = (torch.arange(int(lengths.sum()), device=lengths.device)
                 - torch.repeat_interleave(starts, lengths)).unsqueeze(0)
    return Packing(lengths, starts, positions, whole, groups, unsort, torch.argsort(grouped_rows))


def pack(x: Tensor, lengths: Tensor) -> Tensor:
    """Right-padded `[batch, pos, ...]` (prompt b in its first lengths[b] positions) -> packed `[1, sum, ...]`."""
    is_real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    return x[is_real].unsqueeze(0)


def to_padded(x: Tensor, group: Group) -> Tensor:
    """Packed `[1, sum(lengths), ...]` -> the group's prompts right-padded, `[rows, max_len, ...]`
    (padding repeats each prompt's last token: finite, and behind every real query under the causal mask)."""
    return x[0].index_select(0, group.slots).view(len(group.rows), group.max_len, *x.shape[2:])


def to_packed(x: Tensor, group: Group) -> Tensor:
    """The group's prompts right-padded `[rows, max_len, ...]` -> their tokens `[n, ...]` (padding
    dropped), in packed order within the group."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, group.real)


def at_positions(packing: Packing, at: Tensor) -> Tensor:
    """Packed indices of position `at[b]` of each prompt b."""
    return packing.starts + at
