"""One entry point for every layout (`load_any`) and a listing of what a folder holds (`find_dictionaries`).

Detection, by what the path holds (a file stands for the folder its layout lives in):
  `config.yaml`                          circuit-tracer transcoder set or cross-layer transcoder
  `cfg.json` + `sae_weights.safetensors` ours (a `sparsecircuits` block) or SAELens
  `ae.pt` + `config.json` (`trainer`)    dictionary_learning
  `params.npz` / `params.safetensors`    Gemma Scope / Gemma Scope 2
  any other `.pt` file                   Dunefsky et al. (torch.load(weights_only=True) only)
Pickles (`.pkl`, `.pkl.gz`) are refused. The listing reads configs and tensor headers (shapes) only.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsecircuits.dictionaries.layouts.common import Loaded, fit_to_model, hook_layer
from sparsecircuits.model.checkpoint import CheckpointError, read_json

LAYOUTS = {
    "sparsecircuits": "ours: the SAELens layout plus a `sparsecircuits` block in cfg.json",
    "saelens": "SAELens cfg.json + sae_weights.safetensors",
    "gemma-scope": "Gemma Scope params.npz (Gemma Scope 2: params.safetensors)",
    "dictionary_learning": "dictionary_learning ae.pt + config.json (Marks et al.)",
    "dunefsky": "Dunefsky et al. transcoder/SAE .pt files",
    "circuit-tracer": "circuit-tracer transcoder set: config.yaml + per-layer files",
    "circuit-tracer-clt": "circuit-tracer cross-layer transcoder: config.yaml + W_enc_i / W_dec_i",
}


def detect(path: Path) -> tuple[str, Path]:
    """(layout, the file or folder to read) for a local path."""
    path = Path(path)
    if path.is_file():
        name = path.name
        if name in ("config.yaml", "cfg.json", "sae_weights.safetensors", "ae.pt") or (
                name == "config.json" and (path.parent / "ae.pt").exists()):
            return detect(path.parent)
        if path.suffix == ".npz" or name == "params.safetensors":
            return "gemma-scope", path
        if path.suffix == ".pt":
            return "dunefsky", path
        if name.endswith((".pkl", ".pkl.gz")):
            raise CheckpointError(f"{str(path)!r} is a plain pickle; it is never unpickled here (convert it to "
                                  "safetensors with the code that wrote it)")
        raise CheckpointError(f"{str(path)!r}: no dictionary layout has a file like this "
                              f"(known: {', '.join(LAYOUTS)})")
    if (path / "config.yaml").exists():
        return ("circuit-tracer-clt" if (path / "W_enc_0.safetensors").exists() else "circuit-tracer"), path
    if (path / "cfg.json").exists():
        ours = (read_json(path / "cfg.json").get("sparsecircuits") or {}).get("format")
        return ("sparsecircuits" if ours else "saelens"), path
    if (path / "ae.pt").exists() and (path / "config.json").exists():
        return "dictionary_learning", path
    for name in ("params.npz", "params.safetensors"):
        if (path / name).exists():
            return "gemma-scope", path / name
    raise CheckpointError(f"{str(path)!r} holds no dictionary in a known layout ({', '.join(LAYOUTS)}); "
                          "`sparsecircuits dicts list` shows what is below it")


def load_any(ref: str | Path, model: Any = None, *, hook: str = "", out_hook: str = "",
             download: bool = False) -> Loaded:
    """Load the dictionaries at `ref` (a local path, or an HF repo [+ folder] in the HF cache; see
    `hub.py`) in whatever layout they are; with `model`, check and fit them to it (`fit_to_model`).
    `hook` / `out_hook` name the hooks for files that do not record them (Gemma Scope outside its
    repo folders, Dunefsky et al. files without a config)."""
    from sparsecircuits.dictionaries.layouts import (
        circuit_tracer,
        dictionary_learning,
        dunefsky,
        gemma_scope,
        hub,
        saelens,
    )

    layout, path = detect(hub.resolve(ref, download=download))
    if layout == "sparsecircuits":
        from sparsecircuits.dictionaries.formats import load_dictionary

        loaded = Loaded(layout, path, [load_dictionary(path)])
    elif layout == "saelens":
        loaded = saelens.load_saelens(path)
    elif layout == "gemma-scope":
        loaded = gemma_scope.load_gemma_scope_file(path, hook, out_hook)
    elif layout == "dictionary_learning":
        loaded = dictionary_learning.load_dictionary_learning(path)
    elif layout == "dunefsky":
        loaded = dunefsky.load_dunefsky(path, hook, out_hook)
    else:
        loaded = circuit_tracer.load_circuit_tracer(path, download=download)
    return fit_to_model(loaded, model) if model is not None else loaded


# --- listing ----------------------------------------------------------------------------------------------

@dataclass
class DictInfo:
    """One row of `find_dictionaries`: what was found at `path`, read from configs and tensor headers."""

    path: str
    layout: str
    arch: str = ""
    hook: str = ""
    out_hook: str = ""
    width: int | None = None
    d_in: int | None = None
    layer: int | None = None
    count: int = 1  # dictionaries at this path (layers of a set)
    error: str = ""  # why it could not be read, if so

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SKIP_DIRS = {"blobs", "refs", ".git", ".cache", "__pycache__", ".locks"}


def find_dictionaries(root: str | Path, max_depth: int = 8) -> list[DictInfo]:
    """Every dictionary under `root` (a folder, a file, or an HF repo id in the cache), one row each;
    a path that looks like a dictionary but cannot be read gets a row with `error`."""
    from sparsecircuits.dictionaries.layouts.hub import resolve

    root = resolve(root)
    if root.is_file():  # named explicitly: an unreadable file is an error, not a row
        layout, target = detect(root)
        row = _READERS[layout](target)
        row.layer = row.layer if row.layer is not None else hook_layer(row.hook)
        return [row]
    rows: list[DictInfo] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        if len(here.parts) - base_depth >= max_depth:
            dirnames[:] = []
        names = set(filenames)
        if names & {"config.yaml", "cfg.json"} or {"ae.pt", "config.json"} <= names:
            rows.append(_info(here))
            dirnames[:] = []  # a dictionary folder: its files are its own
            continue
        for name in sorted(filenames):
            if name.endswith((".npz", ".pt")) or name == "params.safetensors":
                rows.append(_info(here / name))
    return rows


def _info(path: Path) -> DictInfo:
    try:
        layout, target = detect(path)
        row = _READERS[layout](target)
    except (CheckpointError, ValueError, OSError, KeyError, TypeError) as e:
        return DictInfo(str(path), "?", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
    row.layer = row.layer if row.layer is not None else hook_layer(row.hook)
    return row


def _saelens_info(folder: Path) -> DictInfo:
    from sparsecircuits.dictionaries.layouts.saelens import saelens_arch, saelens_meta

    cfg = read_json(folder / "cfg.json")
    ours = (cfg.get("sparsecircuits") or {}).get("dict_config")
    if ours:
        return DictInfo(str(folder), "sparsecircuits", ours["arch"], ours["hook"], ours.get("out_hook") or ours["hook"],
                        ours["width"], ours["d_in"])
    m = saelens_meta(cfg)
    return DictInfo(str(folder), "saelens", saelens_arch(m, str(folder)), m.get("hook_name", ""),
                    m.get("hook_name_out") or m.get("hook_name", ""), m.get("d_sae"), m.get("d_in"))


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of a .npz from its headers (no data read, no pickle)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            with z.open(name) as f:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
                out[name.removesuffix(".npy")] = tuple(header[0])
    return out


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def _gemma_info(path: Path) -> DictInfo:
    from sparsecircuits.dictionaries.layouts.gemma_scope import hooks_from_path

    shapes = _npz_shapes(path) if path.suffix == ".npz" else _safetensors_shapes(path)
    W = shapes.get("W_enc") or shapes.get("w_enc")
    if W is None or "threshold" not in shapes:
        raise CheckpointError(f"{str(path)!r} is not a Gemma Scope JumpReLU file")
    hooks = hooks_from_path(path) or ("", "")
    return DictInfo(str(path), "gemma-scope", "jumprelu", hooks[0], hooks[1], W[1], W[0])


def _dl_info(folder: Path) -> DictInfo:
    from sparsecircuits.dictionaries.layouts.dictionary_learning import dl_hook

    trainer = read_json(folder / "config.json").get("trainer") or {}
    hook, _ = dl_hook(folder, trainer)
    arch = str(trainer.get("dict_class", "AutoEncoder"))
    return DictInfo(str(folder), "dictionary_learning", arch, hook, hook, trainer.get("dict_size"),
                    trainer.get("activation_dim"))


def _dunefsky_info(path: Path) -> DictInfo:
    from sparsecircuits.dictionaries.layouts.dunefsky import dunefsky_parts, safe_torch_load

    sd, cfg = dunefsky_parts(safe_torch_load(path, mmap=True), path)
    hook = cfg.get("hook_point", "")
    out = cfg.get("out_hook_point") if cfg.get("is_transcoder") else hook
    return DictInfo(str(path), "dunefsky", "relu", hook, out or hook, int(sd["W_enc"].shape[1]), int(sd["W_enc"].shape[0]))


def _ct_info(folder: Path) -> DictInfo:
    from sparsecircuits.dictionaries.layouts.circuit_tracer import layer_files, read_config
    from sparsecircuits.dictionaries.layouts.common import our_hook

    cfg = read_config(folder)
    clt = cfg.get("model_kind") == "cross_layer_transcoder"
    files = sorted(folder.glob("W_enc_*.safetensors")) if clt else layer_files(folder, cfg)
    first = folder / "W_enc_0.safetensors" if clt else Path(files[0])
    shapes = _npz_shapes(first) if first.suffix == ".npz" else _safetensors_shapes(first)
    W = shapes.get("W_enc_0") or shapes.get("W_enc") or shapes.get("w_enc")
    width, d = (W if first.suffix != ".npz" and "w_enc" not in shapes else (W[1], W[0])) if W else (None, None)
    arch = "jumprelu" if {"threshold_0", "activation_function.threshold", "threshold"} & set(shapes) else \
        str(cfg.get("activation") or ("topk" if "k" in shapes else "relu"))
    return DictInfo(str(folder), "circuit-tracer-clt" if clt else "circuit-tracer", arch,
                    _any_layer(our_hook(cfg["feature_input_hook"], 0)), _any_layer(our_hook(cfg["feature_output_hook"], 0)),
                    width, d, count=len(files))


def _any_layer(hook: str) -> str:
    return "blocks.*." + hook[len("blocks.0."):] if hook.startswith("blocks.0.") else hook


_READERS = {"sparsecircuits": _saelens_info, "saelens": _saelens_info, "gemma-scope": _gemma_info,
            "dictionary_learning": _dl_info, "dunefsky": _dunefsky_info, "circuit-tracer": _ct_info,
            "circuit-tracer-clt": _ct_info}
