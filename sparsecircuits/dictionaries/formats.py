"""Dictionary files: our SAELens-layout folders, and loaders for the formats other tools publish.

* **Ours = SAELens layout** (`save_dictionary` / `load_dictionary`): a folder with `cfg.json`
  (`architecture`, `d_in`, `d_sae`, `hook_name`, `apply_b_dec_to_input: false`, ...; SAELens' keys,
  plus a `sparsecircuits` block with our full `DictConfig`) and `sae_weights.safetensors` holding
  `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`, `b_enc`, `b_dec`, and `threshold` for JumpReLU and
  BatchTopK (saved as JumpReLU), `W_skip` for skip transcoders. Training-time input normalisation
  is folded into the weights before saving (`fold_scaling`), so files work on raw activations.
* **SAELens folders** written by SAELens: `standard` → relu, `topk`, `jumprelu`, and the transcoder
  variants; `apply_b_dec_to_input: true` is folded into the encoder bias
  (b_enc ← b_enc − b_dec·W_enc), which gives identical outputs.
* **circuit-tracer transcoder sets** (`load_transcoder_set`): `config.yaml` (`feature_input_hook`,
  `feature_output_hook`, a `transcoders` list of per-layer files) parsed by a tiny YAML-subset reader;
  per-layer safetensors with `W_enc [d_sae, d_model]` (transposed on load), `W_dec`, `b_enc`,
  `b_dec`, optional `activation_function.threshold` (JumpReLU), `k` (TopK) and `W_skip`.
* **Gemma Scope** JumpReLU `params.npz` (`W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`) or
  safetensors (the same keys, or Gemma Scope 2's lowercase `w_enc`/`w_dec` and
  `affine_skip_connection`), loaded without pickle (`np.load(allow_pickle=False)`).
* **Dunefsky et al. GPT-2 transcoders** are pickles: only `convert_pickle` reads them, explicitly,
  with `torch.load(weights_only=True)`; unknown classes (their config object) become inert stubs.
Nothing here unpickles implicitly; every malformed file raises `CheckpointError` naming it.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.dictionaries.base import DictConfig, Dictionary, make_dictionary
from sparsecircuits.model.checkpoint import CheckpointError, read_json, read_tensors

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
FORMAT = "sparsecircuits-dictionary-v1"
# Our architecture -> SAELens architecture name (SAE, transcoder).
_SAELENS_NAMES = {"relu": ("standard", "transcoder"), "topk": ("topk", "topk_transcoder"),
                  "batchtopk": ("jumprelu", "jumprelu_transcoder"), "jumprelu": ("jumprelu", "jumprelu_transcoder")}
_FROM_SAELENS = {"standard": "relu", "transcoder": "relu", "skip_transcoder": "relu", "topk": "topk",
                 "topk_transcoder": "topk", "jumprelu": "jumprelu", "jumprelu_transcoder": "jumprelu",
                 "jumprelu_skip_transcoder": "jumprelu"}


@torch.no_grad()
def fold_scaling(d: Dictionary, scale_in: float, scale_out: float) -> Dictionary:
    """A copy of `d`, trained on x·scale_in predicting y·scale_out, that works on raw x and y.

    pre = (s_in x) W_enc + b_enc, so W_enc ← s_in W_enc (pre-activations and thresholds unchanged);
    ŷ = (z W_dec + b_dec + s_in x W_skipᵀ) / s_out, so W_dec, b_dec ← / s_out, W_skip ← s_in/s_out W_skip.
    """
    out = copy.deepcopy(d)
    out.W_enc.mul_(scale_in)
    out.W_dec.div_(scale_out)
    out.b_dec.div_(scale_out)
    if out.W_skip is not None:
        out.W_skip.mul_(scale_in / scale_out)
    return out


def save_dictionary(d: Dictionary, folder: Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `d` (raw units; see `fold_scaling`) as a SAELens folder, atomically."""
    from sparsecircuits.atomic import atomic_dir

    cfg = d.cfg
    sae_name, tc_name = _SAELENS_NAMES[cfg.arch]
    arch = tc_name if cfg.is_transcoder else sae_name
    if cfg.is_transcoder and cfg.skip:
        arch = "skip_transcoder" if cfg.arch == "relu" else arch.replace("_transcoder", "_skip_transcoder")
    tensors = {"W_enc": d.W_enc, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
    threshold = d.threshold_vector()
    if threshold is not None:
        tensors["threshold"] = threshold
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip
    meta = dict(meta or {})
    hooks = {"hook_name": cfg.hook, **({"hook_name_out": cfg.out_hook} if cfg.is_transcoder else {})}
    out_cfg: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.width, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        **hooks,
        # sae_lens_version names the config layout we write (SAELens >= 6), not a dependency.
        "metadata": {**hooks, "model_name": meta.get("model_name", "sparsecircuits"), "hook_head_index": None,
                     "sae_lens_version": "6.0.0", "sae_lens_training_version": None,
                     "context_size": meta.get("context_size"), "prepend_bos": False},
        "sparsecircuits": {"format": FORMAT, "dict_config": _cfg_dict(cfg), **meta},
    }
    if cfg.is_transcoder:
        out_cfg["d_out"] = cfg.d_out
    if d.uses_k:
        out_cfg["k"] = cfg.k
    with atomic_dir(Path(folder)) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / CFG).write_text(json.dumps(out_cfg, indent=2))
    return Path(folder)


def _cfg_dict(cfg: DictConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("arch", "hook", "out_hook", "d_in", "d_out", "width", "k", "skip")}


def build_dictionary(cfg: DictConfig, tensors: dict[str, Tensor], source: str) -> Dictionary:
    """A dictionary from SAELens-layout tensors, after checking every name and shape."""
    F, d_in, d_out = cfg.width, cfg.d_in, cfg.d_out
    expected = {"W_enc": (d_in, F), "W_dec": (F, d_out), "b_enc": (F,), "b_dec": (d_out,)}
    d = make_dictionary(cfg)
    if d.has_threshold:
        expected["threshold"] = (F,)
    if cfg.skip:
        expected["W_skip"] = (d_out, d_in)
    problems = [f"missing {k} {v}" for k, v in expected.items() if k not in tensors]
    problems += [f"{k}: file {tuple(tensors[k].shape)} vs expected {v}" for k, v in expected.items()
                 if k in tensors and tuple(tensors[k].shape) != v]
    if problems:
        raise CheckpointError(f"{source} does not fit a {cfg.arch} dictionary of width {F} on "
                              f"{d_in} -> {d_out}: " + "; ".join(problems))
    with torch.no_grad():
        for k in ("W_enc", "W_dec", "b_enc", "b_dec") + (("W_skip",) if cfg.skip else ()):
            getattr(d, k).copy_(tensors[k].float())
        if d.has_threshold:
            d.load_threshold(tensors["threshold"].float())
    return d.eval()


def load_dictionary(folder: Path) -> Dictionary:
    """Load a SAELens-layout folder (ours or SAELens'); see the module docstring."""
    folder = Path(folder)
    if folder.is_file() or not (folder / CFG).exists():
        raise CheckpointError(f"{str(folder)!r} is not a dictionary folder (no {CFG}); "
                              "circuit-tracer sets: load_transcoder_set; Gemma Scope: load_gemma_scope")
    cfg = read_json(folder / CFG)
    tensors = read_tensors(folder / WEIGHTS)
    ours = cfg.get("sparsecircuits", {})
    try:
        if ours.get("format") == FORMAT:
            return build_dictionary(DictConfig(**ours["dict_config"]), tensors, str(folder / WEIGHTS))
        return _from_saelens(cfg, tensors, str(folder / WEIGHTS))
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{str(folder / CFG)!r} is not a valid dictionary config: {e}") from None


def _from_saelens(cfg: dict[str, Any], tensors: dict[str, Tensor], source: str) -> Dictionary:
    arch_name = cfg.get("architecture", "standard")
    if arch_name not in _FROM_SAELENS:
        raise CheckpointError(f"{source}: SAELens architecture {arch_name!r} is not supported "
                              f"(supported: {sorted(_FROM_SAELENS)})")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise CheckpointError(f"{source}: normalize_activations={norm!r} is not supported; fold the scaling first")
    meta = cfg.get("metadata") or {}
    hook = cfg.get("hook_name") or meta.get("hook_name")
    out_hook = cfg.get("hook_name_out") or meta.get("hook_name_out") or hook
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 1)
    t = dict(tensors)
    d_in, width = t["W_enc"].shape
    dc = DictConfig(arch=_FROM_SAELENS[arch_name], hook=hook, out_hook=out_hook, d_in=int(d_in),
                    d_out=int(t["W_dec"].shape[1]), width=int(width), k=k, skip="W_skip" in t)
    if cfg.get("apply_b_dec_to_input", False):
        if dc.d_in != dc.d_out:
            raise CheckpointError(f"{source}: apply_b_dec_to_input needs d_in == d_out")
        t["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
    return build_dictionary(dc, t, source)


# --- circuit-tracer transcoder sets ----------------------------------------------------------------

def parse_simple_yaml(text: str) -> dict[str, Any]:
    """The YAML subset of circuit-tracer configs: `key: scalar` lines and `key:` followed by
    `- item` lines (scalars or one-line `{layer: path}`-free scalars); comments and quotes allowed."""
    out: dict[str, Any] = {}
    current: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = re.match(r"^\s*-\s+(.*)$", line)
        if item and current is not None:
            out[current].append(_scalar(item.group(1)))
            continue
        kv = re.match(r"^([A-Za-z_][\w.-]*)\s*:\s*(.*)$", line)
        if not kv:
            raise CheckpointError(f"config.yaml line {n}: cannot parse {raw!r}")
        key, value = kv.group(1), kv.group(2)
        if value == "":
            out[key], current = [], key
        else:
            out[key], current = _scalar(value), None
    return out


def _scalar(s: str) -> Any:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    if s.lower() in ("null", "~"):
        return None
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def _layer_hook(hook: str, layer: int) -> str:
    return hook if hook.startswith("blocks.") else f"blocks.{layer}.{hook}"


def load_transcoder_set(folder: Path) -> dict[int, Dictionary]:
    """Per-layer transcoders of a circuit-tracer set (`config.yaml` + safetensors), by layer."""
    folder = Path(folder)
    path = folder / "config.yaml"
    if not path.exists():
        raise CheckpointError(f"{str(folder)!r} is not a circuit-tracer transcoder set (no config.yaml)")
    cfg = parse_simple_yaml(path.read_text())
    files = cfg.get("transcoders")
    if not isinstance(files, list) or not files:
        raise CheckpointError(f"{str(path)!r} has no `transcoders:` list of per-layer files")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not cfg.get(key):
            raise CheckpointError(f"{str(path)!r} lacks {key}")
    out = {}
    for layer, name in enumerate(files):
        if str(name).startswith("hf://"):
            raise CheckpointError(f"{str(path)!r} names a remote file {name!r}; download it and list the local path")
        f = (folder / str(name)) if not Path(str(name)).is_absolute() else Path(str(name))
        t = read_tensors(f)
        for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
            if key not in t:
                raise CheckpointError(f"{str(f)!r} lacks tensor {key!r}")
        width, d_in = t["W_enc"].shape
        arch = "jumprelu" if "activation_function.threshold" in t else cfg.get("activation", "relu")
        k = int(t["k"]) if "k" in t else int(cfg.get("k") or 1)
        arch = "topk" if "k" in t else arch
        dc = DictConfig(arch=arch, hook=_layer_hook(cfg["feature_input_hook"], layer),
                        out_hook=_layer_hook(cfg["feature_output_hook"], layer), d_in=int(d_in),
                        d_out=int(t["W_dec"].shape[1]), width=int(width), k=k, skip="W_skip" in t)
        tensors = {"W_enc": t["W_enc"].T, "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        if "activation_function.threshold" in t:
            tensors["threshold"] = t["activation_function.threshold"]
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"]
        out[layer] = build_dictionary(dc, tensors, str(f))
    return out


# --- Gemma Scope ------------------------------------------------------------------------------------

def load_gemma_scope(path: Path, hook: str, out_hook: str = "") -> Dictionary:
    """A Gemma Scope-style JumpReLU dictionary from `params.npz` or a safetensors file."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                t = {k: torch.from_numpy(np.array(z[k], dtype=np.float32)) for k in z.files}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {str(path)!r} as a .npz of arrays ({e})") from None
    else:
        t = read_tensors(path)
    rename = {"w_enc": "W_enc", "w_dec": "W_dec"}
    t = {rename.get(k, k): v for k, v in t.items()}
    if "affine_skip_connection" in t:  # Gemma Scope 2: [d_in, d_out], applied as x @ A
        t["W_skip"] = t.pop("affine_skip_connection").T
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in t]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a Gemma Scope JumpReLU file: missing {missing}")
    d_in, width = t["W_enc"].shape
    dc = DictConfig(arch="jumprelu", hook=hook, out_hook=out_hook, d_in=int(d_in), d_out=int(t["W_dec"].shape[1]),
                    width=int(width), skip="W_skip" in t)
    return build_dictionary(dc, t, str(path))


# --- Dunefsky et al. pickles (explicit conversion only) --------------------------------------------

class _Stub:
    """Inert stand-in for a class named in a pickle: holds the pickled state, runs no code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def safe_torch_load(path: Path, max_stubs: int = 16) -> Any:
    """`torch.load(weights_only=True)`, with classes outside torch's allowlist replaced by inert stubs
    (so a pickled config object loads as plain attributes; no code from the file ever runs)."""
    stubs: dict[str, type] = {}
    for _ in range(max_stubs + 1):
        try:
            with torch.serialization.safe_globals(list(stubs.values())):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            m = _UNSAFE_GLOBAL.search(str(e))
            if not m or m.group(1) in stubs:
                raise CheckpointError(f"cannot load {str(path)!r} safely: {str(e).splitlines()[0]}") from None
            module, _, qual = m.group(1).rpartition(".")
            stubs[m.group(1)] = type(qual, (_Stub,), {"__module__": module, "__qualname__": qual})
        except (RuntimeError, OSError, EOFError) as e:
            raise CheckpointError(f"cannot read {str(path)!r} as a torch file ({e})") from None
    raise CheckpointError(f"{str(path)!r} references more than {max_stubs} unknown classes")


def convert_pickle(path: Path, out: Path, hook: str = "", out_hook: str = "") -> Path:
    """Convert a Dunefsky et al. transcoder/SAE pickle ({"cfg", "state_dict"}) to our SAELens folder.

    Their encoder subtracts b_dec from the input and the decoder adds b_dec_out (transcoders) or
    b_dec (SAEs): b_enc ← b_enc − b_dec·W_enc folds the first, and the output bias becomes b_dec.
    Hooks come from the pickled config (`hook_point`, `out_hook_point`) unless given.
    """
    warnings.warn(f"reading the pickle {str(path)!r} with torch.load(weights_only=True); only convert files "
                  "you trust", stacklevel=2)
    obj = safe_torch_load(Path(path))
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "W_enc" not in sd:
        raise CheckpointError(f"{str(path)!r} holds no state_dict with W_enc (not a Dunefsky et al. dictionary)")
    cfg = vars(obj["cfg"]) if isinstance(obj, dict) and isinstance(obj.get("cfg"), _Stub) else {}
    if isinstance(obj, dict) and isinstance(obj.get("cfg"), dict):
        cfg = obj["cfg"]
    hook = hook or cfg.get("hook_point", "")
    out_hook = out_hook or (cfg.get("out_hook_point") if cfg.get("is_transcoder") else None) or hook
    if not hook:
        raise CheckpointError(f"{str(path)!r}: the hook is not recorded in the file; pass --hook")
    W_enc, b_dec_in = sd["W_enc"].float(), sd["b_dec"].float()
    b_out = sd.get("b_dec_out")
    t = {"W_enc": W_enc, "W_dec": sd["W_dec"].float(), "b_enc": sd["b_enc"].float() - b_dec_in @ W_enc,
         "b_dec": (b_out if b_out is not None else b_dec_in).float()}
    dc = DictConfig(arch="relu", hook=hook, out_hook=out_hook, d_in=int(W_enc.shape[0]),
                    d_out=int(t["W_dec"].shape[1]), width=int(W_enc.shape[1]))
    d = build_dictionary(dc, t, str(path))
    return save_dictionary(d, Path(out), {"converted_from": str(path)})
