"""Masked forwards resumed from a cached run: the metric under an edge mask that differs from a
reference run's mask only at readers from some layer on costs the blocks from that layer on, not a
whole masked forward.

A reference (`MaskedRun`) keeps what a masked forward (`component_graph.edge_mask_hooks`) computed
under its mask M0: the residual entering each block, the last block's output, every writer's output
(heads: their shares under the run's own state) and the metric. For a mask M, let l be the first
layer with a reader whose column of M differs from M0's on valid edges (the logits count as layer
L). Everything before block l (writers' outputs, the residual entering it) is the same under M as
under M0: the readers before l see the same masks and the same writers. `masked_run` resumes the
model at block l with that residual (`Transformer.forward(start=...)`) and applies M's corrections
from there, `input_r - sum_w (1 - M[w, r]) * (out_w - base_w)` as `edge_mask_hooks` does, with the
writers' outputs of this run (from the reference before l); with three savings that change no value:
  * a reader hook is attached only where M has an edge off into that group of readers (q heads,
    k groups, v groups of a layer, its MLP, the logits), so other layers run their plain path;
    writers are recorded only in layers a masked edge reads from (all of them with `keep=True`, so
    that the run can become the next reference: ACDC keeps the current circuit's run);
  * a correction sums over the writers with an edge off into the group only (one writer for a
    single-edge ablation from the clean run: a rank-1 change of one reader's input), and once for
    the whole group when M's columns are equal across its readers (node masks, every edge off);
  * the logits are taken at each prompt's last position only (`at`), all the metric reads.
Exact edge patching from the clean run then costs, per edge, the blocks from the edge's reader on;
ACDC, the blocks from the reader being pruned on. The values equal the dense masked forward's
(tests/component_circuits/test_resume.py, every model variant). Resuming needs one copy of the
examples per forward (no leading mask dim); `prepare.metric` batches mask sets densely instead
where `batch_masks` > 1 (accelerators).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.component_circuits.component_graph import ComponentGraph, head_hooks
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData, logit_diff


@dataclass
class MaskedRun:
    """A masked forward kept as a reference (module docstring)."""

    mask: Float[Tensor, "W R"]  # on the CPU
    resid: list[Tensor]  # [n, pos, d_model] entering each block
    final: Tensor  # the last block's output, before the logit reader's correction
    outs: Float[Tensor, "n pos W d_model"]  # every writer's output in this run
    value: float  # the metric


def _reader_layer(graph: ComponentGraph, r: int) -> int:
    return graph.readers[r].layer  # the logits are at layer L


def _writer_layer(graph: ComponentGraph, w: int) -> int:
    return graph.writers[w].layer  # the embedding is at layer -1


def first_changed_layer(graph: ComponentGraph, mask: Tensor, ref_mask: Tensor) -> int | None:
    """The layer of the first reader whose valid edges are masked differently (None: same run)."""
    changed = ((mask != ref_mask) & graph.valid).any(0)
    if not bool(changed.any()):
        return None
    return _reader_layer(graph, int(torch.nonzero(changed)[0]))


def reader_groups(graph: ComponentGraph, layer: int) -> list[tuple[str, int, int, int, bool]]:
    """(hook, upstream writers, first reader, end reader, 3-d input) of a layer's reader groups."""
    H, KV = graph.n_heads, graph.n_kv_heads
    if layer == graph.n_layers:
        W, R = len(graph.writers), len(graph.readers)
        return [(f"blocks.{layer - 1}.hook_resid_post", W, R - 1, R, True)]
    ws, rs, p = graph.writer_start(layer), graph.reader_start(layer), f"blocks.{layer}"
    mr = graph.mlp_reader(layer)
    return [(f"{p}.hook_q_input", ws, rs, rs + H, False), (f"{p}.hook_k_input", ws, rs + H, rs + H + KV, False),
            (f"{p}.hook_v_input", ws, rs + H + KV, rs + H + 2 * KV, False),
            (f"{p}.hook_mlp_in", ws if graph.parallel else ws + H, mr, mr + 1, True)]


def metric_at(logits: Float[Tensor, "n 1 vocab"], data: TaskData) -> float:
    """The mean logit difference from logits taken at each prompt's last position (`at`)."""
    return float(logit_diff(logits[:, 0], data).mean())


def last_positions(data: TaskData, device: torch.device) -> Tensor:
    return (data.lengths - 1).to(device)


@torch.no_grad()
def masked_run(
    model: Transformer, graph: ComponentGraph, data: TaskData, base: Float[Tensor, "nb pb W d_model"],
    mask: Float[Tensor, "W R"], ref: MaskedRun | None = None, keep: bool = False,
) -> tuple[float, MaskedRun | None]:
    """The metric under `mask`, resumed from `ref` (None: a whole forward), and with `keep=True` the
    run as a `MaskedRun` for later masks (module docstring)."""
    mask = mask.detach().float().cpu().clone()  # kept in the run: the caller may edit its own
    L = graph.n_layers
    if ref is None:
        first = 0
    else:
        changed = first_changed_layer(graph, mask, ref.mask)
        if changed is None:
            return ref.value, (MaskedRun(mask, ref.resid, ref.final, ref.outs, ref.value) if keep else None)
        first = changed
    start = min(first, L - 1)  # edges into the logits only: rerun the last block (cheap, no model internals here)
    w0 = graph.writer_start(start) if ref is not None else 0
    dev = next(model.parameters()).device
    tokens = data.tokens.to(dev)
    inv = 1.0 - mask

    chunks: dict[int, Tensor] = {}  # first writer index -> [n, pos, k, d_model] outputs of this run
    resid: dict[int, Tensor] = {}
    final: list[Tensor] = []

    def gather(sel: Tensor, T: int) -> Tensor:
        parts = []
        early = sel[sel < w0]
        if len(early):
            assert ref is not None
            parts.append(ref.outs[:, :T].index_select(2, early))
        for s0, chunk in chunks.items():
            idx = sel[(sel >= s0) & (sel < s0 + chunk.shape[2])] - s0
            if len(idx):
                parts.append(chunk.index_select(2, idx))
        return torch.cat(parts, 2) - base[:, :T].index_select(2, sel)

    def _correction(sel: Tensor, coef: Tensor, uniform: bool, flat: bool) -> HookFn:
        def fn(x: Tensor, hook: HookPoint) -> Tensor:
            d = gather(sel, x.shape[1]).to(coef.dtype)
            if uniform:
                adj = torch.einsum("npwd,w->npd", d, coef)
                return x - (adj if flat else adj.unsqueeze(2)).to(x.dtype)
            adj = torch.einsum("npwd,wr->nprd", d, coef)
            return x - (adj[:, :, 0] if flat else adj).to(x.dtype)

        return fn

    plans: list[tuple[str, HookFn]] = []
    needed: set[int] = set(range(start, L)) if keep else set()
    for layer in range(start, L + 1):  # every masked edge of the blocks rerun, not only the changed ones
        for hook, n_up, r0, r1, flat in reader_groups(graph, layer):
            block = inv[:n_up, r0:r1]
            sel = torch.nonzero(block.any(1)).flatten()
            if not len(sel):
                continue
            coef = block[sel]
            uniform = bool((coef == coef[:, :1]).all())
            needed.update(wl for w in sel.tolist() if (wl := _writer_layer(graph, w)) >= start)
            plans.append((hook, _correction(sel.to(dev), (coef[:, 0] if uniform else coef).to(dev), uniform, flat)))

    hooks: list[tuple[str, HookFn]] = []
    if ref is None:
        def embed(x: Tensor, hook: HookPoint) -> None:
            chunks[0] = x.unsqueeze(2)

        def pos(x: Tensor, hook: HookPoint) -> None:
            chunks[0] = chunks[0] + x.unsqueeze(-2)

        hooks.append(("hook_embed", embed))
        if model.cfg.positions == "learned":
            hooks.append(("hook_pos_embed", pos))
    for layer in range(start, L):
        p = f"blocks.{layer}"

        def keep_resid(x: Tensor, hook: HookPoint, layer: int = layer) -> None:
            resid[layer] = x

        hooks.append((f"{p}.hook_resid_pre", keep_resid))
        if layer in needed:
            hs, ms = graph.writer_start(layer), graph.mlp_writer(layer)

            def heads(o: Tensor, hs: int = hs) -> None:
                chunks[hs] = o

            def mlp(x: Tensor, hook: HookPoint, ms: int = ms) -> None:
                chunks[ms] = x.unsqueeze(2)

            hooks += head_hooks(model, layer, heads) + [(f"{p}.hook_mlp_out", mlp)]

    def keep_final(x: Tensor, hook: HookPoint) -> None:
        final.append(x)

    hooks.append((f"blocks.{L - 1}.hook_resid_post", keep_final))  # before the logit correction
    hooks += plans
    start_resid = None if ref is None else ref.resid[start]
    with model.hooks(hooks):
        logits = model(tokens, at=last_positions(data, dev),
                       start=None if start_resid is None else (start, start_resid))
    value = metric_at(logits, data)
    if not keep:
        return value, None
    early = [] if ref is None else [ref.outs[:, :, :w0]]
    outs = torch.cat(early + [chunks[k] for k in sorted(chunks)], 2)
    resids = ([] if ref is None else ref.resid[:start]) + [resid[i] for i in range(start, L)]
    return value, MaskedRun(mask, resids, final[0], outs, value)


__all__ = ["MaskedRun", "first_changed_layer", "last_positions", "masked_run", "metric_at", "reader_groups"]
