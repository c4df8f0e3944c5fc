"""What a feature writes, read off at the logits: the top promoted and suppressed output tokens of
every feature at once (the "logit effects" of SAE-Vis and Neuronpedia feature pages).

A feature f adds z_f · d_f to the activation at its dictionary's `out_hook`, where d_f = W_dec[f] (for
a hook's own channels, `W_FD` None: the unit vectors there). Its direct effect on the logits is d_f
carried to the final norm's output, times the unembedding. `logit_effects(model, out_hook, W_FD, k)`:
  1. `residual_directions`: carry d_f into the residual stream. Residual-stream writers (`hook_embed`,
     `blocks.L.hook_resid_pre|mid|post`, `blocks.L.hook_attn_out`, `blocks.L.hook_mlp_out`) write it
     as it is; MLP neurons (`blocks.L.mlp.hook_post`) write it through the MLP's W_out (an AbsTopK on
     the MLP output is taken as the identity; a post-norm, Gemma 2, as a linear map like step 2's);
     `ln_final.hook_normalized` is already past the final norm. Any other hook (attention inputs,
     q/k/v, the MLP input) has no direct path to the logits: None (the dashboard then says so).
  2. `through_final_norm`: the final norm as a linear map with its per-token scale held fixed, as
     attribution graphs hold it. LayerNorm removes the mean over d_model (d - mean(d)); both norms
     multiply by the gain w. The scale 1/s itself is dropped: it is one positive number per token,
     the same for every feature, so it rescales all effects at a token alike and changes no ranking
     (effects are "per unit activation at norm scale 1"). The norm's bias, b_U and the bigram table
     are dropped because they do not depend on the feature, and a logit softcap (monotone) is ignored.
  3. `top_logit_effects`: multiply by W_Uᵀ in chunks of features (never a full [F, vocab] matrix) and
     keep each feature's k largest (promoted) and k smallest (suppressed) effects.
Pure tensor functions; no model forward pass, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sparsecircuits.model.transformer import Norm, Transformer

_RESIDUAL = re.compile(r"^(hook_embed|blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out))$")
_NEURONS = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
FINAL = "ln_final.hook_normalized"


@dataclass
class LogitEffects:
    """Each feature's top-k promoted and suppressed tokens (F features, k tokens)."""

    promoted_ids: Tensor  # [F, k] int64 tokens with the largest effect, largest first
    promoted: Tensor  # [F, k] float32 their effects (logits per unit activation at norm scale 1)
    suppressed_ids: Tensor  # [F, k] int64 tokens with the most negative effect, most negative first
    suppressed: Tensor  # [F, k] float32 their effects


def residual_directions(model: Transformer, out_hook: str, W_FD: Float[Tensor, "F d_out"] | None = None
                        ) -> Float[Tensor, "F d_model"] | None:
    """Step 1: the feature directions as residual-stream directions (None: no direct logit path).
    `W_FD` None means the hook's own channels (a neuron source): the identity at `out_hook`."""
    m = _NEURONS.match(out_hook)
    if m and int(m.group(1)) < model.cfg.n_layers:
        block = model.blocks[int(m.group(1))]
        W_out = block.mlp.W_out  # [d_model, d_mlp]
        dirs = W_out.T if W_FD is None else W_FD.to(W_out) @ W_out.T
        return _through_norm(block.ln2_post, dirs) if model.cfg.post_norms else dirs
    if _RESIDUAL.match(out_hook) or out_hook == FINAL:
        return torch.eye(model.cfg.d_model, device=model.W_E.device, dtype=model.W_E.dtype) if W_FD is None else W_FD
    return None


def _through_norm(norm: Norm, x_FD: Tensor) -> Tensor:
    """A norm as a linear map with its scale fixed at 1: centre (LayerNorm), times the gain."""
    out = x_FD - x_FD.mean(-1, keepdim=True) if norm.b is not None else x_FD
    return out * norm.w


def through_final_norm(model: Transformer, resid_FD: Float[Tensor, "F d_model"]) -> Float[Tensor, "F d_model"]:
    """Step 2: the directions after the final norm with its scale fixed at 1 (module docstring)."""
    return _through_norm(model.ln_final, resid_FD)


def top_logit_effects(dirs_FD: Float[Tensor, "F d_model"], W_U_VD: Float[Tensor, "vocab d_model"], k: int = 10,
                      chunk: int = 1024) -> LogitEffects:
    """Step 3: top-k and bottom-k of `dirs_FD @ W_U_VDᵀ` per row, `chunk` rows at a time."""
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got {k}, {chunk}")
    k = min(k, W_U_VD.shape[0])
    W_U_VD = W_U_VD.float()
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for s in range(0, dirs_FD.shape[0], chunk):
        eff_CV = dirs_FD[s:s + chunk].float() @ W_U_VD.T
        hi, lo = eff_CV.topk(k, dim=1), eff_CV.topk(k, dim=1, largest=False)
        parts.append((hi.indices, hi.values, lo.indices, lo.values))
    if not parts:
        empty_i, empty_v = torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
        return LogitEffects(empty_i, empty_v, empty_i.clone(), empty_v.clone())
    cat = [torch.cat(p).cpu() for p in zip(*parts)]
    return LogitEffects(promoted_ids=cat[0], promoted=cat[1], suppressed_ids=cat[2], suppressed=cat[3])


@torch.no_grad()
def logit_effects(model: Transformer, out_hook: str, W_FD: Float[Tensor, "F d_out"] | None = None, k: int = 10
                  ) -> LogitEffects | None:
    """Steps 1-3 for features writing the rows of `W_FD` at `out_hook` (None: the hook's own channels);
    None when the hook has no direct logit path."""
    W_FD = None if W_FD is None else W_FD.to(model.W_E.device, model.W_E.dtype)
    dirs = residual_directions(model, out_hook, W_FD)
    if dirs is None:
        return None
    if out_hook != FINAL:
        dirs = through_final_norm(model, dirs)
    W_U = model.W_E if model.W_U is None else model.W_U
    return top_logit_effects(dirs, W_U, k)
