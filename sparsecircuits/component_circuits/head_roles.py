"""Head roles for component circuits (Lan, Torr & Barez 2024, Section "Head roles"):

  attention     per head, the mean attention from each prompt's last position to positions of each
                type: the first token, tokens equal to the correct answer, tokens equal to the incorrect
                answer (in sequence continuation: the last member shown), other tokens, and the sink;
  OV scores     per head, the direct OV map of the member tokens, W_U W_O,h W_V,h W_E[t] (norms taken
                as their gains, a post-norm's included, and AbsTopK selections, which depend on a
                run, left out: the first-order OV circuit of Elhage et al. 2021): "successor"
                = share of members t_i whose next member t_{i+1} is among the top-k outputs, "copy" =
                share whose own token is (Lan et al.: successor head 9.1 of GPT-2 ≈ 87–91%);
  logit lens    per layer, the logit difference (correct - incorrect) and the share of prompts whose
                correct answer outranks the incorrect one, reading `hook_resid_post` through the final
                norm and unembedding (nostalgebraist 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData

POSITION_TYPES = ("first", "correct", "incorrect", "other", "sink")


@dataclass
class HeadRoles:
    attention: Float[Tensor, "layer head type"]  # mean attention from the last position, by POSITION_TYPES
    successor: Float[Tensor, "layer head"] | None  # OV successor score (None without members)
    copy: Float[Tensor, "layer head"] | None
    lens_diff: list[float]  # per layer: mean logit difference at the last position
    lens_correct: list[float]  # per layer: share with logit(correct) > logit(incorrect)


@torch.no_grad()
def attention_by_type(model: Transformer, data: TaskData) -> Float[Tensor, "layer head type"]:
    cfg = model.cfg
    names = [f"blocks.{L}.attn.hook_pattern" for L in range(cfg.n_layers)]
    _, cache = model.run_with_cache(data.tokens, names_filter=names)
    n, T = data.tokens.shape
    rows = torch.arange(n)
    pos = torch.arange(T).unsqueeze(0)
    real = pos < data.lengths.unsqueeze(1)
    is_c = (data.tokens == data.correct.unsqueeze(1)) & real
    is_i = (data.tokens == data.incorrect.unsqueeze(1)) & real & ~is_c
    first = (pos == 0) & ~is_c & ~is_i
    other = real & ~is_c & ~is_i & ~first
    out = torch.zeros(cfg.n_layers, cfg.n_heads, len(POSITION_TYPES))
    for L, name in enumerate(names):
        pat = cache[name][rows, :, data.lengths - 1]  # [n, head, key]
        for j, m in enumerate((first, is_c, is_i, other)):
            out[L, :, j] = (pat * m.unsqueeze(1)).sum(-1).mean(0)
        out[L, :, 4] = (1 - pat.sum(-1)).mean(0)  # attention to the sink (0 without one)
    return out


@torch.no_grad()
def ov_scores(model: Transformer, members: list[int], k: int = 5) -> tuple[Tensor, Tensor]:
    """(successor, copy) shares per head over an ordered list of member token ids."""
    cfg = model.cfg
    H, dh, G = cfg.n_heads, cfg.d_head, cfg.n_heads // cfg.kv_heads
    W_U = model.W_E if model.W_U is None else model.W_U
    ids = torch.tensor(members)
    succ, copy = torch.zeros(cfg.n_layers, H), torch.zeros(cfg.n_layers, H)
    for L, block in enumerate(model.blocks):
        x = model.W_E[ids] * block.ln1.w  # [m, d]
        attn = block.attn
        for h in range(H):
            g = h // G
            v = x @ attn.W_V[g * dh:(g + 1) * dh].T  # [m, dh]
            out = (v @ attn.W_O[:, h * dh:(h + 1) * dh].T) * model.ln_final.w  # [m, d]
            if cfg.post_norms:
                out = out * block.ln1_post.w
            top = (out @ W_U.T).topk(k, dim=-1).indices  # [m, k]
            copy[L, h] = (top == ids.unsqueeze(1)).any(1).float().mean()
            succ[L, h] = (top[:-1] == ids[1:].unsqueeze(1)).any(1).float().mean() if len(ids) > 1 else 0.0
    return succ, copy


@torch.no_grad()
def logit_lens(model: Transformer, data: TaskData) -> tuple[list[float], list[float]]:
    names = [f"blocks.{L}.hook_resid_post" for L in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(data.tokens, names_filter=names)
    W_U = model.W_E if model.W_U is None else model.W_U
    rows = torch.arange(len(data))
    diffs, correct = [], []
    for name in names:
        resid = cache[name][rows, data.lengths - 1]
        logits = model.ln_final(resid.unsqueeze(1))[:, 0] @ W_U.T
        d = logits[rows, data.correct] - logits[rows, data.incorrect]
        diffs.append(float(d.mean()))
        correct.append(float((d > 0).float().mean()))
    return diffs, correct


def head_roles(model: Transformer, data: TaskData, members: list[int] | None = None, k: int = 5) -> HeadRoles:
    succ, copy = ov_scores(model, members, k) if members else (None, None)
    diffs, correct = logit_lens(model, data)
    return HeadRoles(attention_by_type(model, data), succ, copy, diffs, correct)


__all__ = ["POSITION_TYPES", "HeadRoles", "attention_by_type", "head_roles", "logit_lens", "ov_scores"]
