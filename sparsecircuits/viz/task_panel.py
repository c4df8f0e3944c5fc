"""The circuit page's task data: per-example predictions of the full model and of the circuit, and
for q/k channel nodes the tokens their head attends from and to on task examples.

`task_predictions`: the circuit is run the way it was found (DESIGN.md: everything outside it takes
its baseline at the circuit's own sites, `metadata["sites"]`, with `metadata["hyperparameters"]
["baseline"]`); a circuit without a site list (other methods) gets the full model's predictions only.
`qk_attention`: one forward with the q, k and pattern hooks of the layers holding q/k nodes; per
example the head's attention from the last prompt position (top keys and weights) and the key where
the node's channel adds most to the attention score (q[d] * k[d]).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sparsecircuits.ablation import NodeSite, circuit_masks, masked_hooks
from sparsecircuits.evaluate import MaskedTask
from sparsecircuits.graph import Circuit, Node
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData, last_logits
from sparsecircuits.weight_sparse.check import circuit_node_sites


def circuit_sites(circuit: Circuit, model: Transformer) -> list[NodeSite] | None:
    """The circuit's mask sites from its metadata (`weight_sparse.check.circuit_node_sites`), or None when
    it lists none or they do not fit the model (a page then shows no circuit predictions)."""
    if not isinstance(circuit.metadata.get("sites"), list) or not circuit.metadata["sites"]:
        return None
    try:
        return circuit_node_sites(circuit, model)
    except ValueError:
        return None


@torch.no_grad()
def task_predictions(model: Transformer, circuit: Circuit, data: TaskData, means: dict[str, Tensor] | None,
                     show: int = 16) -> dict[str, Any]:
    """Task panel: accuracy of the full model and the circuit on `data`, and the first `show` examples
    with each one's top-1 token and logit difference under both."""
    idx = torch.arange(len(data))
    full_last = last_logits(model(data.tokens), data.lengths)
    parts: dict[str, Tensor] = {"full": full_last}
    notes = []
    sites = circuit_sites(circuit, model)
    baseline = str(circuit.metadata.get("hyperparameters", {}).get("baseline", "mean"))
    if sites is None:
        notes.append("circuit predictions not shown: the circuit records no mask sites that fit this model")
    elif baseline == "mean" and means is None:
        notes.append("circuit predictions not shown: mean ablation needs the corpus means")
    else:
        masked = MaskedTask(model, data, baseline, means, sites)
        with model.hooks(masked_hooks(circuit_masks(circuit, sites), masked.base)):
            parts["circuit"] = last_logits(model(data.tokens), data.lengths)
    diffs = {k: v[idx, data.correct] - v[idx, data.incorrect] for k, v in parts.items()}
    preds = {k: v.argmax(-1) for k, v in parts.items()}
    examples = []
    for i in range(min(show, len(data))):
        ex: dict[str, Any] = {"tokens": data.tokens[i, : int(data.lengths[i])].tolist(),
                              "correct": int(data.correct[i]), "incorrect": int(data.incorrect[i])}
        for k in ("full", "circuit"):
            ex[k] = {"pred": int(preds[k][i]), "diff": float(diffs[k][i])} if k in parts else None
        examples.append(ex)
    accuracy = {k: float((d > 0).float().mean()) for k, d in diffs.items()}
    agreement = float((preds["full"] == preds["circuit"]).float().mean()) if "circuit" in preds else None
    return {"name": data.name, "answers": list(data.answer_strings), "n_evaluated": len(data), "accuracy": accuracy,
            "agreement": agreement, "examples": examples, "notes": notes}


@torch.no_grad()
def qk_attention(model: Transformer, nodes: list[Node], data: TaskData, n_examples: int = 6,
                 top: int = 3) -> dict[int, list[dict[str, Any]]]:
    """For each q/k node (by position in `nodes`): on the first `n_examples` examples, the head's top
    attended keys from the last prompt position and the key of the channel's largest q*k term."""
    cfg = model.cfg
    qk = [(j, n) for j, n in enumerate(nodes) if n.kind in ("q", "k") and n.site.endswith((".attn.hook_q", ".attn.hook_k"))]
    qk = [(j, n) for j, n in qk if n.site in model.hook_points and 0 <= n.index < cfg.n_heads * cfg.d_head]
    if not qk or len(data) == 0:
        return {}
    layers = sorted({int(n.site.split(".")[1]) for _, n in qk})
    names = [f"blocks.{L}.attn.{h}" for L in layers for h in ("hook_q", "hook_k", "hook_pattern")]
    sub = data.subset(slice(0, n_examples))
    _, cache = model.run_with_cache(sub.tokens, names_filter=names)
    group = cfg.n_heads // cfg.kv_heads
    out: dict[int, list[dict[str, Any]]] = {}
    for j, n in qk:
        L = int(n.site.split(".")[1])
        head, d = divmod(n.index, cfg.d_head)
        if n.kind == "k":  # a key channel serves the query heads of its group: show the first
            q_head, kv_head = head * group, head
        else:
            q_head, kv_head = head, head // group
        pattern = cache[f"blocks.{L}.attn.hook_pattern"][:, q_head]  # [ex, q_pos, k_pos]
        q_ch = cache[f"blocks.{L}.attn.hook_q"][:, :, q_head, d]  # [ex, pos]
        k_ch = cache[f"blocks.{L}.attn.hook_k"][:, :, kv_head, d]
        rows = []
        for e in range(len(sub)):
            t = int(sub.lengths[e]) - 1
            attn = pattern[e, t, : t + 1]
            w, p = torch.topk(attn, min(top, t + 1))
            term = q_ch[e, t] * k_ch[e, : t + 1]
            c = int(term.abs().argmax())
            rows.append({"ex": e, "head": q_head, "q": t, "keys": [[int(a), float(b)] for a, b in zip(p, w)],
                         "chan": [c, float(term[c])]})
        out[j] = rows
    return out
