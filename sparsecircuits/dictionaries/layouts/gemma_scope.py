"""Gemma Scope JumpReLU dictionaries as Google publishes them on the hub.

Gemma Scope (`google/gemma-scope-{2b,9b,27b}-pt-{res,mlp,att,transcoders}`, and `-it-`):
`layer_{L}/width_{16k,...}/average_l0_{N}/params.npz` (`embedding/...` for the embedding SAE), arrays
`W_enc [d_in, width]`, `W_dec [width, d_out]`, `b_enc`, `b_dec`, `threshold` (float32); read with
`np.load(allow_pickle=False)`. Gemma Scope 2 (`params.safetensors`): `w_enc`, `w_dec`, `b_enc`,
`b_dec`, `threshold`, optional `affine_skip_connection [d_in, d_out]` (applied as x·A).
z = pre·1[pre > θ] with pre = x·W_enc + b_enc; ŷ = z·W_dec + b_dec.

The hook is not in the file; it comes from the repo and folder names (as SAELens derives it):
`res` → `blocks.L.hook_resid_post` (`embedding` → `hook_embed`), `mlp` → `blocks.L.hook_mlp_out`,
`att` → `blocks.L.attn.hook_z` (all heads concatenated; our dictionaries read flat hooks, so
`fit_to_model` refuses it), `transcoders` → `blocks.L.ln2.hook_normalized` → `blocks.L.hook_mlp_out`
(the MLP's real input, after the gain, which is our hook). Gemma Scope 2 folders named
`resid_post` / `mlp_out` / `transcoder` map the same way. Pass `hook=` otherwise.

The embedding SAE was trained on the embedding before Gemma's ×√d_model, while our `hook_embed` is
after it: W_enc ← W_enc/√d, and W_dec, b_dec ← ·√d (SAELens scales W_dec only; with b_dec as well
the reconstruction is exactly √d times the published one).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from sparsecircuits.dictionaries.base import DictConfig
from sparsecircuits.dictionaries.layouts.common import POST_GAIN, Loaded
from sparsecircuits.model.checkpoint import CheckpointError, read_tensors

_RENAME = {"w_enc": "W_enc", "w_dec": "W_dec"}


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """Arrays of a .npz as float32 tensors, without pickle."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.array(z[k], dtype=np.float32)) for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read {str(path)!r} as a .npz of arrays ({e})") from None


def hooks_from_path(path: Path) -> tuple[str, str] | None:
    """(hook, out_hook) from Gemma Scope repo / folder names in `path`, or None."""
    text = str(path).replace("\\", "/")
    layer = re.search(r"layer_(\d+)", text)
    repo = re.search(r"gemma-scope[^/]*", text)
    kind = repo.group(0) if repo else text  # the repo name decides when the path has one
    if "embedding" in text:
        return "hook_embed", "hook_embed"
    if layer is None:
        return None
    L = int(layer.group(1))
    for key, hooks in (("transcoder", (f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out")),
                       ("-res", (f"blocks.{L}.hook_resid_post",) * 2), ("resid_post", (f"blocks.{L}.hook_resid_post",) * 2),
                       ("-mlp", (f"blocks.{L}.hook_mlp_out",) * 2), ("mlp_out", (f"blocks.{L}.hook_mlp_out",) * 2),
                       ("-att", (f"blocks.{L}.attn.hook_z",) * 2)):
        if key in kind:
            return hooks
    return None


def load_gemma_scope_file(path: Path, hook: str = "", out_hook: str = "") -> Loaded:
    """A Gemma Scope `params.npz` or Gemma Scope 2 `params.safetensors`; see the module docstring."""
    from sparsecircuits.dictionaries.formats import build_dictionary

    path = Path(path)
    t = read_npz(path) if path.suffix == ".npz" else {k: v.float() for k, v in read_tensors(path).items()}
    t = {_RENAME.get(k, k): v for k, v in t.items()}
    if "affine_skip_connection" in t:  # Gemma Scope 2: [d_in, d_out], applied as x @ A
        t["W_skip"] = t.pop("affine_skip_connection").T
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in t]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a Gemma Scope JumpReLU file: missing {missing}")
    notes = []
    if not hook:
        found = hooks_from_path(path)
        if found is None:
            raise CheckpointError(f"{str(path)!r}: the hook is not in the file and not in its folder names "
                                  "(layer_N under a gemma-scope-*-res/mlp/att/transcoders repo); give the hook")
        hook, out_hook = found
        notes.append(f"hook {hook}" + (f" -> {out_hook}" if out_hook != hook else "") + " from the folder names")
    out_hook = out_hook or hook
    d_in = int(t["W_enc"].shape[0])
    if hook == "hook_embed":
        r = math.sqrt(d_in)
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] / r, t["W_dec"] * r, t["b_dec"] * r
        notes.append("embedding SAE: rescaled for the embedding after Gemma's sqrt(d_model) multiplier")
    dc = DictConfig(arch="jumprelu", hook=hook, out_hook=out_hook, d_in=d_in, d_out=int(t["W_dec"].shape[1]),
                    width=int(t["W_enc"].shape[1]), skip="W_skip" in t)
    return Loaded("gemma-scope", path, [build_dictionary(dc, t, str(path))], notes=notes, norm_input=POST_GAIN)
