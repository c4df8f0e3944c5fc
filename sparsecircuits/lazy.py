"""Lazy re-exports for a package's `__init__` (PEP 562): a name is imported from its module on first
use. Importing one light module of a package (its torch-free `config`) then does not run the rest of
the package, which is what lets `sparsecircuits --help` start without torch.

    __getattr__, __dir__ = lazy_exports(__name__, {"config": ("ModelConfig",), "transformer": ("Transformer",)})

List the same names under `if TYPE_CHECKING:` imports and in `__all__`, so editors and type checkers
see them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package` for `exports` (submodule -> names)."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return __getattr__, __dir__
