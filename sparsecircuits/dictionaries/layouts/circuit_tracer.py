"""circuit-tracer transcoder sets and cross-layer transcoders (CLTs), read and written.

A folder with `config.yaml`: `model_name`, `model_kind` (`transcoder_set` or
`cross_layer_transcoder`), `feature_input_hook` / `feature_output_hook` (relative to a layer:
`hook_resid_mid`, `ln2.hook_normalized`, `mlp.hook_in`, `hook_mlp_out`, `mlp.hook_out`), optional
`activation` (`relu`, `topk`) and `k`, and optionally `transcoders:`, a list of per-layer files (local
paths, relative to the folder here, or `hf://org/name/file` found in the HF cache). Without that
list the folder holds `layer_{i}.safetensors` (as circuit-tracer's cache writes it). Older configs
list `{id, layer, filepath}` mappings; those are read too.

Per-layer transcoder files (`SingleLayerTranscoder`): `W_enc [F, d]` (applied as F.linear, so
transposed here), `W_dec [F, d]`, `b_enc`, `b_dec`, optional `activation_function.threshold`
(JumpReLU: pre·1[pre > θ]), `k` (TopK), `W_skip [d, d]` (ŷ += x·W_skipᵀ). A Gemma Scope
`params.npz` or Gemma Scope 2 `params.safetensors` in the list is read as such (gemma_scope.py).
circuit-tracer's TopK keeps the k largest pre-activations without a ReLU; ours applies one, which
differs only where fewer than k pre-activations are positive (noted on load).

CLT folders: `W_enc_{i}.safetensors` with `W_enc_{i} [F, d]`, `b_enc_{i} [F]`, `b_dec_{i} [d]`,
optional `threshold_{i} [F]`; `W_dec_{i}.safetensors` with `W_dec_{i} [F, n_layers − i, d]`: the
features read at layer i write to layers i..n−1, ŷ_j = Σ_{i≤j} f_i·W_dec_i[:, j − i] + b_dec_j.
`CrossLayerTranscoder` holds that; its per-layer view (the encoder of layer i with the decoder to
layer i) is what single-layer code can use.

`save_transcoder_set` writes our per-layer transcoders in circuit-tracer's cache layout
(`config.yaml` without a `transcoders` list + `layer_{i}.safetensors`), hooks in its naming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import DictConfig, Dictionary
from sparsecircuits.dictionaries.layouts.common import TL_UNFOLDED, Loaded, our_hook, to_float
from sparsecircuits.model.checkpoint import CheckpointError, read_tensors

CONFIG = "config.yaml"
# Our hook (relative to a layer) -> circuit-tracer's name for the same activation.
_TO_CT = {"ln2.hook_normalized": "mlp.hook_in"}


# --- the YAML subset of circuit-tracer configs -------------------------------------------------------

def parse_simple_yaml(text: str) -> dict[str, Any]:
    """`key: scalar` lines, and `key:` followed by `- item` lines whose items are scalars or one-level
    mappings (`- id: x` with further `  key: value` lines); comments and quotes allowed."""
    out: dict[str, Any] = {}
    current: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = re.match(r"^\s*-\s+(.*)$", line)
        if item and current is not None:
            kv = re.match(r"^([A-Za-z_][\w.-]*)\s*:\s+(.*)$", item.group(1))
            out[current].append({kv.group(1): _scalar(kv.group(2))} if kv else _scalar(item.group(1)))
            continue
        kv = re.match(r"^(\s*)([A-Za-z_][\w.-]*)\s*:\s*(.*)$", line)
        if not kv:
            raise CheckpointError(f"config.yaml line {n}: cannot parse {raw!r}")
        indent, key, value = kv.groups()
        if indent and current is not None and out[current] and isinstance(out[current][-1], dict):
            out[current][-1][key] = _scalar(value)
        elif value == "":
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


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{str(folder)!r} is not a circuit-tracer transcoder set (no {CONFIG})")
    cfg = parse_simple_yaml(path.read_text())
    for key in ("feature_input_hook", "feature_output_hook"):
        if not cfg.get(key):
            raise CheckpointError(f"{str(path)!r} lacks {key}")
    return cfg


# --- transcoder sets ---------------------------------------------------------------------------------

def layer_files(folder: Path, cfg: dict[str, Any], download: bool = False) -> list[Path]:
    """The per-layer files of a set, in layer order."""
    from sparsecircuits.dictionaries.layouts.hub import resolve

    folder = Path(folder)
    entries = cfg.get("transcoders")
    if entries:
        if not isinstance(entries, list):
            raise CheckpointError(f"{str(folder / CONFIG)!r}: `transcoders` must be a list of files")
        if all(isinstance(e, dict) for e in entries):  # older {id, layer, filepath} entries
            entries = [e.get("filepath") for e in sorted(entries, key=lambda e: int(e.get("layer", 0)))]
        out = []
        for e in entries:
            e = str(e)
            if e.startswith("hf://"):
                out.append(resolve(e, download=download))
            else:
                out.append(Path(e) if Path(e).is_absolute() else folder / e)
        return out
    found = {int(m.group(1)): p for p in folder.glob("layer_*.safetensors")
             if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))}
    if not found:
        raise CheckpointError(f"{str(folder)!r}: {CONFIG} lists no `transcoders` and there are no layer_*.safetensors")
    if sorted(found) != list(range(len(found))):
        raise CheckpointError(f"{str(folder)!r}: layer files must cover layers 0..n-1, found {sorted(found)}")
    return [found[i] for i in range(len(found))]


def _one_layer(f: Path, layer: int, cfg: dict[str, Any], hook: str, out_hook: str, notes: list[str]) -> Dictionary:
    from sparsecircuits.dictionaries.formats import build_dictionary
    from sparsecircuits.dictionaries.layouts.gemma_scope import load_gemma_scope_file

    if not f.exists():
        raise CheckpointError(f"missing file {str(f)!r} (layer {layer})")
    raw = read_tensors(f) if f.suffix != ".npz" else None
    if raw is None or "w_enc" in raw:  # a Gemma Scope (2) file listed in the set
        return load_gemma_scope_file(f, hook, out_hook).dictionary
    t = to_float(raw)
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if key not in t:
            raise CheckpointError(f"{str(f)!r} lacks tensor {key!r}")
    width, d_in = t["W_enc"].shape
    arch, k = "relu", int(cfg.get("k") or 1)
    if "activation_function.threshold" in t:
        arch = "jumprelu"
    elif "k" in t or cfg.get("activation") == "topk":
        arch, k = "topk", int(t["k"]) if "k" in t else k
        if not notes or "TopK" not in notes[-1]:
            notes.append("circuit-tracer's TopK has no ReLU; ours does (differs only when < k pre-activations are > 0)")
    dc = DictConfig(arch=arch, hook=hook, out_hook=out_hook, d_in=int(d_in), d_out=int(t["W_dec"].shape[1]),
                    width=int(width), k=k, skip="W_skip" in t)
    tensors = {"W_enc": t["W_enc"].T, "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
    if arch == "jumprelu":
        tensors["threshold"] = t["activation_function.threshold"].reshape(-1)
    if "W_skip" in t:
        tensors["W_skip"] = t["W_skip"]
    return build_dictionary(dc, tensors, str(f))


def load_circuit_tracer(folder: Path, download: bool = False) -> Loaded:
    """A circuit-tracer `transcoder_set` or `cross_layer_transcoder` folder; see the module docstring."""
    folder = Path(folder)
    cfg = read_config(folder)
    kind = cfg.get("model_kind", "transcoder_set")
    if kind == "cross_layer_transcoder":
        return load_clt(folder, cfg)
    if kind != "transcoder_set":
        raise CheckpointError(f"{str(folder / CONFIG)!r}: unknown model_kind {kind!r}")
    notes: list[str] = []
    dicts = []
    for layer, f in enumerate(layer_files(folder, cfg, download)):
        hook, out_hook = our_hook(cfg["feature_input_hook"], layer), our_hook(cfg["feature_output_hook"], layer)
        dicts.append(_one_layer(Path(f), layer, cfg, hook, out_hook, notes))
    # circuit-tracer runs TransformerLens with fold_ln=False, so its ln*.hook_normalized is pre-gain
    # only in RMSNorm models (TransformerLens' RMSNorm hooks before the gain).
    return Loaded("circuit-tracer", folder, dicts, notes=notes, norm_input=TL_UNFOLDED)


def load_transcoder_set(folder: Path) -> dict[int, Dictionary]:
    """Per-layer transcoders of a circuit-tracer set, by layer (the per-layer view of a CLT)."""
    return dict(enumerate(load_circuit_tracer(folder).dictionaries))


@torch.no_grad()
def save_transcoder_set(transcoders: list[Dictionary], folder: Path, model_name: str = "sparsecircuits") -> Path:
    """Write per-layer transcoders (layer i = transcoders[i]) in circuit-tracer's layout, atomically."""
    from safetensors.torch import save_file

    from sparsecircuits.atomic import atomic_dir

    if not transcoders:
        raise ValueError("save_transcoder_set needs at least one transcoder")
    rel = []
    for i, d in enumerate(transcoders):
        hook, out = d.cfg.hook, d.cfg.out_hook
        prefix = f"blocks.{i}."
        if not (hook.startswith(prefix) and out.startswith(prefix)):
            raise ValueError(f"transcoder {i} reads {hook!r} -> {out!r}; a circuit-tracer set needs layer {i}'s hooks")
        rel.append((hook[len(prefix):], out[len(prefix):]))
    if len(set(rel)) != 1:
        raise ValueError(f"a circuit-tracer set needs the same hooks at every layer, got {sorted(set(rel))}")
    archs = {d.cfg.arch for d in transcoders}
    if len(archs) != 1:
        raise ValueError(f"a circuit-tracer set needs one architecture, got {sorted(archs)}")
    hook_in, hook_out = (_TO_CT.get(h, h) for h in rel[0])
    arch = archs.pop()
    lines = [f"model_name: {model_name!r}", "model_kind: transcoder_set", f"feature_input_hook: {hook_in!r}",
             f"feature_output_hook: {hook_out!r}", f"scan: {model_name!r}"]
    if arch == "topk":
        lines += ["activation: topk", f"k: {transcoders[0].cfg.k}"]
    elif arch == "relu":
        lines.append("activation: relu")
    with atomic_dir(Path(folder)) as tmp:
        for i, d in enumerate(transcoders):
            t = {"W_enc": d.W_enc.T, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
            th = d.threshold_vector()
            if th is not None:
                t["activation_function.threshold"] = th
            if d.W_skip is not None:
                t["W_skip"] = d.W_skip
            tensors = {k: v.detach().float().cpu().contiguous() for k, v in t.items()}
            if arch == "topk":
                tensors["k"] = torch.tensor(d.cfg.k)
            save_file(tensors, str(tmp / f"layer_{i}.safetensors"))
        (tmp / CONFIG).write_text("\n".join(lines) + "\n")
    return Path(folder)


# --- cross-layer transcoders ---------------------------------------------------------------------------

@dataclass
class CrossLayerTranscoder:
    """A CLT: `layers[i]` encodes layer i's input (with the decoder to layer i only); `W_dec[i]`
    `[F, n_layers − i, d]` holds every decoder of layer i's features (see the module docstring)."""

    layers: list[Dictionary]
    W_dec: list[Tensor]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        return self.layers[layer].encode(x)

    def reconstruct(self, acts: list[Tensor]) -> list[Tensor]:
        """ŷ_j = Σ_{i≤j} acts_i · W_dec_i[:, j − i] + b_dec_j for every layer j."""
        out = []
        for j in range(self.n_layers):
            y = self.layers[j].b_dec.detach().clone().expand(*acts[j].shape[:-1], -1)
            for i in range(j + 1):
                y = y + acts[i] @ self.W_dec[i][:, j - i]
            out.append(y)
        return out

    def check_layers(self, n_layers: int) -> None:
        if n_layers != self.n_layers:
            raise CheckpointError(f"this cross-layer transcoder spans {self.n_layers} layers; the model has {n_layers}")


def load_clt(folder: Path, cfg: dict[str, Any] | None = None) -> Loaded:
    """A circuit-tracer cross-layer transcoder folder; see the module docstring."""
    from sparsecircuits.dictionaries.formats import build_dictionary

    folder = Path(folder)
    cfg = cfg if cfg is not None else read_config(folder)
    n = len(list(folder.glob("W_enc_*.safetensors")))
    if n == 0:
        raise CheckpointError(f"{str(folder)!r}: a cross_layer_transcoder config but no W_enc_*.safetensors")
    layers, decoders = [], []
    for i in range(n):
        enc_f, dec_f = folder / f"W_enc_{i}.safetensors", folder / f"W_dec_{i}.safetensors"
        enc, dec = to_float(read_tensors(enc_f)), to_float(read_tensors(dec_f))
        for key, src, f in ((f"W_enc_{i}", enc, enc_f), (f"b_enc_{i}", enc, enc_f), (f"b_dec_{i}", enc, enc_f),
                            (f"W_dec_{i}", dec, dec_f)):
            if key not in src:
                raise CheckpointError(f"{str(f)!r} lacks tensor {key!r}")
        W_enc, W_dec = enc[f"W_enc_{i}"], dec[f"W_dec_{i}"]
        F, d = W_enc.shape
        if tuple(W_dec.shape) != (F, n - i, d):
            raise CheckpointError(f"{str(dec_f)!r}: W_dec_{i} is {tuple(W_dec.shape)}, expected {(F, n - i, d)} "
                                  f"(features x layers {i}..{n - 1} x d)")
        th = enc.get(f"threshold_{i}")
        dc = DictConfig(arch="jumprelu" if th is not None else "relu", hook=our_hook(cfg["feature_input_hook"], i),
                        out_hook=our_hook(cfg["feature_output_hook"], i), d_in=int(d), width=int(F))
        t = {"W_enc": W_enc.T, "W_dec": W_dec[:, 0], "b_enc": enc[f"b_enc_{i}"], "b_dec": enc[f"b_dec_{i}"]}
        if th is not None:
            t["threshold"] = th.reshape(-1)
        layers.append(build_dictionary(dc, t, str(enc_f)))
        decoders.append(W_dec)
    notes = ["cross-layer transcoder: `dictionaries` are the per-layer views (decoder to the same layer only); "
             "`clt.reconstruct` sums every earlier layer's decoders"]
    return Loaded("circuit-tracer-clt", folder, layers, clt=CrossLayerTranscoder(layers, decoders), notes=notes,
                  norm_input=TL_UNFOLDED)
