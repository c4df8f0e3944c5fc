"""`Transformer`: the one decoder-only model of sparsecircuits, with a hook at every activation.

A pre-norm GPT-style transformer driven by `ModelConfig`. Weights are stored in PyTorch's
`[out, in]` layout and applied with `F.linear` (through `skip_linear.linear`, which is `F.linear`
unless a masked evaluation turns its skipping on; the per-head split projections use an einsum). Departures from GPT-2, each switchable in the config:

* RMSNorm (gain only) by default, so zero is privileged in the residual stream (Gao et al. 2025).
* No positional embedding by default; `learned` (GPT-2) or `rotary` (NeoX rotate-half, optionally
  partial) are available.
* Attention sink (Gao et al.): per head a learnable logit for a dummy key whose value is zero; it
  only enlarges the softmax denominator, so a head can attend "nowhere". Attention rows then sum to
  less than one; a sink logit of -inf recovers plain attention.
* Bigram table (Gao et al.): a dense `[vocab, vocab]` matrix whose row for the current token is
  added to the logits, so sparse weights need not store bigram statistics.
* AbsTopK activation sparsity (Gao et al.) at up to eight sites — attention input, q, k, v,
  attention output, MLP input, MLP neurons, MLP output — keeping the largest-|x| fraction per token.
  It is applied *before* the site's hook, so hooks see what the next layer reads. Its selection (a
  0/1 float mask shaped like the activation) passes through a `*_keep` hook first, which exists only
  where AbsTopK is on: `blocks.{L}.ln1.hook_keep` (attn_in), `attn.hook_q_keep|hook_k_keep|hook_v_keep`,
  `blocks.{L}.hook_attn_out_keep`, `ln2.hook_keep` (mlp_in), `mlp.hook_post_keep` (mlp_neurons),
  `blocks.{L}.hook_mlp_out_keep`. Reading it gives the live selection; replacing it freezes the
  selection (AbsTopK is then the linear map `x -> S * x`; attribution graphs do this).
* Grouped-query attention (`n_kv_heads`), computed natively: query head h uses key/value head
  h // (n_heads / n_kv_heads), the same grouping as Hugging Face's `repeat_kv`, without copies.
* Parallel attention + MLP (GPT-NeoX): both read the block input; there is then no `hook_resid_mid`.
* Pretrained-family options, all off by default (see `model/hf_families.py` for who uses which):
  gated MLPs (`swiglu` Llama, `geglu` Gemma); Llama 3.1 rotary frequency scaling; an attention
  logit scale other than 1/sqrt(d_head); tanh soft-capping of attention and output logits
  (Gemma 2); sliding-window attention in chosen layers (Mistral, Gemma 2); post-norms
  `ln1_post`/`ln2_post` on the attention and MLP outputs before the residual add (Gemma 2; the
  block's `hook_attn_out`/`hook_mlp_out` are then the normed outputs, i.e. what the residual gets);
  an embedding multiplier applied before `hook_embed` (Gemma). Gemma's `(1 + w)` norm gain needs no
  option: the loader stores `1 + w` as our gain.

Hook names follow TransformerLens (see DESIGN.md): `hook_embed`, `hook_pos_embed`,
`blocks.{L}.hook_resid_pre|mid|post`, `blocks.{L}.ln1.hook_scale|hook_normalized`,
`blocks.{L}.attn.hook_q|k|v|rot_q|rot_k|attn_scores|pattern|z`, `blocks.{L}.hook_attn_out`,
`blocks.{L}.ln2.hook_*`, `blocks.{L}.mlp.hook_pre|pre_linear|post`, `blocks.{L}.hook_mlp_out`,
`blocks.{L}.ln1_post.hook_*` and `ln2_post.hook_*` (post-norms only), `ln_final.hook_*`.
`ln*.hook_normalized` is the full norm output (gain applied), i.e. exactly what attention / MLP /
unembedding (or, for post-norms, the residual stream) read. Shapes: q/k/v/z are
`[batch, pos, head, d_head]`, scores and pattern `[batch, head, query_pos, key_pos]`; with a soft-cap
`hook_attn_scores` holds the capped scores, i.e. what the softmax reads.

Split inputs (TransformerLens's `use_split_qkv_input`, switched on by use instead of a flag): when
any of `blocks.{L}.hook_q_input|hook_k_input|hook_v_input` is hooked, the residual stream is copied
per head — `[batch, pos, n_heads, d_model]` for q, `[batch, pos, n_kv_heads, d_model]` for k and v
(one copy per key/value group, natively grouped) — and each copy is normed by `ln1` and projected
by its head's weights alone, so a hook can give every head its own input (the component graph's
edge masks, `component_circuits/component_graph.py`). `ln1.hook_*` then fire three times with those 4-d shapes.
With no hook on them the block runs exactly as before. `blocks.{L}.hook_mlp_in` is the residual the
MLP reads, before `ln2` (an identity; hooking it changes the MLP's input only).

When neither `hook_attn_scores` nor `hook_pattern` of a layer is hooked and there is no attention
soft-cap, attention runs through `F.scaled_dot_product_attention` (the sink as an extra zero key
with its logit in the mask, or, when the logit needs a gradient, in an extra key channel; the
sliding window in the mask); otherwise it is computed explicitly so
the pattern can be read and edited (SDPA cannot soft-cap). Both agree (tested).

Attention masks: `forward(tokens, attention_mask)` takes a `[batch, pos]` mask, bool or integer,
1 = real token and 0 = padding (Hugging Face's convention), so prompts of different lengths can be
batched with padding on either side. With it, every attention path (fused, explicit, sink, sliding
window, grouped-query, `at=`, split inputs) masks padded keys (their pattern is 0, their score -inf),
and positions count only real tokens: a token's position id is the number of real tokens before it
(as HF's `generate` derives `position_ids` from the mask), for learned positions (`hook_pos_embed`
is then `[batch, pos, d_model]`, not `[pos, d_model]`) and rotary. Sliding windows are counted in
sequence positions, as in HF. A padded query with no real key before it (left padding) attends
nowhere: its pattern row and `hook_z` are 0. Logits at padded positions are finite and meaningless,
also in a row of only padding, which is allowed; `at` must point at real tokens. Without a mask the
code path is exactly the unmasked one (right padding needs no mask when each prompt is read at its
last token with `at`, since causal attention never looks ahead).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from sparsecircuits.model.config import GATED_ACTIVATIONS, ModelConfig
from sparsecircuits.model.hooks import HookedModule, HookPoint
from sparsecircuits.model.packing import Packing, at_positions, packing_of, to_packed, to_padded
from sparsecircuits.model.skip_linear import linear
from sparsecircuits.model.sparsity import SparseWeight, abs_topk_mask


def _maybe_topk(x: Tensor, cfg: ModelConfig, site: str, keep: HookPoint | None = None) -> Tensor:
    """AbsTopK at `site` if it is on there; its 0/1 selection passes through the site's `*_keep` hook."""
    if not cfg.sparse_at(site):
        return x
    mask = abs_topk_mask(x, cfg.act_sparsity)
    if mask is None:
        return x
    return x * (keep(mask) if keep is not None else mask)


def _at(x: Tensor, at: Tensor, packing: Packing | None) -> Tensor:
    """`x` [batch, pos, ...] (or a packed row) at position `at[b]` of each row (prompt): [batch, 1, ...]."""
    if packing is not None:
        return x[0, at_positions(packing, at)].unsqueeze(1)
    return x[torch.arange(len(x), device=x.device), at].unsqueeze(1)


def _keep_hook(cfg: ModelConfig, site: str) -> HookPoint | None:
    """The hook on AbsTopK's selection at `site` (only where AbsTopK is on)."""
    return HookPoint() if cfg.sparse_at(site) else None


class Norm(nn.Module):
    """RMSNorm (gain only) or LayerNorm (gain and bias), optionally followed by AbsTopK."""

    def __init__(self, cfg: ModelConfig, sparsity_site: str | None = None) -> None:
        super().__init__()
        self.cfg, self.site = cfg, sparsity_site
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.norm == "layer" else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]
        if sparsity_site is not None:
            self.hook_keep = _keep_hook(cfg, sparsity_site)  # AbsTopK's selection (module docstring)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.b is not None:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps).sqrt())
        out = x / scale * self.w
        if self.b is not None:
            out = out + self.b
        if self.site is not None:
            out = _maybe_topk(out, self.cfg, self.site, self.hook_keep)
        return self.hook_normalized(out)


def rotary_inv_freq(cfg: ModelConfig) -> Tensor:
    """Inverse frequencies `[rotary_dim / 2]` of rotary embedding, float64 on the CPU.

    With `rotary_scaling` they are rescaled as in Llama 3.1 (Meta's `apply_scaling` in llama-models):
    wavelengths above original_n_ctx / low_freq_factor are divided by `factor`, those below
    original_n_ctx / high_freq_factor kept, and the band between interpolated smoothly.
    """
    rot = cfg.rotary_dim or cfg.d_head
    # An explicit device: the loader builds models under torch.device("meta").
    inv_freq = 1.0 / cfg.rotary_base ** (torch.arange(0, rot, 2, dtype=torch.float64, device="cpu") / rot)
    if cfg.rotary_scaling:
        factor, low, high, original = cfg.rotary_scaling
        wavelen = 2 * math.pi / inv_freq
        smooth = ((original / wavelen - low) / (high - low)).clamp(0.0, 1.0)  # 0 at low freq, 1 at high
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return inv_freq


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Padding(NamedTuple):
    """A padded batch, from `Transformer.forward`'s `attention_mask` (module docstring)."""

    real: Bool[Tensor, "batch pos"]  # True at real tokens
    positions: Int[Tensor, "batch pos"]  # position ids: real tokens before this one (0 at padding before any)


def padding_of(attention_mask: Tensor) -> Padding:
    """`Padding` of a validated `[batch, pos]` mask (1/True = real token): a position's id is the
    number of real tokens before it, as Hugging Face derives `position_ids` from the mask."""
    real = attention_mask.bool()
    return Padding(real, (real.long().cumsum(-1) - 1).clamp(min=0))


class Attention(nn.Module):
    """Causal multi-head (or grouped-query) attention with optional sink and rotary embedding."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.attn_scale or 1.0 / math.sqrt(cfg.d_head)
        self.window = cfg.sliding_window if layer in cfg.sliding_window_layers else 0
        H, KV, dh, d = cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model
        self.W_Q = nn.Parameter(torch.empty(H * dh, d))
        self.W_K = nn.Parameter(torch.empty(KV * dh, d))
        self.W_V = nn.Parameter(torch.empty(KV * dh, d))
        self.W_O = nn.Parameter(torch.empty(d, H * dh))
        self.b_Q = nn.Parameter(torch.zeros(H * dh)) if cfg.bias_qkv else None
        self.b_K = nn.Parameter(torch.zeros(KV * dh)) if cfg.bias_qkv else None
        self.b_V = nn.Parameter(torch.zeros(KV * dh)) if cfg.bias_qkv else None
        self.b_O = nn.Parameter(torch.zeros(d)) if cfg.bias_attn_out else None
        self.sink = nn.Parameter(torch.zeros(H)) if cfg.attn_sink else None
        self._mask_cache: tuple[tuple, Tensor] | None = None  # the last additive mask of `_fused`, reused while it fits
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())
        for site in ("q", "k", "v"):  # AbsTopK's selection on the projections, [batch, pos, n * d_head]
            setattr(self, f"hook_{site}_keep", _keep_hook(cfg, site))
        if cfg.positions == "rotary":
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
            # Not buffers: model.to(bfloat16) must not round the frequencies, and tables for all of
            # n_ctx (131072 in Llama 3.1) in every layer would cost gigabytes. Built per length, kept.
            self.inv_freq = rotary_inv_freq(cfg)
            self._rot_cache: tuple[tuple, Tensor, Tensor] | None = None

    def _rot_tables(self, T: int, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (T, x.device, x.dtype)
        if self._rot_cache is None or self._rot_cache[0] != key:
            with torch.inference_mode(False):  # a table made under inference_mode could not be saved for backward
                angles = torch.outer(torch.arange(T, dtype=torch.float64, device="cpu"), self.inv_freq)
                angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [pos, 1, rot]
                cos, sin = (a.float().to(device=x.device, dtype=x.dtype) for a in (angles.cos(), angles.sin()))
            self._rot_cache = (key, cos, sin)
        return self._rot_cache[1], self._rot_cache[2]

    def _rotary(self, x: Float[Tensor, "batch pos head d_head"], positions: Tensor | None = None,
                length: int = 0) -> Tensor:
        """Rotate by position index, or by `positions` [batch, pos] (position ids of a padded or packed
        batch, or of the queries at `at`: all below `length`)."""
        cos, sin = self._rot_tables(length or x.shape[1], x)
        if positions is not None:
            cos, sin = cos[positions], sin[positions]  # [batch, pos, 1, rot]
        rot = cos.shape[-1]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)

    def _project(self, x: Tensor, W: Tensor, b: Tensor | None, site: str, n: int) -> Tensor:
        y = _maybe_topk(linear(x, W, b), self.cfg, site, getattr(self, f"hook_{site}_keep"))
        return y.view(*x.shape[:2], n, self.cfg.d_head)

    def _project_split(self, x: Tensor, W: Tensor, b: Tensor | None, site: str) -> Tensor:
        """Per-head inputs [batch, pos, n, d_model] -> [batch, pos, n, d_head], head i by its rows only."""
        B, T, n, d = x.shape
        y = torch.einsum("bpnd,ned->bpne", x, W.view(n, self.cfg.d_head, d))
        if b is not None:
            y = y + b.view(n, self.cfg.d_head)
        return _maybe_topk(y.reshape(B, T, -1), self.cfg, site, getattr(self, f"hook_{site}_keep")).view(
            B, T, n, self.cfg.d_head)

    def forward(
        self, x: Float[Tensor, "batch pos d_model"] | None, split: tuple[Tensor, Tensor, Tensor] | None = None,
        at: Int[Tensor, " batch"] | None = None, padding: Padding | None = None, packing: Packing | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`x` is the normed residual; or `split` = per-head normed inputs for q, k, v (see the module
        docstring). With `at`, only the query at position `at[b]` of each row is computed and attends
        (keys and values at every position): `hook_q` (and `hook_q_keep`, `hook_rot_q`), `hook_z` and
        the output are `[batch, 1, ...]`. With `padding`, padded keys
        are never attended and rotary uses its position ids (module docstring, "Attention masks").
        With `packing`, the input is a packed row (`model/packing.py`): q, k, v are laid out padded to
        attend, and `hook_z` and the output are packed again (`[batch, 1, ...]` with `at`)."""
        cfg = self.cfg
        H, KV, dh = cfg.n_heads, cfg.kv_heads, cfg.d_head
        if split is None:
            assert x is not None
            B, T, _ = x.shape
            q = self.hook_q(self._project(x if at is None else _at(x, at, packing), self.W_Q, self.b_Q, "q", H))
            k = self.hook_k(self._project(x, self.W_K, self.b_K, "k", KV))
            v = self.hook_v(self._project(x, self.W_V, self.b_V, "v", KV))
        else:
            B, T = split[0].shape[:2]
            q_in = split[0] if at is None else _at(split[0], at, packing)
            q = self.hook_q(self._project_split(q_in, self.W_Q, self.b_Q, "q"))
            k = self.hook_k(self._project_split(split[1], self.W_K, self.b_K, "k"))
            v = self.hook_v(self._project_split(split[2], self.W_V, self.b_V, "v"))
        if packing is not None:
            B = len(packing.lengths)
        if cfg.positions == "rotary":
            pos = packing.positions if packing is not None else None if padding is None else padding.positions
            length = packing.max_len if packing is not None else T
            q_pos = pos if at is None else at.view(B, 1) if pos is None or packing is not None else _at(pos, at, None)
            q = self.hook_rot_q(self._rotary(q, q_pos, length))
            k = self.hook_rot_k(self._rotary(k, pos, length))
        explicit = self.hook_attn_scores.active or self.hook_pattern.active or bool(cfg.attn_softcap)
        if packing is not None:
            z = self._packed(q, k, v, packing, at, explicit)
        else:
            qpos = None if at is None else at.view(B, 1)
            real = None if padding is None else padding.real
            z = self._explicit(q, k, v, qpos, real) if explicit else self._fused(q, k, v, qpos, real)
        z = self.hook_z(z)  # [batch, pos, head, d_head]
        return linear(z.reshape(*z.shape[:2], H * dh), self.W_O, self.b_O)

    def _packed(self, q: Tensor, k: Tensor, v: Tensor, packing: Packing, at: Tensor | None,
                explicit: bool) -> Tensor:
        """Attention of a packed row (`model/packing.py`): each group of prompts laid out padded
        (right padding: the causal mask keeps every real query off the padding), attended, and its
        tokens gathered back. Explicit attention (hooked scores / pattern) uses one group of all
        prompts, so its hooks fire once; the output is packed, `[1, sum(lengths), head, d_head]`, or
        `[batch, 1, head, d_head]` with `at`."""
        layout = packing.whole if explicit else packing.grouped
        ks, vs = to_padded(k, layout), to_padded(v, layout)
        qs = to_padded(q, layout) if at is None else [q[rows] for rows, _ in layout.groups]  # q: [batch, 1, ...] at `at`
        zs = []
        for (rows, _), qg, kg, vg in zip(layout.groups, qs, ks, vs):
            qpos = None if at is None else at[rows].view(-1, 1)
            zs.append(self._explicit(qg, kg, vg, qpos) if explicit else self._fused(qg, kg, vg, qpos))
        if at is not None:
            return torch.cat(zs).index_select(0, layout.rows)
        return to_packed(zs, layout)

    def _allowed(self, T: int, device: torch.device, qpos: Tensor | None = None,
                 real: Tensor | None = None) -> Tensor:
        """[batch or 1, 1, query, key] booleans: causal, within the sliding window if this layer has
        one (counted in sequence positions, as Hugging Face does), and on real keys only if `real`
        [batch, key] is given. `qpos` [batch, q]: explicit query positions (`at`)."""
        keys = torch.arange(T, device=device)
        queries = keys[:, None] if qpos is None else qpos[..., None]
        allowed = keys <= queries
        if self.window:
            allowed &= keys > queries - self.window
        if real is not None:
            allowed = allowed & real[:, None, :]
        return allowed.view(-1, 1, *allowed.shape[-2:])

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor | None = None,
                  real: Tensor | None = None) -> Tensor:
        B, Tq, H, dh = q.shape
        T, KV = k.shape[1], k.shape[2]
        qg = q.view(B, Tq, KV, H // KV, dh)
        scores = torch.einsum("bqkgd,bskd->bkgqs", qg, k).reshape(B, H, Tq, T) * self.scale
        if self.cfg.attn_softcap:
            cap = self.cfg.attn_softcap
            scores = torch.tanh(scores / cap) * cap
        allowed = self._allowed(T, q.device, qpos, real)
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
        if self.sink is not None:  # a query with no real key attends only to the sink: its row is 0
            sink = self.sink.to(scores.dtype).view(1, H, 1, 1).expand(B, H, Tq, 1)
            pattern = torch.cat((scores, sink), dim=-1).softmax(dim=-1)[..., :T]
        elif real is not None:
            # A padded query before the first real token has no key at all: softmax over an
            # all -inf row is NaN (in the backward pass too), so such rows are set to 0.
            empty = ~allowed.any(-1, keepdim=True)
            pattern = scores.masked_fill(empty, 0.0).softmax(dim=-1).masked_fill(empty, 0.0)
        else:
            pattern = scores.softmax(dim=-1)
        pattern = self.hook_pattern(pattern)
        pg = pattern.view(B, KV, H // KV, Tq, T)
        return torch.einsum("bkgqs,bskd->bqkgd", pg, v).reshape(B, Tq, H, dh)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor | None = None,
               real: Tensor | None = None) -> Tensor:
        B, Tq, H, dh = q.shape
        T = k.shape[1]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        gqa = k.shape[1] != H
        empty = None
        if self.sink is None and not self.window and qpos is None and real is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=gqa)
        else:
            allowed = self._allowed(T, q.device, qpos, real)  # per row for `at` or padding, else [1, ...]
            Bm = allowed.shape[0]
            if real is not None and self.sink is None:
                # Rows with no key (padded queries before the first real token) would be NaN in some
                # SDPA kernels: they attend to every key here and are set to 0 below, as in `_explicit`.
                empty = ~allowed.any(-1, keepdim=True)
                allowed = allowed | empty
            if self.sink is not None and self.sink.requires_grad and torch.is_grad_enabled():
                return self._fused_sink_channel(q, k, v, allowed).transpose(1, 2)
            key = (Tq, T, q.dtype, q.device, None if self.sink is None else (self.sink.data_ptr(), self.sink._version))
            if qpos is None and real is None and self._mask_cache is not None and self._mask_cache[0] == key:
                mask = self._mask_cache[1]  # the same causal (+ window, + sink) mask as last time
            else:
                with torch.inference_mode(False):  # a mask made under inference_mode could not be saved for backward
                    mask = q.new_zeros(allowed.shape).masked_fill(~allowed, float("-inf")).expand(Bm, H, Tq, T)
                    if self.sink is not None:
                        # The sink is one more key, of value zero, whose logit comes from the additive mask.
                        sink = self.sink.detach().to(q.dtype).view(1, H, 1, 1).expand(Bm, H, Tq, 1)
                        mask = torch.cat((mask, sink), dim=-1)
                if qpos is None and real is None:
                    self._mask_cache = (key, mask)
            if self.sink is not None:
                k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # the sink's key and value: zero
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)
            if empty is not None:
                z = z.masked_fill(empty, 0.0)
        return z.transpose(1, 2)

    def _fused_sink_channel(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
        """SDPA with a sink whose logit needs a gradient (training). A float mask that requires grad
        sends the CPU kernel to its slow math path (~1.4x the cost of this one, fwd + bwd, at the
        quickstart size), so the sink's logit is carried by the keys instead: every head gets one more
        channel, 1 in each query and 0 in each real key, and the sink key is 0 except for
        sink / scale in that channel, so its scaled score is the sink logit. The mask is boolean
        (`allowed` [batch or 1, 1, query, key], plus the sink column); q, k, v: [batch, head, pos, d_head]."""
        B, H, Tq, dh = q.shape
        KV, T = k.shape[1], k.shape[2]
        q = torch.cat((q, q.new_ones(B, H, Tq, 1)), dim=-1)
        k = torch.cat((k, k.new_zeros(B, KV, T, 1)), dim=-1)
        v = torch.cat((v, v.new_zeros(B, KV, T, 1)), dim=-1)
        sink = (self.sink.to(q.dtype) / self.scale).view(1, H, 1, 1)
        if KV != H:  # one sink key per head: grouped keys and values are expanded to all heads
            k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        sink_key = torch.cat((k.new_zeros(1, H, 1, dh), sink), dim=-1).expand(B, H, 1, dh + 1)
        k, v = torch.cat((k, sink_key), dim=2), torch.cat((v, v.new_zeros(B, H, 1, dh + 1)), dim=2)
        mask = torch.cat((allowed, allowed.new_ones(*allowed.shape[:-1], 1)), dim=-1)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return z[..., :dh]


class MLP(nn.Module):
    """Two-layer MLP (or gated: SwiGLU / GeGLU), with optional AbsTopK on the neurons."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        gated = cfg.act in GATED_ACTIVATIONS
        self.W_gate = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model)) if gated else None
        self.W_out = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp)) if cfg.bias_mlp else None
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.bias_mlp else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp], before the activation (the gate if gated)
        if gated:
            self.hook_pre_linear = HookPoint()  # the linear (up) branch of a gated MLP
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], the neurons
        self.hook_post_keep = _keep_hook(cfg, "mlp_neurons")  # AbsTopK's selection of the neurons

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        act = self.cfg.act
        if self.W_gate is not None:
            gate = self.hook_pre(linear(x, self.W_gate))
            gate = F.silu(gate) if act == "swiglu" else F.gelu(gate, approximate="tanh")
            h = gate * self.hook_pre_linear(linear(x, self.W_in, self.b_in))
        else:
            pre = self.hook_pre(linear(x, self.W_in, self.b_in))
            if act == "gelu":
                h = F.gelu(pre)
            elif act == "gelu_new":
                h = F.gelu(pre, approximate="tanh")
            else:
                h = F.relu(pre)
        h = self.hook_post(_maybe_topk(h, self.cfg, "mlp_neurons", self.hook_post_keep))
        return linear(h, self.W_out, self.b_out)


class Block(nn.Module):
    """Pre-norm residual block: attention then MLP (or both in parallel), optional post-norms."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1, self.attn = Norm(cfg, "attn_in"), Attention(cfg, layer)
        self.ln2, self.mlp = Norm(cfg, "mlp_in"), MLP(cfg)
        if cfg.post_norms:
            self.ln1_post, self.ln2_post = Norm(cfg), Norm(cfg)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        # Split inputs (module docstring): per-head copies of the residual for q, k, v; the MLP's input.
        self.hook_q_input, self.hook_k_input, self.hook_v_input = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_in = HookPoint()
        if not cfg.parallel_attn_mlp:
            self.hook_resid_mid = HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()
        # AbsTopK's selections on the block's outputs (where it is on), before hook_attn_out / hook_mlp_out.
        self.hook_attn_out_keep, self.hook_mlp_out_keep = _keep_hook(cfg, "attn_out"), _keep_hook(cfg, "mlp_out")

    def forward(self, resid: Float[Tensor, "batch pos d_model"], at: Int[Tensor, " batch"] | None = None,
                padding: Padding | None = None, packing: Packing | None = None) -> Float[Tensor, "batch pos d_model"]:
        """With `at`, everything after attention's q, k, v is computed only at position `at[b]` of each
        row (the hooks from `attn.hook_z` on see `[batch, 1, ...]`). `padding`, `packing`: see `Attention`."""
        cfg = self.cfg
        resid = self.hook_resid_pre(resid)
        if self.hook_q_input.active or self.hook_k_input.active or self.hook_v_input.active:
            copies = ((self.hook_q_input, cfg.n_heads), (self.hook_k_input, cfg.kv_heads), (self.hook_v_input, cfg.kv_heads))
            split = tuple(self.ln1(hook(resid.unsqueeze(2).expand(-1, -1, n, -1))) for hook, n in copies)
            attn_out = self.attn(None, split, at, padding, packing)  # type: ignore[arg-type]
        else:
            attn_out = self.attn(self.ln1(resid), at=at, padding=padding, packing=packing)
        if at is not None:
            resid = _at(resid, at, packing)
        if cfg.post_norms:
            attn_out = self.ln1_post(attn_out)
        attn_out = self.hook_attn_out(_maybe_topk(attn_out, cfg, "attn_out", self.hook_attn_out_keep))
        if cfg.parallel_attn_mlp:
            mlp_in = resid
        else:
            resid = mlp_in = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.mlp(self.ln2(self.hook_mlp_in(mlp_in)))
        if cfg.post_norms:
            mlp_out = self.ln2_post(mlp_out)
        mlp_out = self.hook_mlp_out(_maybe_topk(mlp_out, cfg, "mlp_out", self.hook_mlp_out_keep))
        if cfg.parallel_attn_mlp:
            return self.hook_resid_post(resid + attn_out + mlp_out)
        return self.hook_resid_post(resid + mlp_out)


class Transformer(HookedModule):
    """Decoder-only transformer; `forward(tokens) -> logits`. See the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.hook_embed = HookPoint()
        if cfg.positions == "learned":
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = Norm(cfg)
        self.W_U = None if cfg.tied_embeddings else nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab)) if cfg.bias_unembed else None
        self.W_bigram = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_vocab)) if cfg.bigram_table else None
        init_weights(self)
        self.setup_hooks()

    def execution_order(self) -> list[str]:
        """Hook names in the order a forward pass runs them (registration order differs: e.g.
        `mlp.hook_post` is registered before `hook_attn_out`). Found with one 2-token forward."""
        seen: dict[str, None] = {}

        def note(x: Tensor, hook: HookPoint) -> None:
            seen.setdefault(hook.name, None)

        with torch.no_grad(), self.hooks([(lambda name: True, note)]):
            self(torch.zeros(1, 2, dtype=torch.long, device=self.W_E.device))
        return list(seen)

    def forward(self, tokens: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None,
                at: Int[Tensor, " batch"] | None = None, trim: bool = False,
                start: tuple[int, Float[Tensor, "batch pos d_model"]] | None = None,
                packed: Int[Tensor, " batch"] | Packing | None = None,
                ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits at every position, or with `at` only at one position per row ([batch, 1, d_vocab]:
        e.g. each prompt's last token, which is all a task metric reads; the final norm and its hooks
        then see only those positions). Earlier positions are computed either way (attention reads
        them), except with `trim=True`: the last block then computes only what position `at` needs
        (queries, attention output, MLP at that position; keys and values everywhere), about a fifth
        less work in a 4-layer model, and its hooks from `attn.hook_z` on, and `attn.hook_q` (with
        `hook_q_keep` and `hook_rot_q`), see `[batch, 1, ...]`.
        `start=(layer, resid)` resumes a forward pass at block `layer`, whose `hook_resid_pre` gets
        `resid` (e.g. cached from an earlier pass): the embedding and earlier blocks are skipped and
        their hooks do not fire; `tokens` are still needed (bigram table, shapes).
        `attention_mask` [batch, pos], bool or integer 1 = real token / 0 = padding (Hugging Face's
        convention), for left- or right-padded batches: see the module docstring, "Attention masks";
        `at` must then point at real tokens. None runs the unmasked code path.
        `packed=lengths` [batch]: `tokens` is one row `[1, sum(lengths)]` of prompts laid end to end
        (`model/packing.py`), every hook sees that packed row (attention scores and pattern excepted:
        they are laid out padded, `[batch, head, max_len, max_len]`), and the logits are `[1, sum, d_vocab]`,
        or with `at` (a position within each prompt) `[batch, 1, d_vocab]`; `start`'s residual is packed too.
        `packed` may also be a `Packing` (e.g. `model/packing.shared_prefix_packing`'s, whose row stores
        common prefixes once). Not with `attention_mask`."""
        packing = None if packed is None else self._check_packed(packed, tokens, at, attention_mask)
        self._check_tokens(tokens, packing)
        padding = None if attention_mask is None else padding_of(self._check_mask(attention_mask, tokens, at))
        first = 0
        if start is None:
            # F.embedding, not W[tokens]: its CPU backward is deterministic (index_put_ accumulate is
            # not), which exact resume relies on, and faster.
            embed = F.embedding(tokens, self.W_E)
            resid = self.hook_embed(embed * self.cfg.embed_scale if self.cfg.embed_scale != 1.0 else embed)
            if self.cfg.positions == "learned":
                # [pos, d_model]; with a mask [batch, pos, d_model], each row's own position ids
                ids = packing.positions if packing is not None else None if padding is None else padding.positions
                pos = self.W_pos[: tokens.shape[1]] if ids is None else F.embedding(ids, self.W_pos)
                resid = resid + self.hook_pos_embed(pos)
        else:
            first, resid = start
            if not 0 <= first < len(self.blocks):
                raise ValueError(f"start layer must be in [0, {len(self.blocks)}), got {first}")
            if tuple(resid.shape) != (*tokens.shape, self.cfg.d_model):
                raise ValueError(f"start residual must be [batch, pos, d_model] = {(*tokens.shape, self.cfg.d_model)}, "
                                 f"got {tuple(resid.shape)}")
        trimmed = trim and at is not None and len(self.blocks) > 0
        for i in range(first, len(self.blocks)):
            resid = self.blocks[i](resid, at if trimmed and i == len(self.blocks) - 1 else None, padding, packing)
        if at is not None:
            tokens = _at(tokens, at, packing)
            resid = resid if trimmed else _at(resid, at, packing)
        W_U = self.W_E if self.W_U is None else self.W_U
        logits = linear(self.ln_final(resid), W_U, self.b_U)
        if self.W_bigram is not None:
            logits = logits + F.embedding(tokens, self.W_bigram)
        if self.cfg.logit_softcap:
            logits = torch.tanh(logits / self.cfg.logit_softcap) * self.cfg.logit_softcap
        return logits

    @staticmethod
    def _check_mask(mask: Tensor, tokens: Tensor, at: Tensor | None) -> Tensor:
        """The attention mask, checked: shaped like `tokens`, bool or integer 0/1, on their device;
        `at` on real tokens. A row of only padding is allowed (its logits are finite, meaningless)."""
        if tuple(mask.shape) != tuple(tokens.shape):
            raise ValueError(f"attention_mask must be [batch, pos] like tokens {tuple(tokens.shape)}, "
                             f"got {tuple(mask.shape)}")
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise ValueError(f"attention_mask must be bool or integer (1 = real token, 0 = padding), got {mask.dtype}")
        if mask.device != tokens.device:
            raise ValueError(f"attention_mask is on {mask.device}, tokens on {tokens.device}")
        if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        if at is not None:
            at_real = mask[torch.arange(len(mask), device=mask.device), at].bool()
            if not bool(at_real.all()):
                rows = (~at_real).nonzero().flatten().tolist()
                raise ValueError(f"at points at padding (attention_mask 0) in rows {rows[:8]}; with left padding "
                                 "the last token is at pos - 1, with right padding at lengths - 1")
        return mask

    @staticmethod
    def _check_packed(packed: Tensor | Packing, tokens: Tensor, at: Tensor | None, mask: Tensor | None) -> Packing:
        """The `Packing` of `packed` (lengths, or a `Packing`), checked against `tokens` and `at`."""
        if mask is not None:
            raise ValueError("packed prompts have no padding: pass either packed= or attention_mask, not both")
        if isinstance(packed, Packing):
            packing, n = packed, packed.positions.shape[1]
        else:
            if packed.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"packed lengths must be integers, got {packed.dtype}")
            packing = packing_of(packed.to(tokens.device))
            n = int(packing.lengths.sum())
        if tokens.dim() != 2 or tokens.shape[0] != 1 or tokens.shape[1] != n:
            raise ValueError(f"packed tokens must be one row [1, sum(lengths)] = [1, {n}], got {tuple(tokens.shape)}")
        if at is not None and (at.shape != packing.lengths.shape or bool((at < 0).any())
                               or bool((at >= packing.lengths).any())):
            raise ValueError("with packed prompts, at must give one position within each prompt ([batch], 0 <= at < length)")
        return packing

    def _check_tokens(self, tokens: Tensor, packing: Packing | None = None) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [batch, pos], got {tokens.dtype} {tuple(tokens.shape)}")
        longest = tokens.shape[1] if packing is None else packing.max_len
        if longest > self.cfg.n_ctx:
            raise ValueError(f"sequence of {longest} tokens exceeds the model's n_ctx={self.cfg.n_ctx}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise ValueError(
                f"token ids must be in [0, {self.cfg.d_vocab}), got range [{int(tokens.min())}, {int(tokens.max())}]"
            )

    def sparse_weights(self) -> list[SparseWeight]:
        """The matrices under weight sparsity (Gao et al.): q, k, v, o, MLP in/out, embeddings."""
        out = [SparseWeight("W_E", 0, "embed")]
        for i, block in enumerate(self.blocks):
            p = f"blocks.{i}"
            out += [SparseWeight(f"{p}.attn.{n}", 0, "hidden") for n in ("W_Q", "W_K", "W_V")]
            out.append(SparseWeight(f"{p}.attn.W_O", 1, "hidden"))
            out.append(SparseWeight(f"{p}.mlp.W_in", 0, "hidden"))
            if block.mlp.W_gate is not None:
                out.append(SparseWeight(f"{p}.mlp.W_gate", 0, "hidden"))
            out.append(SparseWeight(f"{p}.mlp.W_out", 1, "hidden"))
        if self.W_U is not None:
            out.append(SparseWeight("W_U", 0, "embed"))
        return out


@torch.no_grad()
def init_weights(model: Transformer) -> None:
    """All weight initialisation (Gao et al. 2025, following GPT-2).

    Matrices ~ N(0, init_std); the projections that write to the residual stream (attention W_O,
    MLP W_out) ~ N(0, init_std / sqrt(2 * n_layers)); biases 0; norm gains 1; sink logits 0;
    bigram table ~ U(0, 0.02).
    """
    cfg = model.cfg
    std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "W_bigram":
            p.uniform_(0.0, 0.02)
        elif leaf in ("W_O", "W_out"):
            p.normal_(0.0, out_std)
        elif leaf.startswith("W_"):
            p.normal_(0.0, std)
        elif leaf == "w":
            p.fill_(1.0)
        else:  # biases, norm biases, sink logits
            p.zero_()
