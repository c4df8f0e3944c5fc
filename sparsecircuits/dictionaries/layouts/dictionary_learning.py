"""`dictionary_learning` (saprmarks/dictionary_learning; Marks et al. 2025's Pythia-70m dictionaries):
a folder with `ae.pt` (a torch state dict, read only with `torch.load(weights_only=True)`) and
`config.json` `{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer", "lm_name",
"submodule_name", ...}, "buffer": {...}}`.

State dicts by `dict_class` and what their `encode` computes (x̂ = decode(f) in all):
* `AutoEncoder`: `encoder.weight [F, d]`, `encoder.bias`, `decoder.weight [d, F]`, `bias [d]`;
  f = ReLU(W_e(x − bias) + b_e), x̂ = W_d f + bias. Its `from_pretrained` (what `load_dictionary`
  calls) scales decoder columns to unit norm and the encoder rows by the old norms; so do we.
* `AutoEncoderNew`: `encoder.*`, `decoder.weight`, `decoder.bias`; f = ReLU(W_e x + b_e).
* `AutoEncoderTopK`: `encoder.*`, `decoder.weight`, `b_dec`, buffers `k`, `threshold`;
  f = top-k of ReLU(W_e(x − b_dec) + b_e) (the threshold is used only on request).
* `BatchTopKSAE` (`encoder.*`, `decoder.weight`, `b_dec`, `k`, `threshold`) and
  `MatryoshkaBatchTopKSAE` (`W_enc [d, F]`, `b_enc`, `W_dec [F, d]`, `b_dec`, `k`, `threshold`,
  `group_sizes`): f = r·1[r > θ] with r = ReLU(W_e(x − b_dec) + b_e) (their default
  `use_threshold=True`); θ < 0 (never estimated) leaves a ReLU SAE.
* `JumpReluAutoEncoder`: `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold`; f = ReLU(pre·1[pre > θ]).
The subtraction of the decoder bias is folded into b_enc. Training with `normalize_activations`
saves weights already rescaled to raw activations (`scale_biases(norm_factor)`), so none is applied.

Hooks: `submodule_name` (`resid_post_layer_3`) or the folder names of the Pythia release
(`embed`, `resid_out_layer{L}`, `attn_out_layer{L}`, `mlp_out_layer{L}`; resid_i is the output of
layer i) map to `hook_embed`, `blocks.L.hook_resid_post`, `blocks.L.hook_attn_out`,
`blocks.L.hook_mlp_out`; else `trainer.layer` alone means the layer's output (their
`get_submodule`), `blocks.L.hook_resid_post`.

`save_dictionary_learning` writes SAEs back in this layout (transcoders have no class there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import DictConfig, Dictionary
from sparsecircuits.dictionaries.layouts.common import POST_GAIN, Loaded, to_float
from sparsecircuits.model.checkpoint import CheckpointError, read_json

AE, CONFIG = "ae.pt", "config.json"
_SITE = re.compile(r"(embed|resid_out|resid_post|resid_pre|attn_out|mlp_out)(?:_layer_?(\d+))?")
_HOOKS = {"resid_out": "blocks.{L}.hook_resid_post", "resid_post": "blocks.{L}.hook_resid_post",
          "resid_pre": "blocks.{L}.hook_resid_pre", "attn_out": "blocks.{L}.hook_attn_out",
          "mlp_out": "blocks.{L}.hook_mlp_out"}
_CLASSES = ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
            "JumpReluAutoEncoder")


def site_hook(name: str) -> str | None:
    """Our hook for a dictionary_learning site name (`mlp_out_layer1`, `resid_post_layer_3`, `embed`)."""
    m = _SITE.fullmatch(name)
    if m is None:
        return None
    if m.group(1) == "embed":
        return "hook_embed"
    return _HOOKS[m.group(1)].format(L=int(m.group(2))) if m.group(2) is not None else None


def dl_hook(folder: Path, trainer: dict[str, Any]) -> tuple[str, str]:
    """(hook, where it came from) for a dictionary_learning folder."""
    if trainer.get("submodule_name"):
        hook = site_hook(str(trainer["submodule_name"]))
        if hook:
            return hook, "submodule_name"
    for part in (folder.name, folder.parent.name):
        hook = site_hook(part)
        if hook:
            return hook, f"folder name {part!r}"
    if trainer.get("layer") is not None:
        return f"blocks.{int(trainer['layer'])}.hook_resid_post", "trainer.layer (the layer's output)"
    raise CheckpointError(f"{str(folder)!r}: no submodule_name, site folder name or layer says which hook it reads")


def read_ae(path: Path, mmap: bool = False) -> dict[str, Tensor]:
    """`ae.pt` through `torch.load(weights_only=True)`: a state dict (or a training checkpoint's `ae`);
    `mmap` maps the file instead of reading it (for listing shapes)."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"missing file {str(path)!r}") from None
    except Exception as e:  # UnpicklingError for non-tensor pickles, RuntimeError for corrupt zips
        raise CheckpointError(f"cannot read {str(path)!r} with torch.load(weights_only=True): "
                              f"{str(e).splitlines()[0]}") from None
    if isinstance(sd, dict) and isinstance(sd.get("ae"), dict):
        sd = sd["ae"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors")
    return sd


def _ours(cls: str, sd: dict[str, Tensor], source: str) -> tuple[str, dict[str, Tensor]]:
    """(architecture, SAELens-layout tensors) for a dictionary_learning state dict."""
    need = {"AutoEncoder": ("encoder.weight", "encoder.bias", "decoder.weight", "bias"),
            "AutoEncoderNew": ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"),
            "AutoEncoderTopK": ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k"),
            "BatchTopKSAE": ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"),
            "JumpReluAutoEncoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}.get(
        cls, ("W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold"))
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: a {cls} state dict needs {missing}")
    s = to_float(sd)
    if "encoder.weight" in s:
        W_enc, b_enc, W_dec = s["encoder.weight"].T, s["encoder.bias"], s["decoder.weight"].T
        b_dec = s["bias"] if cls == "AutoEncoder" else s["decoder.bias"] if cls == "AutoEncoderNew" else s["b_dec"]
    else:
        W_enc, b_enc, W_dec, b_dec = s["W_enc"], s["b_enc"], s["W_dec"], s["b_dec"]
    if cls != "AutoEncoderNew" and cls != "JumpReluAutoEncoder":  # encode(x - b_dec)
        b_enc = b_enc - b_dec @ W_enc
    if cls == "AutoEncoder":  # from_pretrained(normalize_decoder=True)
        n = W_dec.norm(dim=1)
        if not torch.allclose(n, torch.ones_like(n)):
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if cls in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK"):
        return ("topk" if cls == "AutoEncoderTopK" else "relu"), t
    th = s["threshold"]
    if cls == "JumpReluAutoEncoder":
        return "jumprelu", {**t, "threshold": th}
    if float(th.reshape(-1)[0]) < 0:  # BatchTopK never estimated its threshold: ReLU(pre)
        return "relu", t
    return "batchtopk", {**t, "threshold": th.reshape(-1).expand(W_enc.shape[1]).clone()}


def load_dictionary_learning(folder: Path) -> Loaded:
    """A dictionary_learning folder; see the module docstring."""
    from sparsecircuits.dictionaries.formats import build_dictionary

    folder = Path(folder)
    trainer = read_json(folder / CONFIG).get("trainer")
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{str(folder / CONFIG)!r} has no `trainer` block (not a dictionary_learning config)")
    cls = trainer.get("dict_class", "AutoEncoder")
    if cls not in _CLASSES:
        raise CheckpointError(f"{str(folder / CONFIG)!r}: dict_class {cls!r} is not supported (supported: "
                              f"{', '.join(_CLASSES)})")
    source = str(folder / AE)
    sd = read_ae(folder / AE)
    arch, t = _ours(cls, sd, source)
    hook, why = dl_hook(folder, trainer)
    sd_k = sd.get("k")
    k = int(trainer.get("k") or (sd_k.item() if sd_k is not None else 1))
    dc = DictConfig(arch=arch, hook=hook, d_in=int(t["W_enc"].shape[0]), width=int(t["W_enc"].shape[1]), k=k)
    for key, want in (("activation_dim", dc.d_in), ("dict_size", dc.width)):
        if trainer.get(key) is not None and int(trainer[key]) != want:
            raise CheckpointError(f"{str(folder / CONFIG)!r}: {key}={trainer[key]} but {AE} has {want}")
    notes = [f"{cls} -> {arch}; hook {hook} from {why}"]
    return Loaded("dictionary_learning", folder, [build_dictionary(dc, t, source)], notes=notes, norm_input=POST_GAIN)


@torch.no_grad()
def save_dictionary_learning(d: Dictionary, folder: Path, lm_name: str = "", layer: int | None = None) -> Path:
    """Write an SAE as `ae.pt` + `config.json` (atomically) that dictionary_learning's
    `utils.load_dictionary` reads back to the same activations and reconstructions.

    relu → `AutoEncoder` (decoder columns scaled to unit norm first, as its loader would: the
    activations are then ours times ‖W_dec,i‖, the reconstructions identical), topk →
    `AutoEncoderTopK`, batchtopk → `BatchTopKSAE`, jumprelu → `JumpReluAutoEncoder`.
    """
    from sparsecircuits.atomic import atomic_dir

    cfg = d.cfg
    if cfg.is_transcoder or cfg.skip:
        raise ValueError(f"dictionary_learning has no transcoder class; {cfg.name} on {cfg.hook!r} -> "
                         f"{cfg.out_hook!r} cannot be written in its layout")
    W_enc, b_enc, W_dec, b_dec = (p.detach().float().clone() for p in (d.W_enc, d.b_enc, d.W_dec, d.b_dec))
    if cfg.arch == "relu":
        n = W_dec.norm(dim=1).clamp_min(1e-12)
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    if cfg.arch in ("relu", "topk", "batchtopk"):
        b_enc = b_enc + b_dec @ W_enc  # their encoder subtracts the decoder bias first
    if cfg.arch == "relu":
        cls = "AutoEncoder"
        sd = {"bias": b_dec, "encoder.weight": W_enc.T, "encoder.bias": b_enc, "decoder.weight": W_dec.T}
    elif cfg.arch == "topk":
        cls = "AutoEncoderTopK"
        sd = {"k": torch.tensor(cfg.k, dtype=torch.int), "threshold": torch.tensor(-1.0),
              "decoder.weight": W_dec.T, "encoder.weight": W_enc.T, "encoder.bias": b_enc, "b_dec": b_dec}
    elif cfg.arch == "batchtopk":
        cls = "BatchTopKSAE"
        sd = {"k": torch.tensor(cfg.k, dtype=torch.int), "threshold": d.threshold.detach().float().reshape(()).clone(),
              "decoder.weight": W_dec.T, "encoder.weight": W_enc.T, "encoder.bias": b_enc, "b_dec": b_dec}
    else:
        cls = "JumpReluAutoEncoder"
        sd = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": d.threshold_vector()}
    layer = layer if layer is not None else _layer_of(cfg.hook)
    trainer = {"dict_class": cls, "trainer_class": "sparsecircuits", "activation_dim": cfg.d_in,
               "dict_size": cfg.width, "layer": layer, "lm_name": lm_name, "submodule_name": _site_of(cfg.hook)}
    if d.uses_k:
        trainer["k"] = cfg.k
    with atomic_dir(Path(folder)) as tmp:
        torch.save({k: v.contiguous() for k, v in sd.items()}, str(tmp / AE))
        (tmp / CONFIG).write_text(json.dumps({"trainer": trainer}, indent=4))
    return Path(folder)


def _layer_of(hook: str) -> int | None:
    m = re.match(r"^blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def _site_of(hook: str) -> str | None:
    """The inverse of `site_hook` (newer `resid_post_layer_L` spelling), None for other hooks."""
    if hook == "hook_embed":
        return "embed"
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|resid_pre|attn_out|mlp_out)", hook)
    return f"{m.group(2)}_layer_{m.group(1)}" if m else None
