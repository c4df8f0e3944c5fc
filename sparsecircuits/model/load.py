"""Load pretrained Hugging Face checkpoints onto our one `Transformer` (no `transformers` at run time).

Steps of `load_pretrained(name_or_path)`:
1. Resolve the folder (`resolve_model`): a local folder; else a model name (`org/name`) found in the
   Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, layout
   `models--org--name/snapshots/<revision>/`, the revision `refs/main` points to when present); else,
   only when `download=True`, `huggingface_hub` is installed and `HF_HUB_OFFLINE` is not set, download
   the config, tokenizer and weights (safetensors preferred) into that cache.
2. Read `config.json` and pick the family from its `model_type` (`hf_families.FAMILIES`).
3. Read the weights: `model.safetensors`, or shards listed in `model.safetensors.index.json`; a
   `pytorch_model.bin` (or its index) only through `torch.load(weights_only=True)` — nothing else is
   ever unpickled.
4. Map the tensors onto our names with the family's mapping, checking every shape against the
   config, and report all missing / mis-shaped / unexpected tensors in one `PretrainedLoadError`.
5. Build the model on the meta device and assign the tensors (no random initialisation of billions
   of weights, no second copy), then move it to `device`.
6. Load `tokenizer.json` with the `tokenizers` library when present. Llama/Gemma tokenizers add the
   BOS token themselves on `encode`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.hf_families import FAMILIES, Family, supported, to_float
from sparsecircuits.model.hf_source import HFConfig, PretrainedLoadError, TensorSource
from sparsecircuits.model.transformer import Transformer

__all__ = ["Pretrained", "PretrainedLoadError", "load_pretrained", "resolve_model", "read_hf_tensors",
           "build_model", "hf_cache_dir", "FAMILIES"]

SAFE, SAFE_INDEX, BIN, BIN_INDEX = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


@dataclass
class Pretrained:
    """What `load_pretrained` returns."""

    model: Transformer
    tokenizer: Tokenizer | None  # from tokenizer.json, None when the folder has none
    path: Path  # the resolved checkpoint folder
    family: str  # the Hugging Face model_type
    hf_config: dict[str, Any]  # the raw config.json


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, following huggingface_hub's environment variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def _cached_snapshot(name: str) -> Path | None:
    repo = hf_cache_dir() / f"models--{name.replace('/', '--')}"
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip() / "config.json").is_file():
        return snapshots / ref.read_text().strip()
    found = [p for p in snapshots.glob("*") if (p / "config.json").is_file()] if snapshots.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _download(name: str) -> Path:
    import huggingface_hub  # optional; only imported when a download is really wanted

    base = ["config.json", "tokenizer.json", "generation_config.json"]
    try:
        folder = Path(huggingface_hub.snapshot_download(name, allow_patterns=[*base, "*.safetensors", SAFE_INDEX]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(huggingface_hub.snapshot_download(name, allow_patterns=[*base, "pytorch_model*.bin", BIN_INDEX]))
    except Exception as e:  # network, authentication and not-found errors all end the same way
        raise PretrainedLoadError(f"could not download {name!r} from the Hugging Face hub: {e}") from None
    return folder


def resolve_model(name_or_path: str | Path, *, download: bool = True) -> Path:
    """The checkpoint folder for a local path or a hub model name; see the module docstring."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PretrainedLoadError(f"{str(path)!r} has no config.json: not a Hugging Face checkpoint folder")
        return path
    name = str(name_or_path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if not looks_like_path:
        cached = _cached_snapshot(name)
        if cached is not None:
            return cached
    why = "no such folder"
    if not looks_like_path:
        why = f"no such folder, and not in the Hugging Face cache {str(hf_cache_dir())!r}"
        if download and not _offline():
            try:
                return _download(name)
            except ImportError:
                why += "; huggingface_hub is not installed, so it was not downloaded"
        else:
            why += "; not downloaded (" + ("HF_HUB_OFFLINE is set" if download else "download=False") + ")"
    raise PretrainedLoadError(f"model {name!r}: {why}")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise PretrainedLoadError(f"cannot read {str(path)!r}: truncated or not a safetensors file ({e})") from None


def _read_bin(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for non-tensor pickles, RuntimeError for corrupt zips
        raise PretrainedLoadError(
            f"cannot read {str(path)!r} with torch.load(weights_only=True) (no other unpickling is done): {e}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedLoadError(f"{str(path)!r} does not hold a plain state dict of tensors")
    return state


def _read_index(folder: Path, index: str, read: Any) -> dict[str, Tensor]:
    try:
        weight_map = json.loads((folder / index).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PretrainedLoadError(f"{str(folder / index)!r} is not a valid shard index ({e})") from None
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not (folder / s).is_file()]
    if absent:
        raise PretrainedLoadError(f"{str(folder)!r}: shards listed in {index} are missing: {', '.join(absent)}")
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        tensors.update(read(folder / shard))
    return tensors


def read_hf_tensors(folder: Path) -> dict[str, Tensor]:
    """All weight tensors of a checkpoint folder (safetensors preferred; see the module docstring)."""
    folder = Path(folder)
    if (folder / SAFE).is_file():
        return _read_safetensors(folder / SAFE)
    if (folder / SAFE_INDEX).is_file():
        return _read_index(folder, SAFE_INDEX, _read_safetensors)
    if (folder / BIN).is_file():
        return _read_bin(folder / BIN)
    if (folder / BIN_INDEX).is_file():
        return _read_index(folder, BIN_INDEX, _read_bin)
    raise PretrainedLoadError(
        f"{str(folder)!r} has no weights: expected {SAFE}, {SAFE_INDEX}, {BIN} or {BIN_INDEX}; "
        f"found {sorted(p.name for p in folder.iterdir())}"
    )


def build_model(cfg: ModelConfig, state: dict[str, Tensor], device: str | torch.device = "cpu") -> Transformer:
    """A `Transformer` holding exactly `state` (our names), built without random initialisation."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))
        raise PretrainedLoadError(f"mapped weights do not fit ModelConfig (a loader bug): {diff[:10]}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device)


def _family(hf: HFConfig) -> Family:
    model_type = hf.get("model_type", default=None)
    archs = hf.get("architectures", default=[])
    if model_type not in FAMILIES:
        raise PretrainedLoadError(
            f"{hf.origin}: model_type {model_type!r} (architectures {archs}) is not supported; supported: {supported()}"
        )
    family = FAMILIES[model_type]
    wrong = [a for a in archs if a not in family.architectures]
    if wrong:
        raise PretrainedLoadError(
            f"{hf.origin}: architecture {wrong} is not supported for model_type {model_type!r}; "
            f"supported: {list(family.architectures)}"
        )
    return family


def load_pretrained(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n_ctx: int | None = None,
    download: bool = True,
) -> Pretrained:
    """Load a Hugging Face checkpoint (folder or hub name) as a `Transformer` plus its tokenizer.

    `dtype` is the parameter precision (float32 by default, whatever the checkpoint stores).
    `n_ctx` caps the context length (smaller rotary tables / position embedding than the config's
    `max_position_embeddings`, which is 131072 for Llama 3.1).
    """
    folder = resolve_model(name_or_path, download=download)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PretrainedLoadError(f"cannot read {str(folder / 'config.json')!r}: {e}") from None
    hf = HFConfig(raw, str(folder / "config.json"))
    family = _family(hf)
    try:
        cfg = family.config(hf)
    except PretrainedLoadError:
        raise
    except (TypeError, ValueError) as e:  # ModelConfig validation, or a config value of the wrong type
        raise PretrainedLoadError(f"{hf.origin} gives an invalid model config: {e}") from None
    src = TensorSource(read_hf_tensors(folder), str(folder), family.prefix, family.ignore)
    state = family.weights(src, cfg)
    src.finish()
    if n_ctx is not None and n_ctx < cfg.n_ctx:
        cfg = dataclasses.replace(cfg, n_ctx=n_ctx)
        if "W_pos" in state:
            state["W_pos"] = state["W_pos"][:n_ctx]
    model = build_model(cfg, to_float(state, dtype), device)
    tok_path = folder / "tokenizer.json"
    tokenizer = None
    if tok_path.is_file():
        from sparsecircuits.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_path)
    return Pretrained(model, tokenizer, folder, family.model_type, raw)
