"""Dictionary files: our SAELens-layout folders, and loaders for the formats other tools publish.

* **Ours = SAELens layout** (`save_dictionary` / `load_dictionary`): a folder with `cfg.json`
  (`architecture`, `d_in`, `d_sae`, `hook_name`, `apply_b_dec_to_input: false`, ...; SAELens' keys,
  plus a `sparsecircuits` block with our full `DictConfig`) and `sae_weights.safetensors` holding
  `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`, `b_enc`, `b_dec`, and `threshold` for JumpReLU and
  BatchTopK (saved as JumpReLU), `W_skip` for skip transcoders. Training-time input normalisation
  is folded into the weights before saving (`fold_scaling`), so files work on raw activations.
* **Every other published layout** (SAELens, Gemma Scope, dictionary_learning, Dunefsky et al.,
  circuit-tracer sets and cross-layer transcoders) lives in `dictionaries/layouts/` (`load_any`
  detects the layout). `load_dictionary` reads SAELens folders through it; `load_gemma_scope`,
  `convert_pickle`, `load_transcoder_set`, `parse_simple_yaml` and `safe_torch_load` keep their old
  import paths here.
Nothing here unpickles implicitly; every malformed file raises `CheckpointError` naming it.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.dictionaries.base import DictConfig, Dictionary, make_dictionary
from sparsecircuits.model.checkpoint import CheckpointError, read_json, read_tensors

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
FORMAT = "sparsecircuits-dictionary-v1"
# Our architecture -> SAELens architecture name (SAE, transcoder).
_SAELENS_NAMES = {"relu": ("standard", "transcoder"), "topk": ("topk", "topk_transcoder"),
                  "batchtopk": ("jumprelu", "jumprelu_transcoder"), "jumprelu": ("jumprelu", "jumprelu_transcoder")}


@torch.no_grad()
def fold_scaling(d: Dictionary, scale_in: float, scale_out: float) -> Dictionary:
    """A copy of `d`, trained on x·scale_in predicting y·scale_out, that works on raw x and y.

    pre = (s_in x) W_enc + b_enc, so W_enc ← s_in W_enc (pre-activations and thresholds unchanged);
    ŷ = (z W_dec + b_dec + s_in x W_skipᵀ) / s_out, so W_dec, b_dec ← / s_out, W_skip ← s_in/s_out W_skip.
    """
    out = copy.deepcopy(d)
    out.W_enc.mul_(scale_in)
    out.W_dec.div_(scale_out)
    out.b_dec.div_(scale_out)
    if out.W_skip is not None:
        out.W_skip.mul_(scale_in / scale_out)
    return out


def save_dictionary(d: Dictionary, folder: Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `d` (raw units; see `fold_scaling`) as a SAELens folder, atomically."""
    from sparsecircuits.atomic import atomic_dir

    cfg = d.cfg
    sae_name, tc_name = _SAELENS_NAMES[cfg.arch]
    arch = tc_name if cfg.is_transcoder else sae_name
    if cfg.is_transcoder and cfg.skip:
        arch = "skip_transcoder" if cfg.arch == "relu" else arch.replace("_transcoder", "_skip_transcoder")
    tensors = {"W_enc": d.W_enc, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
    threshold = d.threshold_vector()
    if threshold is not None:
        tensors["threshold"] = threshold
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip
    meta = dict(meta or {})
    hooks = {"hook_name": cfg.hook, **({"hook_name_out": cfg.out_hook} if cfg.is_transcoder else {})}
    out_cfg: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.width, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        **hooks,
        # sae_lens_version names the config layout we write (SAELens >= 6), not a dependency.
        "metadata": {**hooks, "model_name": meta.get("model_name", "sparsecircuits"), "hook_head_index": None,
                     "sae_lens_version": "6.0.0", "sae_lens_training_version": None,
                     "context_size": meta.get("context_size"), "prepend_bos": False},
        "sparsecircuits": {"format": FORMAT, "dict_config": _cfg_dict(cfg), **meta},
    }
    if cfg.is_transcoder:
        out_cfg["d_out"] = cfg.d_out
    if d.uses_k:
        out_cfg["k"] = cfg.k
    with atomic_dir(Path(folder)) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / CFG).write_text(json.dumps(out_cfg, indent=2))
    return Path(folder)


def _cfg_dict(cfg: DictConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("arch", "hook", "out_hook", "d_in", "d_out", "width", "k", "skip")}


def build_dictionary(cfg: DictConfig, tensors: dict[str, Tensor], source: str) -> Dictionary:
    """A dictionary from SAELens-layout tensors, after checking every name and shape."""
    F, d_in, d_out = cfg.width, cfg.d_in, cfg.d_out
    expected = {"W_enc": (d_in, F), "W_dec": (F, d_out), "b_enc": (F,), "b_dec": (d_out,)}
    d = make_dictionary(cfg)
    if d.has_threshold:
        expected["threshold"] = (F,)
    if cfg.skip:
        expected["W_skip"] = (d_out, d_in)
    problems = [f"missing {k} {v}" for k, v in expected.items() if k not in tensors]
    problems += [f"{k}: file {tuple(tensors[k].shape)} vs expected {v}" for k, v in expected.items()
                 if k in tensors and tuple(tensors[k].shape) != v]
    if problems:
        raise CheckpointError(f"{source} does not fit a {cfg.arch} dictionary of width {F} on "
                              f"{d_in} -> {d_out}: " + "; ".join(problems))
    with torch.no_grad():
        for k in ("W_enc", "W_dec", "b_enc", "b_dec") + (("W_skip",) if cfg.skip else ()):
            getattr(d, k).copy_(tensors[k].float())
        if d.has_threshold:
            d.load_threshold(tensors["threshold"].float())
    return d.eval()


def load_dictionary(folder: Path) -> Dictionary:
    """Load a SAELens-layout folder (ours or SAELens'); see the module docstring."""
    folder = Path(folder)
    if folder.is_file() or not (folder / CFG).exists():
        raise CheckpointError(f"{str(folder)!r} is not a dictionary folder (no {CFG}); "
                              "for the other published layouts use layouts.load_any")
    cfg = read_json(folder / CFG)
    ours = cfg.get("sparsecircuits", {})
    if ours.get("format") != FORMAT:
        from sparsecircuits.dictionaries.layouts.saelens import load_saelens

        return load_saelens(folder).dictionary
    tensors = read_tensors(folder / WEIGHTS)
    try:
        return build_dictionary(DictConfig(**ours["dict_config"]), tensors, str(folder / WEIGHTS))
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{str(folder / CFG)!r} is not a valid dictionary config: {e}") from None


# --- the other published layouts (dictionaries/layouts/): old import paths kept -----------------------

_MOVED = {"parse_simple_yaml": "circuit_tracer", "load_transcoder_set": "circuit_tracer",
          "safe_torch_load": "dunefsky", "FROM_SAELENS": "saelens"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"sparsecircuits.dictionaries.layouts.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_gemma_scope(path: Path, hook: str, out_hook: str = "") -> Dictionary:
    """A Gemma Scope JumpReLU dictionary from `params.npz` or a safetensors file (layouts/gemma_scope.py)."""
    from sparsecircuits.dictionaries.layouts.gemma_scope import load_gemma_scope_file

    return load_gemma_scope_file(path, hook, out_hook).dictionary


def convert_pickle(path: Path, out: Path, hook: str = "", out_hook: str = "") -> Path:
    """Convert a Dunefsky et al. transcoder/SAE pickle to our SAELens folder (layouts/dunefsky.py)."""
    from sparsecircuits.dictionaries.layouts.dunefsky import load_dunefsky

    warnings.warn(f"reading the pickle {str(path)!r} with torch.load(weights_only=True); only convert files "
                  "you trust", stacklevel=2)
    d = load_dunefsky(Path(path), hook, out_hook).dictionary
    return save_dictionary(d, Path(out), {"converted_from": str(path)})
