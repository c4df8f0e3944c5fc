"""A counter of forward/backward passes, shared by benchmarks/discovery.py and the auto-circuit driver
(which runs in its own venv: it imports this file from its own folder, so it needs only torch).
Works on any module with `.blocks` (our `Transformer`, TransformerLens' `HookedTransformer`)."""

from __future__ import annotations

import torch


class Passes:
    """Counts forward passes (calls of the model), the blocks they ran (a pass resumed at layer l runs
    L - l of them: `forward_equivalents` = blocks / L) and the passes with autograd on (each followed
    by one backward)."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.forwards = self.backwards = self.blocks = 0
        self.handles = [model.register_forward_pre_hook(self._forward)]
        self.handles += [b.register_forward_pre_hook(self._block) for b in model.blocks]

    def _forward(self, module, args) -> None:  # noqa: ANN001
        self.forwards += 1
        self.backwards += int(torch.is_grad_enabled())

    def _block(self, module, args) -> None:  # noqa: ANN001
        self.blocks += 1

    def now(self, n_layers: int) -> dict:
        return {"forwards": self.forwards, "backwards": self.backwards, "forward_equivalents": self.blocks / n_layers}

    def result(self, n_layers: int) -> dict:
        for h in self.handles:
            h.remove()
        return self.now(n_layers)
