"""SAELens folders (`cfg.json` + `sae_weights.safetensors`), as SAELens 5 and 6 write them.

Config keys read: `architecture` (`standard`, `topk`, `jumprelu`, `transcoder`, `skip_transcoder`,
`jumprelu_transcoder`, `jumprelu_skip_transcoder`; SAELens 5's `standard` with `activation_fn(_str)`
`topk` and `activation_fn_kwargs.k`), `d_in`, `d_sae`, `d_out`, `k`, `hook_name` / `hook_name_out`
(top level in SAELens 5, under `metadata` in 6), `hook_head_index`, `apply_b_dec_to_input`,
`normalize_activations`, `rescale_acts_by_decoder_norm`, `reshape_activations`,
`model_from_pretrained_kwargs.fold_ln`. Tensors: `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`,
`b_enc`, `b_dec`, `threshold` (or an older `log_threshold`), `W_skip [d_out, d_in]`,
`scaling_factor` / `finetuning_scaling_factor`.

Everything SAELens does at inference is folded into our linear form, exactly:
* `apply_b_dec_to_input` (SAELens' default, True, when the key is absent; false for transcoders):
  (x − b_dec)·W_enc + b_enc = x·W_enc + (b_enc − b_dec·W_enc).
* `rescale_acts_by_decoder_norm` (TopK): pre_i·‖W_dec,i‖ and acts_i/‖W_dec,i‖ before decoding, so
  W_enc[:, i], b_enc[i] ← ·‖W_dec,i‖ and W_dec[i] ← /‖W_dec,i‖ (the top-k choice is unchanged).
* a finetuning scaling factor s (decode(acts·s)): W_dec[i] ← s_i·W_dec[i].
* `normalize_activations`: `none` and `expected_average_only_in` are the identity at inference in
  `SAE.load_from_disk` (its `from_pretrained` folds a per-release factor that is not in the folder);
  the per-token `constant_norm_rescale` and `layer_norm` are not linear in x and are refused.
Gated SAEs and per-head (`hook_head_index`) SAEs have no counterpart here and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import DictConfig
from sparsecircuits.dictionaries.layouts.common import TL_FOLDED, TL_UNFOLDED, Loaded, our_hook, to_float
from sparsecircuits.model.checkpoint import CheckpointError, read_json, read_tensors

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
FROM_SAELENS = {"standard": "relu", "transcoder": "relu", "skip_transcoder": "relu", "topk": "topk",
                "topk_transcoder": "topk", "jumprelu": "jumprelu", "jumprelu_transcoder": "jumprelu",
                "jumprelu_skip_transcoder": "jumprelu"}
_IDENTITY_NORMS = (None, False, "none", "expected_average_only_in", True)


def saelens_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's keys with SAELens 6's `metadata` block merged under the top-level ones (and the
    oldest configs' `hook_point` / `hook_point_head_index` read as `hook_name` / `hook_head_index`)."""
    out = {**(cfg.get("metadata") or {}), **{k: v for k, v in cfg.items() if v is not None}}
    for old, new in (("hook_point", "hook_name"), ("hook_point_head_index", "hook_head_index")):
        if old in out and new not in out:
            out[new] = out[old]
    return out


def saelens_arch(cfg: dict[str, Any], source: str) -> str:
    """Our architecture name for a SAELens config (refusing what we cannot represent)."""
    name = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if name == "standard" and act == "topk":  # SAELens 5
        return "topk"
    if name not in FROM_SAELENS:
        raise CheckpointError(f"{source}: SAELens architecture {name!r} is not supported "
                              f"(supported: {sorted(FROM_SAELENS)})")
    return FROM_SAELENS[name]


def load_saelens(folder: Path) -> Loaded:
    """A SAELens folder; see the module docstring."""
    from sparsecircuits.dictionaries.formats import build_dictionary

    folder = Path(folder)
    source = str(folder / WEIGHTS)
    cfg = saelens_meta(read_json(folder / CFG))
    t = to_float(read_tensors(folder / WEIGHTS))
    notes: list[str] = []
    try:
        dc = _config(cfg, t, source)
        _fold(cfg, t, source, dc, notes)
        d = build_dictionary(dc, t, source)
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{str(folder / CFG)!r} is not a valid SAELens config: {e}") from None
    fold_ln = (cfg.get("model_from_pretrained_kwargs") or {}).get("fold_ln", True)
    return Loaded("saelens", folder, [d], notes=notes, norm_input=TL_FOLDED if fold_ln else TL_UNFOLDED)


def _config(cfg: dict[str, Any], t: dict[str, Tensor], source: str) -> DictConfig:
    norm = cfg.get("normalize_activations", "none")
    if norm not in _IDENTITY_NORMS:
        raise CheckpointError(f"{source}: normalize_activations={norm!r} rescales each token by its own norm, which "
                              "a linear dictionary cannot represent; only none / expected_average_only_in load")
    if cfg.get("hook_head_index") is not None:
        raise CheckpointError(f"{source}: per-head SAEs (hook_head_index={cfg['hook_head_index']}) are not supported")
    if not cfg.get("hook_name"):
        raise CheckpointError(f"{source}: the config names no hook_name")
    if "W_enc" not in t or "W_dec" not in t:
        raise CheckpointError(f"{source}: missing W_enc / W_dec")
    if "threshold" not in t and "log_threshold" in t:
        t["threshold"] = t.pop("log_threshold").exp()
    hook = our_hook(cfg["hook_name"])
    out_hook = our_hook(cfg.get("hook_name_out") or cfg["hook_name"])
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 1
    return DictConfig(arch=saelens_arch(cfg, source), hook=hook, out_hook=out_hook, d_in=int(t["W_enc"].shape[0]),
                      d_out=int(t["W_dec"].shape[1]), width=int(t["W_enc"].shape[1]), k=int(k), skip="W_skip" in t)


def _fold(cfg: dict[str, Any], t: dict[str, Tensor], source: str, dc: DictConfig, notes: list[str]) -> None:
    if cfg.get("apply_b_dec_to_input", not dc.is_transcoder):  # SAELens' default when absent: True (SAEs)
        if dc.d_in != dc.d_out:
            raise CheckpointError(f"{source}: apply_b_dec_to_input needs d_in == d_out")
        t["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
        notes.append("apply_b_dec_to_input folded into b_enc")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        n = t["W_dec"].norm(dim=1)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * n, t["b_enc"] * n, t["W_dec"] / n[:, None]
        notes.append("rescale_acts_by_decoder_norm folded (decoder rows now unit norm)")
    for key in ("finetuning_scaling_factor", "scaling_factor"):
        s = t.pop(key, None)
        if s is not None and not torch.allclose(s, torch.ones_like(s)):
            t["W_dec"] = t["W_dec"] * s[:, None]
            notes.append(f"{key} folded into W_dec")
    if cfg.get("normalize_activations") in ("expected_average_only_in", True):
        notes.append("normalize_activations=expected_average_only_in: identity at inference, as in "
                     "SAE.load_from_disk (a release's norm_scaling_factor is not in the folder)")
