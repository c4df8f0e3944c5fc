"""What a Hugging Face checkpoint offers the loader: its config keys and its tensors, checked.

`HFConfig` reads `config.json` values by their (possibly several historical) key names and names
the file and key when a required one is missing. `TensorSource` hands out tensors by Hugging Face
name, checking each shape against what our config implies; it collects every problem (missing
tensor, wrong shape, tensor nobody asked for) and `finish()` raises them all in one
`PretrainedLoadError`, so a mismatched checkpoint is diagnosed in one go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.model.checkpoint import CheckpointError

_MISSING = object()


class PretrainedLoadError(CheckpointError):
    """A pretrained (Hugging Face) checkpoint cannot be found, is unsupported, or does not fit its config."""


class HFConfig:
    """Read-only view of a Hugging Face `config.json` dict with clear errors for missing keys."""

    def __init__(self, values: dict[str, Any], origin: str) -> None:
        self.values, self.origin = values, origin

    @property
    def model_type(self) -> str:
        return str(self.get("model_type"))

    def get(self, *keys: str, default: Any = _MISSING) -> Any:
        """The value of the first key present and not null; `default` if none is (error if no default)."""
        for key in keys:
            if self.values.get(key) is not None:
                return self.values[key]
        if default is _MISSING:
            raise PretrainedLoadError(f"{self.origin} has no {' / '.join(keys)}")
        return default

    def rope(self) -> dict[str, Any]:
        """Rotary parameters in one dict: `rope_parameters` (transformers >= 5) merged over the older
        top-level `rope_theta` / `rope_scaling` / `partial_rotary_factor` keys."""
        merged: dict[str, Any] = {}
        for key in ("rope_theta", "partial_rotary_factor"):
            if self.values.get(key) is not None:
                merged[key] = self.values[key]
        merged.update(self.values.get("rope_scaling") or {})
        merged.update(self.values.get("rope_parameters") or {})
        merged.setdefault("rope_type", merged.get("type", "default"))
        return merged

    def unsupported(self, what: str) -> PretrainedLoadError:
        return PretrainedLoadError(f"{self.origin}: {what} is not supported")


class TensorSource:
    """Tensors of one checkpoint by Hugging Face name (base-model prefix such as `model.` stripped)."""

    def __init__(self, tensors: dict[str, Tensor], origin: str, prefix: str, ignore: Iterable[str] = ()) -> None:
        self.origin = origin
        has_prefix = any(k.startswith(prefix) for k in tensors)
        self.tensors = {k[len(prefix):] if has_prefix and k.startswith(prefix) else k: v for k, v in tensors.items()}
        self.ignore = [re.compile(p) for p in ignore]  # buffers old checkpoints saved (masks, inv_freq)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.wrong: list[str] = []

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, names: str | tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        """The tensor `names` (or the first present of several aliases), expected to have `shape`;
        a problem is recorded and zeros stand in."""
        aliases = (names,) if isinstance(names, str) else names
        name = next((n for n in aliases if n in self.tensors), aliases[0])
        self.used.add(name)
        if name not in self.tensors:
            self.missing.append(name)
        elif tuple(self.tensors[name].shape) != tuple(shape):
            self.wrong.append(f"{name}: checkpoint {tuple(self.tensors[name].shape)} vs config {tuple(shape)}")
        else:
            return self.tensors[name]
        return torch.zeros(shape)

    def skip(self, names: str | tuple[str, ...]) -> None:
        """Mark tensors as known but not needed (e.g. an lm_head equal to the tied embedding)."""
        self.used.update((names,) if isinstance(names, str) else names)

    def finish(self) -> None:
        unexpected = sorted(
            k for k in self.tensors if k not in self.used and not any(p.fullmatch(k) for p in self.ignore)
        )
        problems = []
        if self.missing:
            problems.append(f"missing tensors: {', '.join(self.missing)}")
        if self.wrong:
            problems.append("shapes that do not match config.json: " + "; ".join(self.wrong))
        if unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
        if problems:
            raise PretrainedLoadError(f"{self.origin} does not fit its config: " + " | ".join(problems))
