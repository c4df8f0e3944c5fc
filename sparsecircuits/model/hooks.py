"""Hook points: a named identity at every activation, and scoped ways to read or change it.

A `HookPoint` is an identity module. `HookedModule.setup_hooks()` names every hook point after its
module path (`blocks.0.attn.hook_q`), so names are never typed by hand. Hooks are only ever added
through context managers (`hooks()`, `run_with_cache()`), which remove them in a `finally` block,
also when the hooked run raises. All state lives on the model's own HookPoint instances (there is no
global registry), so two models, or nested contexts on one model, never interfere.

A hook function has the TransformerLens signature `fn(activation, hook) -> activation | None`:
returning a tensor replaces the activation, returning None keeps it. With no hook set a HookPoint
costs one attribute check.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
# A hook target: one exact name, or a predicate over names (applied to every hook point).
HookTarget = str | Callable[[str], bool]


class HookPoint(nn.Module):
    """Identity on the forward pass; runs the functions currently attached to it."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # set by HookedModule.setup_hooks()
        self._fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        """True when at least one hook function is attached (lets callers skip optional work)."""
        return bool(self._fns)

    def forward(self, x: Tensor) -> Tensor:
        if not self._fns:
            return x
        for fn in list(self._fns):
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook on {self.name!r} must return None or a tensor of shape {tuple(x.shape)}, got {got}"
                    )
                x = out
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


@dataclass
class ActivationCache:
    """Activations recorded by `run_with_cache`, keyed by hook name."""

    activations: dict[str, Tensor]

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.activations:
            raise KeyError(_unknown_name_message(name, self.activations.keys(), "cached"))
        return self.activations[name]

    def __contains__(self, name: object) -> bool:
        return name in self.activations

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def keys(self) -> Iterable[str]:
        return self.activations.keys()


def _unknown_name_message(name: str, known: Iterable[str], what: str) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"no {what} hook point named {name!r}{hint} ({len(known)} {what} hook points exist)"


class HookedModule(nn.Module):
    """Base class for models with hook points. Call `setup_hooks()` at the end of `__init__`."""

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    @property
    def hook_points(self) -> dict[str, HookPoint]:
        """All hook points by name, in module registration order."""
        return self._hook_points

    def resolve_hook_names(self, target: HookTarget) -> list[str]:
        """Names matched by a target; an unknown exact name raises a ValueError naming close matches."""
        if callable(target):
            return [n for n in self._hook_points if target(n)]
        if target not in self._hook_points:
            raise ValueError(_unknown_name_message(target, self._hook_points, "model"))
        return [target]

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[HookTarget, HookFn]] = ()) -> Iterator[HookedModule]:
        """Attach forward hooks for the duration of the `with` block; always removed afterwards."""
        attached: list[tuple[HookPoint, HookFn]] = []
        try:
            for target, fn in fwd_hooks:
                for name in self.resolve_hook_names(target):
                    point = self._hook_points[name]
                    point._fns.append(fn)
                    attached.append((point, fn))
            yield self
        finally:
            for point, fn in reversed(attached):
                # Remove by identity, the last occurrence: nested contexts may attach the same fn.
                for i in range(len(point._fns) - 1, -1, -1):
                    if point._fns[i] is fn:
                        del point._fns[i]
                        break

    def run_with_cache(
        self,
        *args: Any,
        names_filter: HookTarget | Iterable[str] | None = None,
        detach: bool = True,
        fwd_hooks: Iterable[tuple[HookTarget, HookFn]] = (),
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """Run the model and record the activations at the hook points selected by `names_filter`.

        `names_filter` is None (all), one name, a predicate, or a list of names. `detach=False`
        keeps the autograd graph so cached activations can be differentiated through. Extra
        `fwd_hooks` run before caching, so the cache holds the (possibly edited) activation.
        """
        if names_filter is None:
            names = list(self._hook_points)
        elif isinstance(names_filter, str) or callable(names_filter):
            names = self.resolve_hook_names(names_filter)
        else:
            names = [n for target in names_filter for n in self.resolve_hook_names(target)]
        store: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            store[hook.name] = x.detach() if detach else x

        all_hooks = list(fwd_hooks) + [(name, save) for name in names]
        with self.hooks(all_hooks):
            out = self(*args, **kwargs)
        return out, ActivationCache(store)


__all__ = ["HookPoint", "HookedModule", "ActivationCache", "HookFn", "HookTarget"]
