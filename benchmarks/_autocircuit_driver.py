"""The auto-circuit side of `benchmarks/discovery.py`, run by the interpreter of a separate venv that has
auto-circuit (`.venv-ac`, see discovery.py); it imports nothing of ours.

Reads a JSON request (model shape, a `torch.save`d state dict of our `Transformer`, token ids, our graph's
writers, readers, edges, the sampled edges and the `method`), copies the weights into a TransformerLens
`HookedTransformer` (not timed), then times its set-up, `patchable_model` (factorized edge graph,
separate q/k/v inputs, all positions at once), and one method, with counterfactual
(resample-from-corrupt) ablation and the mean logit difference at the last position:
  eap     `mask_gradient_prune_scores(mask_val=0)`, one forward + backward;
  eap_ig  the same with `integrated_grad_samples=steps` (masks at 0, 1/steps, ..., 1: steps + 1 passes);
  exact   auto-circuit has no exact-patching scorer: one forward under `patch_mode(edges=[e])` per
          sampled edge (its documented way to patch a set of edges), seconds per edge;
  acdc    `acdc_prune_scores` at one threshold (its KL-divergence target; it resumes each candidate
          forward at the edge's layer, as ours does).
Writes a JSON reply: seconds, the forward / backward passes it made (`Passes`), its edge count,
whether each of our edges is one of its edges, and per method its EAP score of every one of our edges
(same sign as ours), its effect of each sampled edge, or the edges ACDC kept.

    .venv-ac/bin/python benchmarks/_autocircuit_driver.py REQUEST.json REPLY.json
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from _passes import Passes  # benchmarks/_passes.py: this script's folder is on sys.path


def ac_key(kind: str, layer: int, index: int, n_layers: int, src: bool) -> tuple[str, int | None]:
    """auto-circuit's (module name, head index) of one of our writers (`src`) or readers."""
    if src:  # writers: the embedding (+ positions), heads, MLP outputs
        return {"embed": ("blocks.0.hook_resid_pre", None), "head": (f"blocks.{layer}.attn.hook_result", index),
                "mlp": (f"blocks.{layer}.hook_mlp_out", None)}[kind]
    return {"mlp": (f"blocks.{layer}.hook_mlp_in", None), "logit": (f"blocks.{n_layers - 1}.hook_resid_post", None)}.get(
        kind, (f"blocks.{layer}.hook_{kind}_input", index))  # q, k, v


def tl_model(req: dict):  # noqa: ANN201
    """A HookedTransformer with our weights (our layouts: W_Q [H*dh, d], W_O [d, H*dh], W_in [d_mlp, d])."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = req["config"]
    L, d, H = c["layers"], c["d_model"], c["heads"]
    dh = d // H
    cfg = HookedTransformerConfig(n_layers=L, d_model=d, n_heads=H, d_head=dh, d_mlp=c["d_mlp"], d_vocab=c["vocab"],
                                  n_ctx=c["n_ctx"], act_fn="gelu_new", normalization_type="LN",
                                  positional_embedding_type="standard", default_prepend_bos=False, device="cpu",
                                  dtype=torch.float32, use_attn_result=True, use_split_qkv_input=True,
                                  use_hook_mlp_in=True, init_weights=False)
    model = HookedTransformer(cfg)
    ours = torch.load(req["weights"], weights_only=True)
    sd = {"embed.W_E": ours["W_E"], "pos_embed.W_pos": ours["W_pos"], "unembed.W_U": ours["W_E"].T,
          "unembed.b_U": torch.zeros(c["vocab"]), "ln_final.w": ours["ln_final.w"], "ln_final.b": ours["ln_final.b"]}
    for layer in range(L):
        p = f"blocks.{layer}"
        for n in "QKV":
            sd[f"{p}.attn.W_{n}"] = ours[f"{p}.attn.W_{n}"].view(H, dh, d).transpose(1, 2)
            sd[f"{p}.attn.b_{n}"] = ours[f"{p}.attn.b_{n}"].view(H, dh)
        sd[f"{p}.attn.W_O"] = ours[f"{p}.attn.W_O"].view(d, H, dh).permute(1, 2, 0)
        sd[f"{p}.mlp.W_in"], sd[f"{p}.mlp.W_out"] = ours[f"{p}.mlp.W_in"].T, ours[f"{p}.mlp.W_out"].T
        for k in ("attn.b_O", "ln1.w", "ln1.b", "ln2.w", "ln2.b", "mlp.b_in", "mlp.b_out"):
            sd[f"{p}.{k}"] = ours[f"{p}.{k}"]
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith(("IGNORE", ".mask")) for k in missing), (missing, unexpected)
    return model.eval().requires_grad_(False)  # as auto-circuit's own `load_tl_model`


def main(req_path: str, reply_path: str) -> None:
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType
    from auto_circuit.utils.ablation_activations import src_ablations
    from auto_circuit.utils.graph_utils import patch_mode, patchable_model
    from auto_circuit.utils.tensor_ops import batch_avg_answer_diff

    req = json.loads(Path(req_path).read_text())
    torch.set_num_threads(req["threads"])
    tl = tl_model(req)
    L = req["config"]["layers"]
    clean, corrupt = torch.tensor(req["tokens"]), torch.tensor(req["cf_tokens"])
    answers, wrong = torch.tensor(req["correct"]).unsqueeze(1), torch.tensor(req["incorrect"]).unsqueeze(1)
    method, seconds, reply = req["method"], {}, {}
    passes = Passes(tl)
    t0 = time.perf_counter()
    model = patchable_model(tl, factorized=True, slice_output="last_seq", separate_qkv=True)
    loader = PromptDataLoader(PromptDataset(clean, corrupt, answers, wrong), seq_len=None, diverge_idx=0,
                              batch_size=len(clean), shuffle=False)
    seconds["setup"] = time.perf_counter() - t0

    def prune(**kw):  # noqa: ANN003, ANN202
        return mask_gradient_prune_scores(model, loader, None, "logit", "avg_diff", ablation_type=AblationType.RESAMPLE,
                                          clean_corrupt="corrupt", **kw)

    by_key = {(ac_key(*req["writers"][w], L, True), ac_key(*req["readers"][r], L, False)): (w, r) for w, r in req["edges"]}
    edge_of = {by_key[k]: e for e in model.edges
               if (k := ((e.src.module_name, e.src.head_idx), (e.dest.module_name, e.dest.head_idx))) in by_key}
    ours = [tuple(e) for e in req["edges"]]
    t0 = time.perf_counter()
    if method == "eap":
        eap = prune(mask_val=0.0)
        seconds["method"] = time.perf_counter() - t0
        reply["eap"] = [float(eap[edge_of[e].dest.module_name][edge_of[e].patch_idx]) if e in edge_of else None for e in ours]
    elif method == "eap_ig":
        prune(integrated_grad_samples=req["ig_steps"])
        seconds["method"] = time.perf_counter() - t0
    elif method == "exact":  # no exact-patching scorer: one forward under patch_mode per edge (its documented way)
        batch = next(iter(loader))
        patch_outs = src_ablations(model, batch.corrupt, AblationType.RESAMPLE)

        def metric(edges: list) -> float:
            with torch.inference_mode(), patch_mode(model, patch_outs, edges=edges):
                return float(batch_avg_answer_diff(model(batch.clean)[model.out_slice], batch))

        full = metric([])
        seconds["before_edges"] = time.perf_counter() - t0
        reply["passes_before_edges"] = passes.now(L)
        t1 = time.perf_counter()
        reply["exact"] = [full - metric([edge_of[ours[i]]]) for i in req["sample"]]
        seconds["per_edge"] = (time.perf_counter() - t1) / len(req["sample"])
    elif method == "acdc":  # one threshold (auto-circuit sweeps 20 by default), its KL-divergence target
        tau = req["acdc_threshold"]
        exp = int(f"{tau:e}".split("e")[1])
        base = round(tau / 10**exp)
        scores = acdc_prune_scores(model, loader, None, tao_exps=[exp], tao_bases=[base])
        seconds["method"] = time.perf_counter() - t0
        reply["acdc_kept"] = int(sum(int((s == float("inf")).sum()) for s in scores.values()))
    else:
        raise SystemExit(f"unknown method {method!r}")
    reply["passes"] = passes.result(L)
    Path(reply_path).write_text(json.dumps({
        "versions": {p: version(p) for p in ("auto-circuit", "transformer-lens", "torch")},
        "threads": torch.get_num_threads(), "n_edges": len(model.edges), "n_ours_found": len(edge_of),
        "seconds": seconds, **reply}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
