"""`Transformer`: the one decoder-only model of sparsecircuits, with a hook at every activation.

A pre-norm GPT-style transformer driven by `ModelConfig`. Weights are stored in PyTorch's
`[out, in]` layout and applied with `F.linear`. Departures from GPT-2, each switchable in the config:

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
  It is applied *before* the site's hook, so hooks see what the next layer reads.
* Grouped-query attention (`n_kv_heads`), computed natively: query head h uses key/value head
  h // (n_heads / n_kv_heads), the same grouping as Hugging Face's `repeat_kv`, without copies.
* Parallel attention + MLP (GPT-NeoX): both read the block input; there is then no `hook_resid_mid`.

Hook names follow TransformerLens (see DESIGN.md): `hook_embed`, `hook_pos_embed`,
`blocks.{L}.hook_resid_pre|mid|post`, `blocks.{L}.ln1.hook_scale|hook_normalized`,
`blocks.{L}.attn.hook_q|k|v|rot_q|rot_k|attn_scores|pattern|z`, `blocks.{L}.hook_attn_out`,
`blocks.{L}.ln2.hook_*`, `blocks.{L}.mlp.hook_pre|pre_linear|post`, `blocks.{L}.hook_mlp_out`,
`ln_final.hook_*`. `ln*.hook_normalized` is the full norm output (gain applied), i.e. exactly what
attention / MLP / unembedding read. Shapes: q/k/v/z are `[batch, pos, head, d_head]`, scores and
pattern `[batch, head, query_pos, key_pos]`.

When neither `hook_attn_scores` nor `hook_pattern` of a layer is hooked, attention runs through
`F.scaled_dot_product_attention` (the sink as an extra zero key with its logit in the mask);
otherwise it is computed explicitly so the pattern can be read and edited. Both agree (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from sparsecircuits.hooks import HookedModule, HookPoint
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.sparsity import SparseWeight, abs_topk


def _maybe_topk(x: Tensor, cfg: ModelConfig, site: str) -> Tensor:
    return abs_topk(x, cfg.act_sparsity) if cfg.sparse_at(site) else x


class Norm(nn.Module):
    """RMSNorm (gain only) or LayerNorm (gain and bias), optionally followed by AbsTopK."""

    def __init__(self, cfg: ModelConfig, sparsity_site: str | None = None) -> None:
        super().__init__()
        self.cfg, self.site = cfg, sparsity_site
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.norm == "layer" else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.b is not None:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps).sqrt())
        out = x / scale * self.w
        if self.b is not None:
            out = out + self.b
        if self.site is not None:
            out = _maybe_topk(out, self.cfg, self.site)
        return self.hook_normalized(out)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Causal multi-head (or grouped-query) attention with optional sink and rotary embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
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
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())
        if cfg.positions == "rotary":
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
            rot = cfg.rotary_dim or dh
            inv_freq = 1.0 / cfg.rotary_base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
            angles = torch.outer(torch.arange(cfg.n_ctx, dtype=torch.float64), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)  # [n_ctx, rot]
            self.register_buffer("rot_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rot_sin", angles.sin().float(), persistent=False)

    def _rotary(self, x: Float[Tensor, "batch pos head d_head"]) -> Tensor:
        rot = self.rot_cos.shape[-1]
        cos = self.rot_cos[: x.shape[1], None, :].to(x.dtype)  # [pos, 1, rot]
        sin = self.rot_sin[: x.shape[1], None, :].to(x.dtype)
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)

    def _project(self, x: Tensor, W: Tensor, b: Tensor | None, site: str, n: int) -> Tensor:
        y = _maybe_topk(F.linear(x, W, b), self.cfg, site)
        return y.view(*x.shape[:2], n, self.cfg.d_head)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        B, T, _ = x.shape
        H, KV, dh = cfg.n_heads, cfg.kv_heads, cfg.d_head
        q = self.hook_q(self._project(x, self.W_Q, self.b_Q, "q", H))
        k = self.hook_k(self._project(x, self.W_K, self.b_K, "k", KV))
        v = self.hook_v(self._project(x, self.W_V, self.b_V, "v", KV))
        if cfg.positions == "rotary":
            q, k = self.hook_rot_q(self._rotary(q)), self.hook_rot_k(self._rotary(k))
        if self.hook_attn_scores.active or self.hook_pattern.active:
            z = self._explicit(q, k, v)
        else:
            z = self._fused(q, k, v)
        z = self.hook_z(z)  # [batch, pos, head, d_head]
        return F.linear(z.reshape(B, T, H * dh), self.W_O, self.b_O)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, T, H, dh = q.shape
        KV = k.shape[2]
        qg = q.view(B, T, KV, H // KV, dh)
        scores = torch.einsum("bqkgd,bskd->bkgqs", qg, k).reshape(B, H, T, T) / math.sqrt(dh)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        if self.sink is not None:
            sink = self.sink.to(scores.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
            pattern = torch.cat((scores, sink), dim=-1).softmax(dim=-1)[..., :T]
        else:
            pattern = scores.softmax(dim=-1)
        pattern = self.hook_pattern(pattern)
        pg = pattern.view(B, KV, H // KV, T, T)
        return torch.einsum("bkgqs,bskd->bqkgd", pg, v).reshape(B, T, H, dh)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, T, H, dh = q.shape
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        gqa = k.shape[1] != H
        if self.sink is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            # The sink is one more key, of value zero, whose logit comes from the additive mask.
            zeros = k.new_zeros(B, k.shape[1], 1, dh)
            k, v = torch.cat((k, zeros), dim=2), torch.cat((v, zeros), dim=2)
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            mask = q.new_zeros(T, T).masked_fill(~causal, float("-inf")).expand(H, T, T)
            mask = torch.cat((mask, self.sink.to(q.dtype).view(H, 1, 1).expand(H, T, 1)), dim=-1)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return z.transpose(1, 2)


class MLP(nn.Module):
    """Two-layer MLP (or SwiGLU), with optional AbsTopK on the neurons."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.W_gate = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model)) if cfg.act == "swiglu" else None
        self.W_out = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp)) if cfg.bias_mlp else None
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.bias_mlp else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp], before the activation (the gate for SwiGLU)
        if cfg.act == "swiglu":
            self.hook_pre_linear = HookPoint()  # the linear (up) branch of SwiGLU
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], the neurons

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        act = self.cfg.act
        if act == "swiglu":
            gate = self.hook_pre(F.linear(x, self.W_gate))
            h = F.silu(gate) * self.hook_pre_linear(F.linear(x, self.W_in, self.b_in))
        else:
            pre = self.hook_pre(F.linear(x, self.W_in, self.b_in))
            if act == "gelu":
                h = F.gelu(pre)
            elif act == "gelu_new":
                h = F.gelu(pre, approximate="tanh")
            else:
                h = F.relu(pre)
        h = self.hook_post(_maybe_topk(h, self.cfg, "mlp_neurons"))
        return F.linear(h, self.W_out, self.b_out)


class Block(nn.Module):
    """Pre-norm residual block: attention then MLP (or both in parallel)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1, self.attn = Norm(cfg, "attn_in"), Attention(cfg)
        self.ln2, self.mlp = Norm(cfg, "mlp_in"), MLP(cfg)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        if not cfg.parallel_attn_mlp:
            self.hook_resid_mid = HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(_maybe_topk(self.attn(self.ln1(resid)), cfg, "attn_out"))
        if cfg.parallel_attn_mlp:
            mlp_in = resid
        else:
            resid = mlp_in = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(_maybe_topk(self.mlp(self.ln2(mlp_in)), cfg, "mlp_out"))
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
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = Norm(cfg)
        self.W_U = None if cfg.tied_embeddings else nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab)) if cfg.bias_unembed else None
        self.W_bigram = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_vocab)) if cfg.bigram_table else None
        init_weights(self)
        self.setup_hooks()

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        self._check_tokens(tokens)
        # F.embedding, not W[tokens]: its CPU backward is deterministic (index_put_ accumulate is not),
        # which exact resume relies on, and faster.
        resid = self.hook_embed(F.embedding(tokens, self.W_E))
        if self.cfg.positions == "learned":
            resid = resid + self.hook_pos_embed(self.W_pos[: tokens.shape[1]])
        for block in self.blocks:
            resid = block(resid)
        W_U = self.W_E if self.W_U is None else self.W_U
        logits = F.linear(self.ln_final(resid), W_U, self.b_U)
        if self.W_bigram is not None:
            logits = logits + F.embedding(tokens, self.W_bigram)
        return logits

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [batch, pos], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model's n_ctx={self.cfg.n_ctx}")
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
