"""What every layout reader shares: the `Loaded` result, hook-name mapping onto ours, and the checks
(and the one exact adjustment) that fit a loaded dictionary to a model.

Hook names. Ours follow TransformerLens (DESIGN.md), so most published names carry over as they are.
Three differences matter:
* circuit-tracer's `mlp.hook_in` / `mlp.hook_out` (hooks it adds around the MLP) are our
  `ln2.hook_normalized` (the MLP's input, after the norm's gain) and `hook_mlp_out`.
* TransformerLens' `ln*.hook_normalized` is taken *before* the norm's gain (and bias) in RMSNorm
  always, and in LayerNorm when the weights were loaded with `fold_ln=True` (its default, used by
  SAELens' training and by Dunefsky et al.); ours is after them. `fit_to_model` rewrites such an
  encoder for our hook exactly: with x_TL = (x − b) / w, pre = x_TL·W_enc + b_enc becomes
  x·(W_enc / w) + (b_enc − (b / w)·W_enc) (a skip connection likewise).
* Names relative to a layer (`hook_mlp_out` in a circuit-tracer config) get `blocks.{layer}.`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.model.checkpoint import CheckpointError

# Where the source's `ln*.hook_normalized` sits relative to the norm's gain.
TL_FOLDED, TL_UNFOLDED, POST_GAIN = "tl-folded", "tl-unfolded", "post-gain"
_TOP_LEVEL = ("hook_embed", "hook_pos_embed", "ln_final.")
_RENAME = {"mlp.hook_in": "ln2.hook_normalized", "mlp.hook_out": "hook_mlp_out"}
_LAYER = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Loaded:
    """What `load_any` returns: the dictionaries found at one path, in layer order for sets."""

    layout: str  # one of `LAYOUTS` (layouts/__init__.py)
    path: Path  # the file or folder read
    dictionaries: list[Dictionary]  # one, or one per layer (transcoder sets, the per-layer view of a CLT)
    clt: Any = None  # a `CrossLayerTranscoder` for cross-layer transcoder sets, else None
    notes: list[str] = field(default_factory=list)  # what was folded or assumed while loading
    norm_input: str = POST_GAIN  # TL_FOLDED / TL_UNFOLDED / POST_GAIN: what `ln*.hook_normalized` meant

    @property
    def dictionary(self) -> Dictionary:
        """The one dictionary (an error for a set: pick `dictionaries[layer]`)."""
        if len(self.dictionaries) != 1:
            raise ValueError(f"{str(self.path)!r} holds {len(self.dictionaries)} dictionaries ({self.layout}); "
                             "pick one by layer")
        return self.dictionaries[0]


def our_hook(name: str, layer: int | None = None) -> str:
    """A published hook name in our naming (see the module docstring)."""
    name = str(name).strip()
    if not name.startswith("blocks.") and not name.startswith(_TOP_LEVEL):
        if layer is None:
            raise CheckpointError(f"hook {name!r} is relative to a layer, but the layer is not known")
        name = f"blocks.{layer}.{name}"
    for old, new in _RENAME.items():
        if name.endswith("." + old):
            name = name[: -len(old)] + new
    return name


def hook_layer(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def to_float(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """float32 copies (published files are often bfloat16 or float16)."""
    return {k: v.detach().to(torch.float32) for k, v in tensors.items()}


def _norm_module(model: Any, hook: str) -> Any:
    if hook.startswith("ln_final."):
        return model.ln_final
    m = re.match(r"^blocks\.(\d+)\.(ln1|ln2)\.hook_normalized$", hook)
    return getattr(model.blocks[int(m.group(1))], m.group(2)) if m else None


@torch.no_grad()
def unfold_norm(d: Dictionary, model: Any) -> bool:
    """Rewrite `d`, which reads TransformerLens' pre-gain `hook_normalized`, for our post-gain hook
    (formula in the module docstring). Returns whether anything changed."""
    if not d.cfg.hook.endswith("hook_normalized"):
        return False
    norm = _norm_module(model, d.cfg.hook)
    if norm is None:
        return False
    w = norm.w.detach().float()
    b = norm.b.detach().float() if getattr(norm, "b", None) is not None else torch.zeros_like(w)
    if (w.abs() < 1e-12).any():
        raise CheckpointError(f"{d.cfg.hook}: the norm has a zero gain, so its pre-gain input cannot be recovered")
    shift = b / w
    d.b_enc.sub_(shift @ d.W_enc)
    d.W_enc.div_(w[:, None])
    if d.W_skip is not None:
        d.b_dec.sub_(shift @ d.W_skip.T)
        d.W_skip.div_(w[None, :])
    return True


def fit_to_model(loaded: Loaded, model: Any) -> Loaded:
    """Check every dictionary's hooks and widths against `model` (clear errors) and rewrite encoders
    that read TransformerLens' pre-gain `hook_normalized` for ours. Changes `loaded` in place."""
    from sparsecircuits.dictionaries.activations import hook_widths

    pre_gain = loaded.norm_input == TL_FOLDED or (loaded.norm_input == TL_UNFOLDED and model.cfg.norm == "rms")
    for d in loaded.dictionaries:
        cfg = d.cfg
        hooks = [cfg.hook] + ([cfg.out_hook] if cfg.out_hook != cfg.hook else [])
        try:
            widths = hook_widths(model, hooks)
        except ValueError as e:
            raise CheckpointError(f"{str(loaded.path)!r} ({loaded.layout}) does not fit the model: {e}") from None
        for hook, want, what in ((cfg.hook, cfg.d_in, "input"), (cfg.out_hook, cfg.d_out, "output")):
            if widths[hook] != want:
                raise CheckpointError(f"{str(loaded.path)!r} ({loaded.layout}): {what} width {want} does not fit the "
                                      f"model's {hook!r} (width {widths[hook]})")
        if pre_gain and unfold_norm(d, model):
            loaded.notes.append(f"{cfg.hook}: the encoder read TransformerLens' pre-gain activation; rewritten for "
                                "ours (after the gain)")
    if loaded.clt is not None:
        loaded.clt.check_layers(len(model.blocks))
    return loaded
