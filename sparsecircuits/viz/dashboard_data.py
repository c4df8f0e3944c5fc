"""The data of a feature dashboard (one page per dictionary, Neuronpedia / SAE-Vis style): every
feature's top contexts, histogram, density, logit effects and, for transcoders, its top
input-invariant upstream features, packed so a 16k-feature page stays small and opens fast.

Steps of `dashboard_data`:
  1. collect every token id the page shows (context tokens, promoted and suppressed tokens) and
     decode each once; the page refers to them by a local index (`vocab`), so token arrays fit
     16-bit integers for any vocabulary that the page actually uses fewer than 65,535 tokens of;
  2. quantise each context's activations to 0..255 of the feature's largest activation (the page
     only shades by them; each example's exact activation is kept in `top`); negative activations
     (neurons) shade as 0;
  3. pack every table as a little-endian typed array, deflate it (zlib) where that shrinks it by a
     fifth or more (token ids, shades and counts do; floats do not) and base64 it: the page inflates
     them with the browser's own `DecompressionStream` and reads feature f's rows by offset,
     building the DOM of the selected feature only.
`upstream_features` (Dunefsky et al. 2024) ranks, for each feature f of a transcoder at layer L, the
features i of the transcoders at layers < L by the input-invariant connection d_i · e_f, calling
`transcoder_circuits.analysis.input_invariant` (see there).

Packed arrays (F features, K examples, C context tokens, B bins, T tokens, U upstream):
  tokens [F, K, C] u2|u4 local token index + 1 (0 = outside the window or an empty slot)
  acts [F, K, C] u1; top [F, K] f2|f4; hist [F, B] u2|u4; density [F] f4
  promoted_ids / suppressed_ids [F, T] u2|u4 local index; promoted / suppressed [F, T] f2|f4
  up_layer [F, U] i2 (-1 = empty), up_feature [F, U] i4, up_value [F, U] f2|f4
(f2|f4: numbers the page only prints are float16 when they fit in it, else float32.)
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.feature_effects import LogitEffects
from sparsecircuits.dictionaries.features import FeatureExamples
from sparsecircuits.transcoder_circuits.analysis import input_invariant

FORMAT = "sparsecircuits-dashboard-v1"


@dataclass
class Upstream:
    """Each feature's top-U upstream transcoder features by d_i · e_f, largest first."""

    layer: Tensor  # [F, U] int64 layer of the upstream transcoder (-1 = empty slot)
    feature: Tensor  # [F, U] int64 upstream feature index
    value: Tensor  # [F, U] float32 d_i · e_f


class _Rows(NamedTuple):
    """Weights in the roles `input_invariant` reads: rows of `W_dec`, columns of `W_enc`."""

    W_dec: Tensor
    W_enc: Tensor


def dictionary_layer(d: Dictionary) -> int:
    """The block a dictionary reads, from its hook (`blocks.L.`...)."""
    m = re.match(r"blocks\.(\d+)\.", d.cfg.hook)
    if m is None:
        raise ValueError(f"dictionary on {d.cfg.hook!r} sits in no block")
    return int(m.group(1))


@torch.no_grad()
def upstream_features(upstreams: dict[int, Dictionary], downstream: Dictionary, k: int = 10,
                      chunk: int = 512) -> Upstream:
    """Top-k (layer, feature) of the transcoders in `upstreams` below `downstream`'s layer for every
    feature f of `downstream`, by d_i · e_f. `input_invariant(up, down, i)` ranks the features
    downstream of one upstream feature (d_i · e_i′ over i′); here the same product is ranked over i
    for a fixed f, so it is called with the roles swapped (e_f as the "decoder row", the upstream
    decoder rows as the "encoder columns") and a chunk of f at once (its `W_dec[feature]` indexes
    rows), then merged across layers."""
    layer = dictionary_layer(downstream)
    below = sorted(L for L in upstreams if L < layer)
    F_ = downstream.cfg.width
    if not below:
        empty = torch.zeros(F_, 0)
        return Upstream(empty.long(), empty.long(), empty)
    for L in below:
        if upstreams[L].cfg.d_out != downstream.cfg.d_in:
            raise ValueError(f"upstream transcoder of layer {L} writes width {upstreams[L].cfg.d_out}, "
                             f"but {downstream.cfg.name} reads width {downstream.cfg.d_in}")
    enc_rows = downstream.W_enc.detach().float().T  # [F, d]: e_f as rows
    vals, layers, feats = [], [], []
    for L in below:
        dec_cols = upstreams[L].W_dec.detach().float().to(enc_rows.device).T  # [d, F_up]: d_i as columns
        kk = min(k, dec_cols.shape[1])
        v_L, i_L = [], []
        for s in range(0, F_, chunk):
            ids = torch.arange(s, min(s + chunk, F_), device=enc_rows.device)
            top = input_invariant(cast(Dictionary, _Rows(enc_rows, enc_rows.T)),
                                  cast(Dictionary, _Rows(dec_cols.T, dec_cols)), cast(int, ids), kk)
            v_L.append(top.values.reshape(len(ids), kk))
            i_L.append(top.indices.reshape(len(ids), kk))
        vals.append(torch.cat(v_L))
        feats.append(torch.cat(i_L))
        layers.append(torch.full_like(feats[-1], L))
    v, i, ly = torch.cat(vals, 1), torch.cat(feats, 1), torch.cat(layers, 1)
    best = v.topk(min(k, v.shape[1]), dim=1)
    return Upstream(layer=ly.gather(1, best.indices).cpu(), feature=i.gather(1, best.indices).cpu(),
                    value=best.values.cpu())


def _pack(a: np.ndarray, compress: bool) -> dict[str, Any]:
    """Step 3: one typed array as {dtype, shape, codec, b64}."""
    codes = {np.dtype("<u1"): "u1", np.dtype("<u2"): "u2", np.dtype("<u4"): "u4", np.dtype("<i2"): "i2",
             np.dtype("<i4"): "i4", np.dtype("<f2"): "f2", np.dtype("<f4"): "f4"}
    raw = np.ascontiguousarray(a).tobytes()
    packed = zlib.compress(raw, 6) if compress else raw
    deflate = len(packed) < 0.8 * len(raw)  # floats barely shrink: raw spares the page their inflation
    return {"dtype": codes[a.dtype], "shape": list(a.shape), "codec": "deflate" if deflate else "raw",
            "b64": base64.b64encode(packed if deflate else raw).decode("ascii")}


def _shown(x: Tensor) -> np.ndarray:
    """Numbers the page only prints (3 significant digits): float16 when they fit, else float32."""
    a = x.detach().float().cpu().numpy()
    return a.astype("<f2") if np.isfinite(a).all() and np.abs(a).max(initial=0) < 6e4 else a.astype("<f4")


def dashboard_data(ex: FeatureExamples, token_str: Callable[[int], str], info: dict[str, Any],
                   effects: LogitEffects | None = None, upstream: Upstream | None = None,
                   upstream_links: dict[int, str] | None = None, notes: list[str] | None = None,
                   compress: bool = True) -> dict[str, Any]:
    """The page data (module docstring). `info` holds what the header shows (title, hook, out_hook,
    dictionary, model, ...); `upstream_links` maps an upstream layer to the href of its dashboard."""
    F_, K, C = ex.contexts.shape
    ctx = ex.contexts.numpy()
    used = [ctx[ctx >= 0]]
    if effects is not None:
        used += [effects.promoted_ids.numpy().ravel(), effects.suppressed_ids.numpy().ravel()]
    vocab_ids, inverse = np.unique(np.concatenate(used).astype(np.int64), return_inverse=True)  # step 1
    tok_dtype = np.dtype("<u2") if len(vocab_ids) < 0xFFFF else np.dtype("<u4")
    local = np.zeros(ctx.shape, dtype=tok_dtype)
    n_ctx = int((ctx >= 0).sum())
    local[ctx >= 0] = inverse[:n_ctx] + 1
    top = ex.top_acts.float().numpy()
    vmax = np.maximum(top[:, :1, None], 1e-12)  # step 2
    acts = np.rint(np.clip(ex.context_acts.float().numpy() / vmax, 0, 1) * 255).astype("<u1")
    count = "<u2" if ex.n_tokens < 0xFFFF else "<u4"  # a bin never counts more than every token
    arrays = {"tokens": local, "acts": acts, "top": _shown(ex.top_acts), "hist": ex.hist_counts.numpy().astype(count),
              "density": ex.density.float().numpy().astype("<f4")}
    if effects is not None:
        T = effects.promoted_ids.shape[1]
        rest = inverse[n_ctx:]
        arrays["promoted_ids"] = rest[:F_ * T].reshape(F_, T).astype(tok_dtype)
        arrays["suppressed_ids"] = rest[F_ * T:].reshape(F_, T).astype(tok_dtype)
        arrays["promoted"] = _shown(effects.promoted)
        arrays["suppressed"] = _shown(effects.suppressed)
    if upstream is not None:
        arrays["up_layer"] = upstream.layer.numpy().astype("<i2")
        arrays["up_feature"] = upstream.feature.numpy().astype("<i4")
        arrays["up_value"] = _shown(upstream.value)
    return {
        **info, "format": FORMAT, "n_features": F_, "k": K, "context": C, "at": C - 1 - ex.context_after,
        "bins": int(ex.hist_counts.shape[1]), "n_tokens": ex.n_tokens, "source": ex.source, "hook": ex.hook,
        "vocab": [token_str(int(t)) for t in vocab_ids],
        "upstream_links": {str(k): v for k, v in (upstream_links or {}).items()},
        "notes": list(notes or []),
        "arrays": {name: _pack(a, compress) for name, a in arrays.items()},
    }
