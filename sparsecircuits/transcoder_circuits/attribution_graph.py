"""Transcoder attribution graphs: exact direct effects in the linearised replacement model.

Dunefsky et al. (2024), "Transcoders find interpretable LLM feature circuits", in the formulation of
Ameisen et al. (2025) / circuit-tracer ("Circuit tracing: revealing computational graphs in language
models"). Nodes, in this order (rows = targets, columns = sources of `adjacency`, as circuit-tracer):

    active features (layer, pos, feature)  |  errors (layer, pos), layer-major  |  tokens (pos)  |  logits

Steps:
1. `replacement.freeze`: one clean forward pass records norm scales, attention patterns, AbsTopK
   selections, transcoder inputs, feature activations z and errors (MLP out − transcoder out).
2. Logit targets: the last position's most likely tokens until 95% cumulative probability (≤ 10);
   each target reads the unembedding direction minus the mean direction, W_U[t] − mean_v W_U[v].
3. Batched backward passes, written as the transposed maps of the frozen model (no autograd): inject
   each target's direction — a feature's encoder column e_f at its transcoder input and position, a
   logit direction at ln_final's output — and carry it down the residual stream through the frozen
   linear paths only: transposed frozen norms (post-norms included), frozen AbsTopK selections
   (S ⊙ g; see `replacement.py` for which sites matter), attention OV with the frozen pattern,
   transcoder skip connections. At each MLP output the gradient g gives the direct effect of every
   source written there: feature z_i · (d_i · g), error err · g; at the bottom, token embedding e_p · g.
   Gradients stop at feature activations, so each edge is a direct effect.
4. Bias contributions: the replacement model run with every source (features, errors, embeddings)
   zero. For every target, value = Σ incoming edges + bias (tested), where a feature's value is its
   pre-activation and a logit's is its demeaned unembedding read (before bigram table and soft-cap,
   which do not depend on the sources).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.model.transformer import Norm, Transformer
from sparsecircuits.transcoder_circuits.replacement import FrozenState, freeze, replacement_forward


@dataclass
class AttributionConfig:
    """Options of `attribute`."""

    max_logits: int = 10  # at most this many logit targets
    logit_prob: float = 0.95  # ... or fewer once their cumulative probability reaches this
    batch_size: int = 256  # targets per backward batch

    def __post_init__(self) -> None:
        if self.max_logits < 1:
            raise ValueError(f"AttributionConfig.max_logits must be >= 1, got {self.max_logits}")
        if not 0.0 < self.logit_prob <= 1.0:
            raise ValueError(f"AttributionConfig.logit_prob must be in (0, 1], got {self.logit_prob}")
        if self.batch_size < 1:
            raise ValueError(f"AttributionConfig.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class AttributionGraph:
    """Direct-effect adjacency over all nodes of one prompt (node order: module docstring)."""

    adjacency: Tensor  # [n_nodes, n_nodes] A[target, source] = direct effect of source on target
    features: Tensor  # [n_features, 3] (layer, pos, feature index), sorted
    activations: Tensor  # [n_features] feature activations z
    values: Tensor  # [n_nodes] feature pre-activation, error norm, embedding norm, demeaned logit
    bias: Tensor  # [n_nodes] bias contribution of each target (0 for errors and tokens)
    tokens: Tensor  # [pos] the prompt
    logit_tokens: Tensor  # [n_logits] vocabulary ids of the logit targets, most likely first
    logit_probs: Tensor  # [n_logits] their probabilities
    n_layers: int

    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + int(self.logit_tokens.numel())

    def kind(self, i: int) -> str:
        """"feature", "error", "embed" or "logit" for node index i."""
        return ("feature" if i < self.error_start else "error" if i < self.token_start
                else "embed" if i < self.logit_start else "logit")


def _norm_T(g: Tensor, norm: Norm, scale: Tensor) -> Tensor:
    """Transpose of a norm with frozen scale: x -> C(x) / s * w (+ b); C centres for LayerNorm."""
    out = g * (norm.w / scale)
    return out - out.mean(-1, keepdim=True) if norm.b is not None else out


class _Backward:
    """The transposed frozen model of step 3; holds per-layer sources to read edges off."""

    def __init__(self, model: Transformer, transcoders: dict[int, Dictionary], st: FrozenState, feats: Tensor) -> None:
        self.model, self.tcs, self.st = model, transcoders, st
        T, self.L = st.tokens.numel(), model.cfg.n_layers
        self.T = T  # positions the current backward runs over (see `rows`)
        # Per layer: decoder contributions z_i d_i padded per position, for one bmm per layer.
        self.dec: list[tuple[Tensor, Tensor, Tensor, Tensor] | None] = []
        for layer in range(self.L):
            sel = torch.nonzero(feats[:, 0] == layer).squeeze(1)
            if not sel.numel():
                self.dec.append(None)
                continue
            pos, idx = feats[sel, 1], feats[sel, 2]
            counts = torch.bincount(pos, minlength=T)
            slot = torch.arange(sel.numel()) - (torch.cumsum(counts, 0) - counts)[pos]  # feats sorted by pos
            pad = st.acts[layer].new_zeros(T, int(counts.max()), st.embed.shape[-1])
            pad[pos, slot] = st.acts[layer][pos, idx, None] * transcoders[layer].W_dec[idx]
            self.dec.append((sel, pos, slot, pad))

    def _scale(self, layer: int, name: str) -> Tensor:
        return self.st.scales[f"blocks.{layer}.{name}.hook_scale"][: self.T]

    def _select(self, g: Tensor, name: str) -> Tensor:
        """Transpose of a frozen AbsTopK selection (S ⊙ ·, its own transpose); identity where it is off."""
        keep = self.st.keep(name)
        return g if keep is None else g * keep[: self.T]

    def _attn_T(self, g: Tensor, layer: int) -> Tensor:
        """Gradient at the block's attention output (`hook_attn_out`) -> gradient at its residual input.
        Forward: ln1 (+ selection) -> v (+ selection) -> frozen pattern -> W_O -> post-norm -> selection."""
        block, cfg, p = self.model.blocks[layer], self.model.cfg, f"blocks.{layer}"
        B, T, _ = g.shape
        g = self._select(g, f"{p}.hook_attn_out_keep")
        if cfg.post_norms:
            g = _norm_T(g, block.ln1_post, self._scale(layer, "ln1_post"))
        attn = block.attn
        g_z = (g @ attn.W_O).view(B, T, cfg.n_heads, cfg.d_head)
        g_v = torch.einsum("hqk,bqhd->bkhd", self.st.patterns[layer][:, :T, :T], g_z)
        g_v = g_v.reshape(B, T, cfg.kv_heads, cfg.n_heads // cfg.kv_heads, cfg.d_head).sum(3)
        g_v = self._select(g_v.reshape(B, T, -1), f"{p}.attn.hook_v_keep")
        g_ln = self._select(g_v @ attn.W_V, f"{p}.ln1.hook_keep")
        return _norm_T(g_ln, block.ln1, self._scale(layer, "ln1"))

    def _input_T(self, g_in: Tensor, layer: int) -> Tensor:
        """Gradient at the transcoder input -> gradient at the residual the MLP reads."""
        if self.st.sites[layer] != "ln2.hook_normalized":
            return g_in
        g_in = self._select(g_in, f"blocks.{layer}.ln2.hook_keep")
        return _norm_T(g_in, self.model.blocks[layer].ln2, self._scale(layer, "ln2"))

    def rows(self, inject: list[Tensor | None], top: int, n_pos: int, final: Tensor | None, out: Tensor) -> None:
        """Fill `out` [B, n_nodes] with the direct effects on B targets.

        `inject[layer]` is [B, n_pos, d_model] (the targets' directions at that layer's transcoder
        input, zero rows for targets elsewhere) or None; `final` is [B, d_model] at ln_final's output
        at the last position (logit targets) or None; `top` is the highest layer with an injection and
        `n_pos` one past the last position with one (attention is causal: later positions get no
        gradient, so the pass runs on the first n_pos positions only)."""
        st, cfg = self.st, self.model.cfg
        B, T, F = out.shape[0], st.tokens.numel(), int(sum(d[0].numel() for d in self.dec if d is not None))
        self.T = Tp = n_pos
        g = st.embed.new_zeros(B, Tp, cfg.d_model)
        if final is not None:
            g[:, -1] = _norm_T(final, self.model.ln_final, st.scales["ln_final.hook_scale"][-1])
        for layer in range(top, -1, -1):
            dec = self.dec[layer]
            if dec is not None:
                sel, pos, slot, pad = dec
                e = torch.bmm(g.transpose(0, 1), pad[:Tp].transpose(1, 2))  # [n_pos, B, max per pos]
                keep = pos < Tp
                out[:, sel[keep]] = e[pos[keep], :, slot[keep]].T
            out[:, F + layer * T: F + layer * T + Tp] = torch.einsum("btd,td->bt", g, st.errors[layer][:Tp])
            tc = self.tcs[layer]
            g_in = g @ tc.W_skip if tc.W_skip is not None else None
            if inject[layer] is not None:
                g_in = inject[layer] if g_in is None else g_in + inject[layer]
            read = self._input_T(g_in, layer) if g_in is not None else None
            if cfg.parallel_attn_mlp:
                g = g + self._attn_T(g, layer) + (read if read is not None else 0)
            else:
                g = g if read is None else g + read
                g = g + self._attn_T(g, layer)
        out[:, F + self.L * T: F + self.L * T + Tp] = torch.einsum("btd,td->bt", g, st.embed[:Tp])


def select_logits(logits: Float[Tensor, " d_vocab"], max_logits: int, prob: float) -> tuple[Tensor, Tensor]:
    """Most likely tokens until their cumulative probability reaches `prob`, at most `max_logits`."""
    p = logits.double().softmax(-1)
    top_p, top_i = p.topk(min(max_logits, p.numel()))
    n = int(torch.searchsorted(top_p.cumsum(0), torch.tensor([prob], dtype=top_p.dtype)).item()) + 1
    n = min(n, top_i.numel())
    return top_i[:n], top_p[:n].to(logits.dtype)


def logit_directions(model: Transformer, tokens: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
    """Unembedding rows minus the mean row: what the demeaned logit reads from ln_final's output."""
    W_U = model.W_E if model.W_U is None else model.W_U
    return W_U[tokens] - W_U.mean(0)


def _logit_bias(model: Transformer, tokens: Tensor) -> Tensor:
    if model.b_U is None:
        return model.W_E.new_zeros(tokens.numel())
    return model.b_U[tokens] - model.b_U.mean()


@torch.no_grad()
def attribute(
    model: Transformer,
    transcoders: dict[int, Dictionary],
    tokens: Int[Tensor, " pos"],
    cfg: AttributionConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AttributionGraph:
    """The attribution graph of one prompt (module docstring); `progress(done, total)` per batch."""
    cfg = cfg or AttributionConfig()
    st = freeze(model, transcoders, tokens)
    L, T = model.cfg.n_layers, tokens.numel()
    feats = torch.cat([torch.cat([torch.full((len(nz), 1), i), nz], 1)
                       for i, nz in enumerate(torch.nonzero(a) for a in st.acts)])
    acts = torch.stack([st.acts[int(i)][p, f] for i, p, f in feats]) if len(feats) else st.embed.new_zeros(0)
    logit_tok, logit_p = select_logits(st.logits[-1], cfg.max_logits, cfg.logit_prob)
    nF, nLg = len(feats), logit_tok.numel()
    n = nF + (L + 1) * T + nLg
    A = st.embed.new_zeros(n, n)
    back = _Backward(model, transcoders, st, feats)
    # Targets: logits, then features by layer (highest first) and position, so that a batch's backward
    # starts no higher and runs over no more positions than it needs.
    order = sorted(range(nF), key=lambda i: (-int(feats[i, 0]), int(feats[i, 1])))
    targets = [n - nLg + j for j in range(nLg)] + order
    dirs = logit_directions(model, logit_tok)
    batches = [targets[i: i + cfg.batch_size] for i in range(0, len(targets), cfg.batch_size)]
    for done, batch in enumerate(batches):
        rows = torch.tensor(batch)
        is_logit = rows >= n - nLg
        final = None
        if bool(is_logit.any()):
            final = st.embed.new_zeros(len(batch), model.cfg.d_model)
            final[is_logit] = dirs[rows[is_logit] - (n - nLg)]
        inject: list[Tensor | None] = [None] * L
        fb = torch.nonzero(~is_logit).squeeze(1)
        n_pos = T if final is not None else int(feats[rows[fb], 1].max()) + 1
        for layer in feats[rows[fb], 0].unique().tolist():
            j = fb[feats[rows[fb], 0] == layer]
            g = st.embed.new_zeros(len(batch), n_pos, model.cfg.d_model)
            g[j, feats[rows[j], 1]] = transcoders[layer].W_enc[:, feats[rows[j], 2]].T
            inject[layer] = g
        top = L - 1 if final is not None else int(feats[rows[fb], 0].max())
        out = A.new_zeros(len(batch), n)
        back.rows(inject, top, n_pos, final, out)
        A[rows] = out
        if progress is not None:
            progress(done + 1, len(batches))
    values, bias = _values_and_bias(model, transcoders, st, feats, logit_tok, n)
    return AttributionGraph(adjacency=A, features=feats, activations=acts, values=values, bias=bias,
                            tokens=tokens.clone(), logit_tokens=logit_tok, logit_probs=logit_p, n_layers=L)


def _values_and_bias(model: Transformer, transcoders: dict[int, Dictionary], st: FrozenState, feats: Tensor,
                     logit_tok: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Step 4: each target's value, and its bias contribution (the replacement model, sources zero)."""
    L, T = model.cfg.n_layers, st.tokens.numel()
    dirs, b_logit = logit_directions(model, logit_tok), _logit_bias(model, logit_tok)
    zero = replacement_forward(model, transcoders, st, acts=[torch.zeros_like(a)[None] for a in st.acts],
                               errors=[torch.zeros_like(e)[None] for e in st.errors],
                               embed=torch.zeros_like(st.embed)[None])
    values, bias = st.embed.new_zeros(n), st.embed.new_zeros(n)
    nF, nLg = len(feats), logit_tok.numel()
    for layer in range(L):
        sel = feats[:, 0] == layer
        p, f = feats[sel, 1], feats[sel, 2]
        values[:nF][sel] = transcoders[layer].pre_acts(st.inputs[layer])[p, f]
        bias[:nF][sel] = zero.pre_acts[layer][0, p, f]
        values[nF + layer * T: nF + (layer + 1) * T] = st.errors[layer].norm(dim=-1)
    values[nF + L * T: nF + (L + 1) * T] = st.embed.norm(dim=-1)
    values[n - nLg:] = st.final_normed[-1] @ dirs.T + b_logit
    bias[n - nLg:] = zero.final_normed[0, -1] @ dirs.T + b_logit
    return values, bias
