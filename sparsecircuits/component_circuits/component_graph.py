"""The component graph: token embedding, attention heads (separate q, k, v inputs), MLPs and logits,
with edge masks at reader inputs (DESIGN.md "Masks and ablations").

Writers (nodes with an output into the residual stream), in forward order: the token embedding
(plus the learned position embedding when there is one), then per layer every attention head (its
`z_h @ W_O[:, h]`, without the shared bias `b_O`) and the MLP (`hook_mlp_out`). Readers (inputs
that read the residual stream): per layer the q input of every query head, the k and v inputs of
every key/value group (grouped-query attention natively: one reader per KV group, no un-grouped
copies), the MLP input, and finally the logits. An edge joins a writer to every reader downstream
of it (same layer: heads feed the MLP unless attention and MLP run in parallel). This is the graph
of ACDC (Conmy et al. 2023), EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

A reader's input is the sum of its upstream writers' outputs (plus biases). An edge mask `m[w, r]`
acts there: the reader's input becomes `input_r - sum_w (1 - m[w, r]) * (out_w - base_w)`, where
`out_w` is the writer's output *in the masked run* and `base_w` its baseline (DESIGN.md). Steps of
one masked forward (`edge_mask_hooks`):
  1. record each writer's output as it is produced (`hook_embed` [+ `hook_pos_embed`], per-head
     outputs from `attn.hook_z`, `hook_mlp_out`);
  2. at each reader input (`blocks.L.hook_q_input|k_input|v_input` — these switch the block to
     per-head inputs, see `model/transformer.py` — `blocks.L.hook_mlp_in`, and the last
     `hook_resid_post` for the logits) subtract the masked differences of the writers upstream.
Masks of ones reproduce the clean run exactly; masking every edge out of a writer replaces its
output by the baseline everywhere (node ablation); masking every edge into a reader replaces its
input by the baseline's. A mask may have a leading dim c: the batch is then c copies of the
examples, copy i under mask i (many single-edge ablations in one forward).
Head outputs must add up to the attention output, so models with post-norms (Gemma 2) or AbsTopK
on the attention output are refused.
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
    if cfg.post_norms or cfg.sparse_at("attn_out"):
        raise ValueError("the component graph needs head outputs that add up to the attention output; "
                         "models with post-norms or AbsTopK on the attention output are not supported")
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


class _Run:
    """Writer outputs of one forward, in graph order, as they are produced."""

    def __init__(self) -> None:
        self.outs: list[Tensor] = []  # each [batch, pos, k, d_model]

    def stacked(self) -> Tensor:
        return torch.cat(self.outs, dim=2)


def _recording_hooks(model: Transformer, run: _Run) -> list[tuple[str, HookFn]]:
    cfg = model.cfg
    H, dh = cfg.n_heads, cfg.d_head

    def embed(x: Tensor, hook: HookPoint) -> None:
        run.outs = [x.unsqueeze(2)]

    def pos(x: Tensor, hook: HookPoint) -> None:  # [pos, d_model], added to the embedding
        run.outs[0] = run.outs[0] + x[:, None, :]

    def head_outputs(layer: int) -> HookFn:
        W_O = model.blocks[layer].attn.W_O  # [d_model, H * d_head]

        def fn(z: Tensor, hook: HookPoint) -> None:
            run.outs.append(torch.einsum("bphe,dhe->bphd", z, W_O.view(-1, H, dh)))

        return fn

    def mlp(x: Tensor, hook: HookPoint) -> None:
        run.outs.append(x.unsqueeze(2))

    hooks: list[tuple[str, HookFn]] = [("hook_embed", embed)]
    if cfg.positions == "learned":
        hooks.append(("hook_pos_embed", pos))
    for layer in range(cfg.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_z", head_outputs(layer)), (f"blocks.{layer}.hook_mlp_out", mlp)]
    return hooks


def writer_outputs(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos W d_model"]:
    """Every writer's output on `tokens` (the full model, no masks)."""
    run = _Run()
    with torch.no_grad(), model.hooks(_recording_hooks(model, run)):
        model(tokens)
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
    embed_fn: Callable[[Tensor, HookPoint], Tensor | None] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits under an edge mask (with a leading mask dim c, `tokens` are tiled c times here).
    `embed_fn` is an extra hook on `hook_embed`, run before the recording (input interpolation)."""
    c = mask.shape[0] if mask.dim() == 3 else 1
    hooks = edge_mask_hooks(model, graph, mask, base, delta)
    if embed_fn is not None:
        hooks.insert(0, ("hook_embed", embed_fn))
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


__all__ = ["ComponentGraph", "READER_KINDS", "build_graph", "edge_mask_hooks", "edges_into_nodes", "node_mask",
           "ones_mask", "run_masked", "writer_outputs"]
