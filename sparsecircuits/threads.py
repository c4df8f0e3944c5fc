"""How many CPU threads torch uses: one per process unless the user says otherwise.

On the small models this project trains and prunes, a second intra-op thread buys little even on an
idle machine, and on a busy one (other jobs on the same cores) the threads wait on each other and
spin: a prune with two threads on a 2-core machine whose other core was busy burned several times the
CPU of a one-thread prune for a slower result (docs/results.md, "Torch threads"). So every command,
and the Python API when the user has not chosen, runs one thread. The user's choice wins, in order:

  SPARSECIRCUITS_THREADS=N   N threads (0 or "auto": torch's own default, one per physical core);
  OMP_NUM_THREADS / MKL_NUM_THREADS set   left to torch, which reads them;
  torch.set_num_threads(n) before the API is first used   left alone (the API only);
  a command's own --threads flag (training, dictionaries)   applied when that command starts.

`apply_default` imports nothing: before torch is loaded it sets OMP_NUM_THREADS, which torch reads
when it starts its thread pool, so `sparsecircuits --help` and light commands stay torch-free.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "SPARSECIRCUITS_THREADS"
DEFAULT = 1
TORCH_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def requested() -> int | None:
    """Threads to use, or None to leave torch as it is (the user chose through torch's own variables,
    or asked for torch's default). Raises ValueError for a malformed SPARSECIRCUITS_THREADS."""
    value = os.environ.get(ENV, "").strip()
    if value:
        if value.lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{ENV} must be a whole number of threads >= 0 or 'auto', got {value!r}") from None
        if n < 0:
            raise ValueError(f"{ENV} must be a whole number of threads >= 0 or 'auto', got {value!r}")
        return n or None
    if any(os.environ.get(v) for v in TORCH_ENVS):
        return None
    return DEFAULT


def apply_default() -> int | None:
    """Set the thread count `requested` gives (the CLI calls this before a command runs). Returns it,
    or None when torch is left as it is."""
    n = requested()
    if n is None:
        return None
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def apply_default_unless_set() -> int | None:
    """`apply_default` for the Python API: also leaves torch alone when its thread count is no longer
    the one torch starts with (the user called `torch.set_num_threads`). Imports torch."""
    import torch

    if os.environ.get(ENV, "").strip() or torch.get_num_threads() == torch_default_threads():
        return apply_default()
    return None


def torch_default_threads() -> int:
    """The intra-op thread count torch starts with when no variable sets it: one per physical core
    this process may run on (Linux topology files; elsewhere the logical CPU count)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))
