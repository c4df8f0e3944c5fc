"""Edges of a channel-level circuit in a (weight-sparse) transformer: nonzero weights between kept
nodes, plus the identities of the residual stream (Gao et al. 2025 count circuit size in edges).

Given the kept nodes of `ablation.prune_sites` (per layer: attention read channels R1, q/k/v
channels, attention write channels W1, MLP read channels R2, neurons N, MLP write channels W2):
  weight    R1[c] -> q/k/v[j]  where W_Q/W_K/W_V[j, c] != 0
            v[j]  -> W1[c]     where W_O[c, z] != 0 for a z channel z reading v channel j (per head)
            R2[c] -> N[n]      where W_in[n, c] != 0 (or W_gate for SwiGLU)
            N[n]  -> W2[c]     where W_out[c, n] != 0
            W[c]  -> logit[t]  where W_U[t, c] != 0, for the task's answer tokens t (final residual)
  qk        k[j'] -> q[j]      a query channel and the key channel it is multiplied with
  residual  W[c] (or embed[c]) -> R[c] for every read channel c after the write (the residual
            stream is an identity per channel; RMSNorm only rescales)
Embedding nodes `hook_embed[c]` are added for every channel a kept read or logit node reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsecircuits.ablation import NodeSite
from sparsecircuits.graph import Edge, Node
from sparsecircuits.model.transformer import Transformer


def _weight_edges(W: Tensor, src: list[Node], dst: list[Node], src_idx: Tensor, dst_idx: Tensor) -> list[Edge]:
    """Edges src[a] -> dst[b] where W[dst_idx[b], src_idx[a]] != 0 (W is [out, in])."""
    if not src or not dst:
        return []
    sub = W.detach()[dst_idx][:, src_idx]
    b_idx, a_idx = torch.nonzero(sub, as_tuple=True)
    return [Edge(src[a].id, dst[b].id, float(sub[b, a]), "weight") for a, b in zip(a_idx.tolist(), b_idx.tolist())]


def circuit_edges(
    model: Transformer, nodes: list[Node], sites: list[NodeSite], answer_tokens: list[int]
) -> tuple[list[Node], list[Edge]]:
    """Embedding/logit nodes to add and every edge among the circuit's nodes (see module docstring)."""
    cfg = model.cfg
    group = cfg.n_heads // cfg.kv_heads
    by_site: dict[str, list[Node]] = {s.hook: [] for s in sites}
    for n in nodes:
        by_site.setdefault(n.site, []).append(n)
    idx = {h: torch.tensor([n.index for n in ns], dtype=torch.long) for h, ns in by_site.items()}
    edges: list[Edge] = []
    writers: list[Node] = []  # residual write nodes seen so far, in forward order
    embed: dict[int, Node] = {}

    def residual_into(readers: list[Node]) -> None:
        for r in readers:
            src = [w for w in writers if w.index == r.index]
            if r.index not in embed:
                embed[r.index] = Node("hook_embed", r.index, "embed", -1)
            for w in [embed[r.index], *src]:
                edges.append(Edge(w.id, r.id, 1.0, "residual"))

    for L, block in enumerate(model.blocks):
        p = f"blocks.{L}"
        r1, q, k, v = (by_site.get(f"{p}.{s}", []) for s in ("ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v"))
        w1, r2, neurons, w2 = (by_site.get(f"{p}.{s}", []) for s in ("hook_attn_out", "ln2.hook_normalized", "mlp.hook_post", "hook_mlp_out"))
        att, mlp = block.attn, block.mlp
        residual_into(r1)
        i_r1 = idx.get(f"{p}.ln1.hook_normalized", torch.zeros(0, dtype=torch.long))
        for W, dst, h in ((att.W_Q, q, "attn.hook_q"), (att.W_K, k, "attn.hook_k"), (att.W_V, v, "attn.hook_v")):
            edges += _weight_edges(W, r1, dst, i_r1, idx.get(f"{p}.{h}", torch.zeros(0, dtype=torch.long)))
        kept_k = {n.index: n for n in k}
        for qn in q:  # query channel h*dh+d multiplies key channel (h//group)*dh+d
            head, d = divmod(qn.index, cfg.d_head)
            kn = kept_k.get((head // group) * cfg.d_head + d)
            if kn is not None:
                edges.append(Edge(kn.id, qn.id, 1.0, "qk"))
        for vn in v:  # v channel (kvh*dh+d) feeds z channels (kvh*group+g)*dh+d of its query heads
            kvh, d = divmod(vn.index, cfg.d_head)
            z = torch.tensor([(kvh * group + g) * cfg.d_head + d for g in range(group)])
            for wn in w1:
                w = att.W_O.detach()[wn.index, z]
                if bool((w != 0).any()):
                    edges.append(Edge(vn.id, wn.id, float(w.sum()), "weight"))
        writers += w1
        residual_into(r2)
        i_r2 = idx.get(f"{p}.ln2.hook_normalized", torch.zeros(0, dtype=torch.long))
        i_n = idx.get(f"{p}.mlp.hook_post", torch.zeros(0, dtype=torch.long))
        edges += _weight_edges(mlp.W_in, r2, neurons, i_r2, i_n)
        if mlp.W_gate is not None:
            edges += _weight_edges(mlp.W_gate, r2, neurons, i_r2, i_n)
        edges += _weight_edges(mlp.W_out, neurons, w2, i_n, idx.get(f"{p}.hook_mlp_out", torch.zeros(0, dtype=torch.long)))
        writers += w2
    logits = [Node("logits", int(t), "logit", cfg.n_layers) for t in sorted(set(answer_tokens))]
    W_U = model.W_E if model.W_U is None else model.W_U
    t_idx = torch.tensor([n.index for n in logits], dtype=torch.long)
    for c in sorted({w.index for w in writers} | set(embed)):
        srcs = [w for w in writers if w.index == c] + ([embed[c]] if c in embed else [])
        edges += _weight_edges(W_U, srcs, logits, torch.full((len(srcs),), c, dtype=torch.long), t_idx)
    used_logits = {e.dst for e in edges}
    extra = list(embed.values()) + [n for n in logits if n.id in used_logits]
    return extra, edges
