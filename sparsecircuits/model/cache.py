"""Reading activations from a forward pass: `cache_until` records the activations at some hooks and
stops the pass after the last of them (the `run_with_cache` of TransformerLens, cut short)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.transformer import Transformer


class _StopForward(Exception):
    """Raised by the hook after the last one needed, to skip the rest of the forward pass."""


def cache_until(model: Transformer, tokens: Tensor, hooks: Sequence[str],
                fwd_hooks: Sequence[tuple[str, HookFn]] = (), **forward: Any) -> dict[str, Tensor]:
    """Activations at `hooks`, running the model only up to the last of them (later layers, the
    unembedding and the bigram table are skipped: 2-4x less work for early hooks). `fwd_hooks`
    (e.g. masks) run during the pass, before the activations are saved; `forward` goes to the
    model's forward (e.g. `packed=`)."""
    order = model.execution_order()
    for h in hooks:  # unknown names: a clear error, not a failed lookup below
        model.resolve_hook_names(h)
    last = max(hooks, key=order.index)
    store: dict[str, Tensor] = {}

    def save(x: Tensor, hook: HookPoint) -> None:
        store[hook.name] = x.detach()

    def stop(x: Tensor, hook: HookPoint) -> None:
        raise _StopForward

    # Hooks on one point run in the order given, so `last` is saved before the stop fires.
    try:
        with model.hooks(list(fwd_hooks) + [(h, save) for h in hooks] + [(last, stop)]):
            model(tokens, **forward)
    except _StopForward:
        pass
    return store
