"""Head roles for component circuits (Lan, Torr & Barez 2024, Section "Head roles"):

  attention     per head, the mean attention from each prompt's last position to positions of each
                type: the first token, tokens equal to the correct answer, tokens equal to the incorrect
                answer (in sequence continuation: the last member shown), other tokens, and the sink;
  OV scores     per head, the direct OV map of a token, W_U N_f(P(W_O,h W_V,h N_1(W_E[t]))) (each norm N
                its linear part: the gain, and centring for LayerNorm, with the per-token scale, a
                positive constant that changes no ranking, held at 1; P the post-norm ln1_post where
                the model has one; AbsTopK selections, which depend on a run, left out: the
                first-order OV circuit of Elhage et al. 2021): "successor" = share of successor
                pairs (t, t′) with t′ among the top-k outputs of t, "copy" = share of tokens t that
                are among their own top-k outputs (Lan et al.: successor head 9.1 of GPT-2 ≈ 87–91%);
                on the tokens the tokenizer has (`ov_tokens`): the ordered `SEQUENCES` (numbers
                0–99, number words, months, days, letters), each with and without a leading space,
                keep their members that are single tokens (encode to one id, which decodes back to
                the member); a pair is two consecutive members that both are. A task's own members
                (sequence continuation) can replace them. With fewer than `MIN_TOKENS` tokens
                (`MIN_PAIRS` pairs) a score is not computed and `OVTokens.notes` says why;
  logit lens    per layer, the logit difference (correct - incorrect) and the share of prompts whose
                correct answer outranks the incorrect one, reading `hook_resid_post` through the final
                norm and unembedding (nostalgebraist 2020).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.model.transformer import Norm, Transformer
from sparsecircuits.tasks.base import TaskData
from sparsecircuits.tasks.sequences import MONTHS, NUMBER_WORDS

POSITION_TYPES = ("first", "correct", "incorrect", "other", "sink")

# Ordered sequences for the OV scores; a successor pair is two consecutive members.
SEQUENCES: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(i) for i in range(100)),
    "number words": NUMBER_WORDS,
    "months": MONTHS,
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "letters": tuple(string.ascii_lowercase),
    "capital letters": tuple(string.ascii_uppercase),
}
MIN_TOKENS = 4  # fewest single tokens for a copy score
MIN_PAIRS = 4  # fewest successor pairs for a successor score


@dataclass
class OVTokens:
    """The tokens the OV scores are computed on: per sequence variant ("numbers", "numbers, leading
    space", ...), its candidates in order and each one's token id (None: not a single token)."""

    candidates: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, list[int | None]] = field(default_factory=dict)

    @property
    def tokens(self) -> list[int]:
        """Every single-token candidate, once (the copy score's tokens)."""
        return list(dict.fromkeys(i for ids in self.ids.values() for i in ids if i is not None))

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(t, t′) for consecutive candidates that are both single tokens (the successor score's pairs), once."""
        return list(dict.fromkeys((a, b) for ids in self.ids.values() for a, b in zip(ids, ids[1:])
                                  if a is not None and b is not None and a != b))

    def used(self, name: str) -> list[str]:
        """The candidates of sequence variant `name` that are single tokens."""
        return [c for c, i in zip(self.candidates[name], self.ids[name]) if i is not None]

    def notes(self) -> list[str]:
        """Why a score is not computed (empty when both are)."""
        out = []
        if len(self.tokens) < MIN_TOKENS:
            out.append(f"OV copy not computed: {len(self.tokens)} single tokens (need {MIN_TOKENS})")
        if len(self.pairs) < MIN_PAIRS:
            out.append(f"OV successor not computed: {len(self.pairs)} successor pairs (need {MIN_PAIRS})")
        return out


def ov_tokens(encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
              sequences: dict[str, tuple[str, ...]] | None = None, prefixes: tuple[str, ...] = ("", " ")) -> OVTokens:
    """Look up every candidate of `sequences` (default `SEQUENCES`), with each prefix, in a tokenizer:
    `encode(text)` gives its token ids without special tokens, `decode(ids)` the text back. A candidate
    is a single token when it encodes to one id that decodes to it (leading/trailing spaces aside:
    SentencePiece decodes "▁May" alone as "May"), which rules out an unknown-token id."""
    out = OVTokens()
    for name, members in (SEQUENCES if sequences is None else sequences).items():
        for prefix in prefixes:
            key = name + (", leading space" if prefix == " " else f", prefix {prefix!r}" if prefix else "")
            texts = [prefix + m for m in members]
            out.candidates[key] = texts
            out.ids[key] = [ids[0] if len(ids) == 1 and decode(ids).strip() == t.strip() else None
                            for t, ids in zip(texts, map(encode, texts))]
    return out


@dataclass
class HeadRoles:
    attention: Float[Tensor, "layer head type"]  # mean attention from the last position, by POSITION_TYPES
    successor: Float[Tensor, "layer head"] | None  # OV successor score (None: no tokens given, or too few pairs)
    copy: Float[Tensor, "layer head"] | None  # OV copy score (None: no tokens given, or too few tokens)
    lens_diff: list[float]  # per layer: mean logit difference at the last position
    lens_correct: list[float]  # per layer: share with logit(correct) > logit(incorrect)
    ov: OVTokens | None = None  # the tokens the OV scores used (None: OV scores not asked for)


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


def _norm_lin(x: Tensor, norm: Norm) -> Tensor:
    """A norm's linear part with its scale held at 1: x -> C(x) ⊙ w (C centres for LayerNorm)."""
    return (x - x.mean(-1, keepdim=True) if norm.b is not None else x) * norm.w


@torch.no_grad()
def ov_logits(model: Transformer, layer: int, head: int, ids: Tensor) -> Float[Tensor, "token vocab"]:
    """First-order OV logits of one head for each token in `ids` (module docstring)."""
    cfg, block = model.cfg, model.blocks[layer]
    dh, g = cfg.d_head, head // (cfg.n_heads // cfg.kv_heads)
    W_U = model.W_E if model.W_U is None else model.W_U
    x = _norm_lin(model.W_E[ids] * cfg.embed_scale, block.ln1)  # [m, d]
    v = x @ block.attn.W_V[g * dh:(g + 1) * dh].T  # [m, dh]
    out = v @ block.attn.W_O[:, head * dh:(head + 1) * dh].T  # [m, d]
    if cfg.post_norms:
        out = _norm_lin(out, block.ln1_post)
    return _norm_lin(out, model.ln_final) @ W_U.T


@torch.no_grad()
def ov_scores(model: Transformer, tokens: list[int], pairs: list[tuple[int, int]],
              k: int = 5) -> tuple[Tensor | None, Tensor | None]:
    """(successor, copy) shares per [layer, head]: a pair (t, t′) counts when t′ is among t's top-k OV
    outputs, a token t when t is among its own; None for a score with too few pairs / tokens."""
    cfg = model.cfg
    use_copy, use_succ = len(tokens) >= MIN_TOKENS, len(pairs) >= MIN_PAIRS
    succ = torch.zeros(cfg.n_layers, cfg.n_heads) if use_succ else None
    copy = torch.zeros(cfg.n_layers, cfg.n_heads) if use_copy else None
    if succ is None and copy is None:
        return None, None
    k = min(k, cfg.d_vocab)
    src = torch.tensor(list(dict.fromkeys(tokens + [a for a, _ in pairs])), dtype=torch.long)
    row = {t: i for i, t in enumerate(src.tolist())}
    for L in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            top = ov_logits(model, L, h, src).topk(k, dim=-1).indices  # [m, k]
            if copy is not None:
                copy[L, h] = sum(t in top[row[t]] for t in tokens) / len(tokens)
            if succ is not None:
                succ[L, h] = sum(b in top[row[a]] for a, b in pairs) / len(pairs)
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


def head_roles(model: Transformer, data: TaskData, members: list[int] | OVTokens | None = None, k: int = 5) -> HeadRoles:
    """Attention by position type, logit lens and, given tokens, the OV scores. `members`: the tokens
    (`ov_tokens`), or one ordered list of token ids (a task's members, consecutive ones as pairs)."""
    if isinstance(members, list):
        members = OVTokens({"members": [str(t) for t in members]}, {"members": list(members)})
    succ, copy = ov_scores(model, members.tokens, members.pairs, k) if members is not None else (None, None)
    diffs, correct = logit_lens(model, data)
    return HeadRoles(attention_by_type(model, data), succ, copy, diffs, correct, members)


__all__ = ["MIN_PAIRS", "MIN_TOKENS", "POSITION_TYPES", "SEQUENCES", "HeadRoles", "OVTokens", "attention_by_type",
           "head_roles", "logit_lens", "ov_logits", "ov_scores", "ov_tokens"]
