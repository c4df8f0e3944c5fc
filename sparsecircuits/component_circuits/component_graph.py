"""The component graph: token embedding, attention heads (separate q, k, v inputs), MLPs and logits,
with edge masks at reader inputs (DESIGN.md "Masks and ablations").

Writers (nodes with an output into the residual stream), in forward order: the token embedding
(plus the learned position embedding when there is one), then per layer every attention head (its
share of the attention output, below; without bias terms) and the MLP (`hook_mlp_out`). Readers
(inputs that read the residual stream): per layer the q input of every query head, the k and v
inputs of every key/value group (grouped-query attention natively: one reader per KV group, no
un-grouped copies), the MLP input, and finally the logits. An edge joins a writer to every reader
downstream of it (same layer: heads feed the MLP unless attention and MLP run in parallel). This is
the graph of ACDC (Conmy et al. 2023), EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

A reader's input is the sum of its upstream writers' outputs (plus biases). An edge mask `m[w, r]`
acts there: the reader's input becomes `input_r - sum_w (1 - m[w, r]) * (out_w - base_w)`, where
`out_w` is the writer's output *in the masked run* and `base_w` its baseline (DESIGN.md). Steps of
one masked forward (`edge_mask_hooks`):
  1. record each writer's output as it is produced (`hook_embed` [+ `hook_pos_embed`], per-head
     outputs from `attn.hook_z`, turned into shares at `hook_attn_out`, `hook_mlp_out`);
  2. at each reader input (`blocks.L.hook_q_input|k_input|v_input` — these switch the block to
     per-head inputs, see `model/transformer.py` — `blocks.L.hook_mlp_in`, and the last
     `hook_resid_post` for the logits) subtract the masked differences of the writers upstream.
Masks of ones reproduce the clean run exactly; masking every edge out of a writer replaces its
output by the baseline everywhere (node ablation); masking every edge into a reader replaces its
input by the baseline's. A mask may have a leading dim c: the batch is then c copies of the
examples, copy i under mask i (many single-edge ablations in one forward). This dense masked
forward is the definition; `resume.py` (masks resumed from a cached run) and `eap.py` (gradients)
compute the same values with less work, and the tests hold them to it.

Nonlinear writers (docs/architecture.md "Nonlinear writers"). With a post-norm `ln1_post` (Gemma 2)
and/or AbsTopK on the attention output (Gao et al.; both shipped quickstart models) the heads' outputs
`o_h = z_h W_O[:, h]` pass through a per-position nonlinearity before the residual add. Once its
state is fixed — the post-norm's scale s ([batch, pos, 1], `ln1_post.hook_scale`; LayerNorm also
centres, C x = x - mean(x), which is linear) and AbsTopK's kept set S (the 0/1 mask at
`hook_attn_out_keep`) — it is linear, and the attention output splits exactly over the heads:
    hook_attn_out = S * (w / s * C(sum_h o_h + b_O) + b_norm)
                  = sum_h share_h + S * (w / s * C b_O + b_norm),   share_h = S * (w / s) * C o_h.
A head's output in the graph is its share under the state *of the run being measured*: the
recording keeps the raw o_h at `attn.hook_z` and turns them into shares when `hook_attn_out` fires,
with the scale and keep mask that run just computed. So a masked or patched forward recomputes the
state live (exact patching stays a true intervention), and baselines (mean, zero, counterfactual,
resample) are shares computed the same way in the baseline run. The bias share and the norm bias
are not writers (as `b_O` is not). Gradient methods hold the state constant (`frozen_state_hooks`,
used by `eap.py`). Without a post-norm or AbsTopK at attn_out the share is `o_h` itself, recorded at
`attn.hook_z` with no extra work. Other AbsTopK sites need nothing: `mlp_out` (and `ln2_post`) come
after the single MLP writer and are part of it; `attn_in`, `q`, `k`, `v`, `mlp_in`, `mlp_neurons`
are on the reader side and stay live, which is what the model computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sparsecircuits.graph import Node
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.transformer import Transformer

READER_KINDS = ("q", "k", "v", "mlp", "logit")


@dataclass(frozen=True)
class ComponentGraph:
    """Writers, readers and which writer feeds which reader; indices are positions in these lists."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool  # attention and MLP read the same residual
    writers: list[Node]  # embed, then per layer heads 0..H-1 and the MLP
    readers: list[Node]  # per layer q heads, k groups, v groups, MLP input; then logits
    valid: Bool[Tensor, "W R"]  # writer upstream of reader

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def writer_start(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1)

    def reader_start(self, layer: int) -> int:
        return layer * (self.n_heads + 2 * self.n_kv_heads + 1)

    def head_writer(self, layer: int, head: int) -> int:
        return self.writer_start(layer) + head

    def mlp_writer(self, layer: int) -> int:
        return self.writer_start(layer) + self.n_heads

    def mlp_reader(self, layer: int) -> int:
        return self.reader_start(layer) + self.n_heads + 2 * self.n_kv_heads

    @property
    def logit_reader(self) -> int:
        return len(self.readers) - 1

    def reader_of_writer(self, w: int) -> list[int]:
        """The reader inputs of a writer's own component (q/k/v of a head, the MLP input; none for embed)."""
        node = self.writers[w]
        if node.kind == "mlp":
            return [self.mlp_reader(node.layer)]
        if node.kind != "head":
            return []
        r0, H, KV = self.reader_start(node.layer), self.n_heads, self.n_kv_heads
        g = node.index // (H // KV)
        return [r0 + node.index, r0 + H + g, r0 + H + KV + g]

    def edge_name(self, w: int, r: int) -> str:
        return f"{self.writers[w].id} -> {self.readers[r].id}"


def build_graph(model: Transformer) -> ComponentGraph:
    """The component graph of a model (a pure function of its config)."""
    cfg = model.cfg
    H, KV, L = cfg.n_heads, cfg.kv_heads, cfg.n_layers
    writers = [Node("hook_embed", 0, "embed", -1)]
    readers: list[Node] = []
    for layer in range(L):
        p = f"blocks.{layer}"
        writers += [Node(f"{p}.attn.hook_z", h, "head", layer) for h in range(H)]
        writers.append(Node(f"{p}.hook_mlp_out", 0, "mlp", layer))
        readers += [Node(f"{p}.hook_q_input", h, "q", layer) for h in range(H)]
        readers += [Node(f"{p}.hook_k_input", g, "k", layer) for g in range(KV)]
        readers += [Node(f"{p}.hook_v_input", g, "v", layer) for g in range(KV)]
        readers.append(Node(f"{p}.hook_mlp_out", 0, "mlp", layer))  # the MLP node: its input is an edge target
    readers.append(Node("logits", 0, "logit", L))
    valid = torch.zeros(len(writers), len(readers), dtype=torch.bool)
    per_layer = H + 2 * KV + 1
    for layer in range(L):
        ws, rs = 1 + layer * (H + 1), layer * per_layer
        valid[:ws, rs: rs + H + 2 * KV] = True  # attention reads everything before this layer
        valid[: ws if cfg.parallel_attn_mlp else ws + H, rs + per_layer - 1] = True
    valid[:, -1] = True
    return ComponentGraph(L, H, KV, cfg.parallel_attn_mlp, writers, readers, valid)


def nonlinear_heads(model: Transformer) -> bool:
    """Whether the heads' outputs pass a per-position nonlinearity (post-norm, AbsTopK at attn_out)
    before the residual add, so that a head's output is its share (module docstring)."""
    return model.cfg.post_norms or model.cfg.sparse_at("attn_out")


def head_shares(
    raw: Float[Tensor, "batch pos head d_model"], scale: Float[Tensor, "batch pos 1"] | None,
    keep: Float[Tensor, "batch pos d_model"] | None, gain: Float[Tensor, " d_model"] | None, centre: bool,
) -> Float[Tensor, "batch pos head d_model"]:
    """Each head's share `S * (w / s) * C o_h` of a nonlinear attention output (module docstring):
    `raw` the heads' outputs o_h; `scale` and `gain` the post-norm's s and w, `centre` whether it is
    a LayerNorm (both ignored when `scale` is None: no post-norm); `keep` AbsTopK's selection S
    (None without AbsTopK)."""
    out = raw
    if scale is not None:
        if centre:  # LayerNorm's centring is linear, so it applies to each head alone
            out = out - out.mean(-1, keepdim=True)
        out = out / scale.unsqueeze(2) * gain
    return out if keep is None else out * keep.unsqueeze(2)


def frozen_state_hooks(model: Transformer) -> list[tuple[str, HookFn]]:
    """Hooks holding the nonlinear writers' state constant under autograd, for gradient methods: the
    post-norms' scales are detached (AbsTopK's selection is built without a gradient already), as
    attribution graphs freeze norm scales. Attach them before the recording hooks, which then see the
    detached scale. Empty without post-norms."""
    if not model.cfg.post_norms:
        return []

    def detach(x: Tensor, hook: HookPoint) -> Tensor:
        return x.detach()

    return [(f"blocks.{L}.{norm}.hook_scale", detach)
            for L in range(model.cfg.n_layers) for norm in ("ln1_post", "ln2_post")]


class _Run:
    """Writer outputs of one forward, in graph order, as they are produced."""

    def __init__(self) -> None:
        self.outs: list[Tensor] = []  # each [batch, pos, k, d_model]

    def stacked(self) -> Tensor:
        return torch.cat(self.outs, dim=2)


def head_hooks(model: Transformer, layer: int, emit: Callable[[Tensor], None]) -> list[tuple[str, HookFn]]:
    """Hooks recording one layer's head outputs ([batch, pos, head, d_model], passed to `emit`): o_h at
    `attn.hook_z`; for nonlinear writers o_h is kept there and its share emitted at `hook_attn_out`,
    with the scale and selection of this run (execution order: `attn.hook_z`, `ln1_post.hook_scale`,
    `hook_attn_out_keep`, `hook_attn_out`)."""
    cfg, block, p = model.cfg, model.blocks[layer], f"blocks.{layer}"
    W_O = block.attn.W_O  # [d_model, H * d_head]
    nonlinear = nonlinear_heads(model)
    state: dict[str, Tensor] = {}

    def raw(z: Tensor, hook: HookPoint) -> None:
        o = torch.einsum("bphe,dhe->bphd", z, W_O.view(-1, cfg.n_heads, cfg.d_head))
        if nonlinear:
            state["raw"] = o
        else:
            emit(o)

    hooks: list[tuple[str, HookFn]] = [(f"{p}.attn.hook_z", raw)]
    if not nonlinear:
        return hooks

    def keeper(key: str) -> HookFn:
        def fn(x: Tensor, hook: HookPoint) -> None:
            state[key] = x

        return fn

    def share(x: Tensor, hook: HookPoint) -> None:
        gain = block.ln1_post.w if cfg.post_norms else None
        emit(head_shares(state.pop("raw"), state.pop("scale", None), state.pop("keep", None), gain, cfg.norm == "layer"))

    if cfg.post_norms:
        hooks.append((f"{p}.ln1_post.hook_scale", keeper("scale")))
    if cfg.sparse_at("attn_out"):
        hooks.append((f"{p}.hook_attn_out_keep", keeper("keep")))
    return hooks + [(f"{p}.hook_attn_out", share)]


def _recording_hooks(model: Transformer, run: _Run) -> list[tuple[str, HookFn]]:
    cfg = model.cfg

    def embed(x: Tensor, hook: HookPoint) -> None:
        run.outs[:] = [x.unsqueeze(2)]  # in place: the head hooks hold `run.outs.append`

    def pos(x: Tensor, hook: HookPoint) -> None:  # [pos, d_model] ([batch, pos, d_model] with a padding mask)
        run.outs[0] = run.outs[0] + x.unsqueeze(-2)

    def mlp(x: Tensor, hook: HookPoint) -> None:
        run.outs.append(x.unsqueeze(2))

    hooks: list[tuple[str, HookFn]] = [("hook_embed", embed)]
    if cfg.positions == "learned":
        hooks.append(("hook_pos_embed", pos))
    for layer in range(cfg.n_layers):
        hooks += head_hooks(model, layer, run.outs.append) + [(f"blocks.{layer}.hook_mlp_out", mlp)]
    return hooks


def writer_outputs(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos W d_model"]:
    """Every writer's output on `tokens` (the full model, no masks; heads: their shares under this
    run's state, module docstring). The logits are left out (`at` one position, unembedded there only)."""
    run = _Run()
    at = torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
    with torch.no_grad(), model.hooks(_recording_hooks(model, run)):
        model(tokens, at=at)
    return run.stacked()


def edge_mask_hooks(
    model: Transformer, graph: ComponentGraph, mask: Float[Tensor, "*c W R"],
    base: Float[Tensor, "nb pb W d_model"] | None = None, delta: Float[Tensor, "n pos W d_model"] | None = None,
) -> list[tuple[str, HookFn]]:
    """Hooks running the model under an edge mask (module docstring).

    `base` holds baseline writer outputs, broadcastable to the examples (`[1, 1, W, d]` for a mean,
    `[n, pos, W, d]` per example); the masked difference is then `out_w - base_w` of this run. With
    `delta` instead, a fixed difference is used (`clean - baseline`, EAP-IG over interpolated inputs):
    the run's own writer outputs then do not enter. With a leading mask dim c the batch must be c
    copies of the n examples (copy-major, as `Tensor.repeat`)."""
    if (base is None) == (delta is None):
        raise ValueError("edge_mask_hooks needs exactly one of base and delta")
    run = _Run()
    hooks = _recording_hooks(model, run) if delta is None else []
    inv = 1.0 - (mask if mask.dim() == 3 else mask.unsqueeze(0))  # [c, W, R]
    ref = base if delta is None else delta
    assert ref is not None

    def adjust(n_up: int, r0: int, r1: int) -> Tensor:
        c = inv.shape[0]
        if delta is None:
            outs = run.stacked()[:, :, :n_up]  # parallel blocks: this layer's heads exist, the MLP does not read them
            B, T = outs.shape[:2]
            d = outs.view(c, B // c, T, n_up, -1) - ref[:, :T, :n_up].unsqueeze(0)
        else:
            d = ref[:, :, :n_up].unsqueeze(0)
            B, T = d.shape[1] * c, d.shape[2]
        adj = torch.einsum("cnpwd,cwr->cnprd", d.to(inv.dtype), inv[:, :n_up, r0:r1])
        return adj.reshape(B, T, r1 - r0, -1)

    def reader(n_up: int, r0: int, r1: int, squeeze: bool) -> HookFn:
        def fn(x: Tensor, hook: HookPoint) -> Tensor:
            adj = adjust(n_up, r0, r1)
            return x - (adj[:, :, 0] if squeeze else adj).to(x.dtype)

        return fn

    H, KV = graph.n_heads, graph.n_kv_heads
    for layer in range(graph.n_layers):
        ws, rs, p = graph.writer_start(layer), graph.reader_start(layer), f"blocks.{layer}"
        hooks += [(f"{p}.hook_q_input", reader(ws, rs, rs + H, False)),
                  (f"{p}.hook_k_input", reader(ws, rs + H, rs + H + KV, False)),
                  (f"{p}.hook_v_input", reader(ws, rs + H + KV, rs + H + 2 * KV, False))]
        mr = graph.mlp_reader(layer)
        hooks.append((f"{p}.hook_mlp_in", reader(ws if graph.parallel else ws + H, mr, mr + 1, True)))
    W, R = len(graph.writers), len(graph.readers)
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", reader(W, R - 1, R, True)))
    return hooks


def run_masked(
    model: Transformer, graph: ComponentGraph, tokens: Int[Tensor, "batch pos"], mask: Float[Tensor, "*c W R"],
    base: Tensor | None = None, delta: Tensor | None = None,
    embed_fn: Callable[[Tensor, HookPoint], Tensor | None] | None = None, frozen: bool = False,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits under an edge mask (with a leading mask dim c, `tokens` are tiled c times here).
    `embed_fn` is an extra hook on `hook_embed`, run before the recording (input interpolation).
    `frozen=True` holds the nonlinear writers' state constant under autograd (`frozen_state_hooks`;
    the forward values are unchanged), for gradient methods."""
    c = mask.shape[0] if mask.dim() == 3 else 1
    hooks = edge_mask_hooks(model, graph, mask, base, delta)
    if embed_fn is not None:
        hooks.insert(0, ("hook_embed", embed_fn))
    if frozen:
        hooks = frozen_state_hooks(model) + hooks
    with model.hooks(hooks):
        return model(tokens.repeat(c, 1) if c > 1 else tokens)


def ones_mask(graph: ComponentGraph, device: torch.device | str = "cpu") -> Float[Tensor, "W R"]:
    """All edges on (invalid writer/reader pairs are ignored by the hooks' slicing)."""
    return torch.ones(len(graph.writers), len(graph.readers), device=device)


def node_mask(graph: ComponentGraph, keep: Bool[Tensor, " W"]) -> Float[Tensor, "W R"]:
    """Edge mask ablating every writer not in `keep` (all its outgoing edges off)."""
    return keep.float().unsqueeze(1).expand(-1, len(graph.readers)).clone()


def edges_into_nodes(graph: ComponentGraph, keep: Bool[Tensor, " W"]) -> Bool[Tensor, "W R"]:
    """Valid edges between kept writers and the readers of kept components (and the logits)."""
    reader_on = torch.zeros(len(graph.readers), dtype=torch.bool)
    reader_on[graph.logit_reader] = True
    for w in torch.nonzero(keep).flatten().tolist():
        for r in graph.reader_of_writer(w):
            reader_on[r] = True
    return graph.valid & keep.unsqueeze(1) & reader_on.unsqueeze(0)


__all__ = ["ComponentGraph", "READER_KINDS", "build_graph", "edge_mask_hooks", "edges_into_nodes",
           "frozen_state_hooks", "head_hooks", "head_shares", "node_mask", "nonlinear_heads", "ones_mask", "run_masked",
           "writer_outputs"]
