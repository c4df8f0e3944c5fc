"""Dunefsky et al. (2024) GPT-2 transcoders and SAEs (jacobdunefsky/transcoder_circuits, published as
e.g. `final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_24576.pt`).

The file is `torch.save({"cfg": <LanguageModelSAERunnerConfig>, "state_dict": {...}})`: tensors
`W_enc [d_in, F]`, `b_enc [F]`, `W_dec [F, d_out]`, `b_dec [d_in]`, and for transcoders `b_dec_out
[d_out]`; the config object holds `hook_point`, `out_hook_point`, `is_transcoder`, `d_in`, `d_out`.
It is read only with `torch.load(weights_only=True)`; the config's class, which that refuses, is
replaced by an inert stub that just holds the pickled attributes (no code from the file runs).

Their forward: f = ReLU((x − b_dec)·W_enc + b_enc), ŷ = f·W_dec + b_dec_out (transcoders) or + b_dec
(SAEs); the subtraction is folded into b_enc. Their hooks are TransformerLens names on GPT-2 loaded
with `fold_ln=True`, so `ln2.hook_normalized` is before the LayerNorm's gain and bias;
`fit_to_model` rewrites the encoder for ours. When the pickled config lacks the hook, it is read
from the file name.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.dictionaries.base import DictConfig
from sparsecircuits.dictionaries.layouts.common import TL_FOLDED, Loaded, our_hook, to_float
from sparsecircuits.model.checkpoint import CheckpointError


class _Stub:
    """Inert stand-in for a class named in a pickle: holds the pickled state, runs no code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_HOOK_IN_NAME = re.compile(r"(blocks\.\d+\.[\w.]+?)_\d+\.pt$")


def safe_torch_load(path: Path, max_stubs: int = 16, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)`, with classes outside torch's allowlist replaced by inert stubs
    (so a pickled config object loads as plain attributes; no code from the file ever runs); `mmap`
    maps the tensors instead of reading them (for listing shapes)."""
    stubs: dict[str, type] = {}
    for _ in range(max_stubs + 1):
        try:
            with torch.serialization.safe_globals(list(stubs.values())):
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            m = _UNSAFE_GLOBAL.search(str(e))
            if not m:  # not a pickle torch.save wrote: say what the unpickler tripped on, not torch's advice
                why = str(e).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
                raise CheckpointError(f"cannot load {str(path)!r} safely: torch.load(weights_only=True) cannot read "
                                      f"it ({' '.join(why.split()) or type(e).__name__})") from None
            if m.group(1) in stubs:
                raise CheckpointError(f"cannot load {str(path)!r} safely: {m.group(0)}") from None
            module, _, qual = m.group(1).rpartition(".")
            stubs[m.group(1)] = type(qual, (_Stub,), {"__module__": module, "__qualname__": qual})
        except FileNotFoundError:
            raise CheckpointError(f"file {str(path)!r} does not exist") from None
        except (RuntimeError, OSError, EOFError) as e:
            if mmap and "mmap" in str(e):  # an old (non-zip) torch file: read it whole instead
                return safe_torch_load(path, max_stubs, mmap=False)
            raise CheckpointError(f"cannot read {str(path)!r} as a torch file ({e})") from None
    raise CheckpointError(f"{str(path)!r} references more than {max_stubs} unknown classes")


def dunefsky_parts(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, config attributes) of a loaded Dunefsky et al. file."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "W_enc" not in sd:
        raise CheckpointError(f"{str(path)!r} holds no state_dict with W_enc (not a Dunefsky et al. dictionary)")
    cfg = obj.get("cfg") if isinstance(obj, dict) else None
    cfg = vars(cfg) if isinstance(cfg, _Stub) else cfg if isinstance(cfg, dict) else {}
    return sd, cfg


def load_dunefsky(path: Path, hook: str = "", out_hook: str = "") -> Loaded:
    """A Dunefsky et al. `.pt` file; see the module docstring."""
    from sparsecircuits.dictionaries.formats import build_dictionary

    path = Path(path)
    sd, cfg = dunefsky_parts(safe_torch_load(path), path)
    named = _HOOK_IN_NAME.search(path.name)
    hook = hook or cfg.get("hook_point") or (named.group(1) if named else "")
    if not hook:
        raise CheckpointError(f"{str(path)!r}: the hook is recorded neither in the file nor in its name; give it")
    transcoder = bool(cfg.get("is_transcoder", "b_dec_out" in sd))
    out_hook = out_hook or (cfg.get("out_hook_point") if transcoder else None) or ""
    if transcoder and not out_hook and hook.endswith("ln2.hook_normalized"):
        out_hook = hook.replace("ln2.hook_normalized", "hook_mlp_out")  # their MLP transcoders
    sd = to_float({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})
    W_enc, b_dec_in = sd["W_enc"], sd["b_dec"]
    b_out = sd.get("b_dec_out")
    t = {"W_enc": W_enc, "W_dec": sd["W_dec"], "b_enc": sd["b_enc"] - b_dec_in @ W_enc,
         "b_dec": b_out if b_out is not None else b_dec_in}
    dc = DictConfig(arch="relu", hook=our_hook(hook), out_hook=our_hook(out_hook or hook), d_in=int(W_enc.shape[0]),
                    d_out=int(t["W_dec"].shape[1]), width=int(W_enc.shape[1]))
    notes = ["b_dec subtraction folded into b_enc"]
    return Loaded("dunefsky", path, [build_dictionary(dc, t, str(path))], notes=notes, norm_input=TL_FOLDED)
