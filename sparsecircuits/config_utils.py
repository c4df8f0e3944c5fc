"""Helpers shared by the config dataclasses: `opt` declares a field together with its help text;
`config_diff` lists the fields in which two configs differ (for resume checks).

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


def config_diff(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """Fields that differ between two dataclass configs, as 'name: a -> b' strings."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if k not in ignore and da[k] != db.get(k)]


def numbers(cfg: Any, name: str, kind: type) -> tuple[Any, ...]:
    """Field `name` of a config as a tuple of `kind` (CLI flags arrive as strings, JSON as lists); a
    value that is not a number is an error naming the field, not a bare int()/float() message."""
    values = getattr(cfg, name)
    try:
        return tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{type(cfg).__name__}.{name} must be {kind.__name__} numbers, got {list(values)}") from None
