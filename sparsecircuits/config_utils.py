"""Helpers shared by the config dataclasses: `opt` declares a field together with its help text.

The CLI reads `field.metadata["help"]` to build `--flag` help strings, so every config field is
declared as `name: type = opt(default, "what it is, with units and range")`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and a one-line help string in `metadata["help"]`.

    Mutable defaults (lists, dicts, sets: anything unhashable) become a `default_factory` that
    returns a fresh deep copy, so instances never share them. Extra keyword arguments go to
    `dataclasses.field`; a `metadata` mapping passed there is merged with the help string.
    """
    metadata = {**dict(kw.pop("metadata", None) or {}), "help": help}
    if type(default).__hash__ is None:
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


def require_at_least(cfg: Any, minimum: int, *names: str) -> None:
    """Raise a ValueError naming the first of `cfg`'s fields `names` that is below `minimum`."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ValueError(f"{type(cfg).__name__}.{name} must be >= {minimum}, got {value}")
