"""A fixed CPU workload measured in the same run as a benchmark, so results from different machines
can be compared: report `seconds / yardstick` next to the seconds.

The machines this project runs on differ by up to ~1.6x in speed (docs/results.md, 2026-11-21 vs
2026-12-03), which moves every absolute timing by as much as a real code change would. The
yardstick is plain torch, independent of this package's code (a change to the package never moves
it), one thread, with the op mix of a pruning gate step on the shipped 4-layer d_model-128 model:
for 16 x 32 tokens, a 128 -> 512 matrix product, exact GELU, AbsTopK (`topk` of |x|, k = d/4, and
a scatter) over 512 and over 128 channels, a 512 -> 128 product, and the backward of all of it.
Never change it: a changed yardstick breaks the comparison with every earlier result.
"""

from __future__ import annotations

import statistics
import time

import torch

ITERATIONS = 40  # one repeat: ~0.5 s on the 2026-12-03 CPU


def _abs_topk(x: torch.Tensor) -> torch.Tensor:
    idx = x.abs().topk(x.shape[-1] // 4, dim=-1, sorted=False).indices
    return x * torch.zeros_like(x).scatter_(-1, idx, 1.0)


def yardstick_seconds(repeats: int = 5) -> float:
    """Median seconds of one repeat of the fixed workload (one torch thread; restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        w_in = torch.randn(512, 128, generator=g) / 128**0.5
        w_out = torch.randn(128, 512, generator=g) / 512**0.5
        x0 = torch.randn(16, 32, 128, generator=g)
        times = []
        for _ in range(repeats + 1):  # the first repeat warms up and is dropped
            t0 = time.perf_counter()
            for _ in range(ITERATIONS):
                x = x0.clone().requires_grad_(True)
                h = _abs_topk(torch.nn.functional.gelu(torch.nn.functional.linear(_abs_topk(x), w_in)))
                torch.nn.functional.linear(h, w_out).square().mean().backward()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])
    finally:
        torch.set_num_threads(threads)
