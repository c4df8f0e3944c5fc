"""Weight averaging of checkpoints of one run, projected back onto the run's weight sparsity.

The uniform mean of the last checkpoints of a run (stochastic weight averaging, Izmailov et al.
2018; latest weight averaging, Kaddour 2022) removes the step-to-step noise of the final weights
without more training. For a weight-sparse run (Gao et al. 2025) the mean of several top-k matrices
can hold more nonzeros than the run's target, so every matrix of `Transformer.sparse_weights()` is
projected back onto its top-k set with the run's own target (the same projection as a training step,
`train.project_weights`, at the run's final step). A dense twin is averaged without projection.

Only checkpoints of the same run shape can be averaged: the same model config, tokenizer, training
data and sparsity settings; anything else is refused with an error naming the difference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.data.batches import prepare_data, val_windows
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.model import checkpoint as ckpt
from sparsecircuits.weight_sparse.run import RunSpec, evaluate
from sparsecircuits.weight_sparse.train import TrainConfig, project_weights

# Training settings that decide the sparsity projection: they must agree across the averaged checkpoints.
_SPARSITY_KEYS = ("dense", "weight_frac", "embed_frac", "min_per_neuron")


class AverageError(ValueError):
    """Checkpoints that cannot be averaged together."""


@dataclass
class AverageResult:
    path: Path
    sources: list[Path]
    projected: bool
    nonzeros_before: int  # nonzeros of the sparse matrices of the plain mean
    nonzeros_after: int  # after the projection (equal to before for a dense run)


def _train_config(meta: dict[str, Any], where: Path) -> TrainConfig:
    train = meta.get("spec", {}).get("train")
    if not isinstance(train, dict):
        raise AverageError(f"{where}: meta.json has no spec.train (not a checkpoint written by `sparsecircuits train`)")
    return TrainConfig(**train)


def average_checkpoints(paths: Sequence[Path], out: Path) -> AverageResult:
    """Write the uniform weight mean of `paths` (checkpoint or run folders) to the checkpoint `out`."""
    if len(paths) < 2:
        raise AverageError(f"need at least two checkpoints to average, got {len(paths)}")
    folders = [ckpt.resolve(Path(p)) for p in paths]
    if len(set(folders)) != len(folders):
        raise AverageError("the same checkpoint is listed twice: " + ", ".join(str(f) for f in folders))
    first = ckpt.load_checkpoint(folders[0])
    cfg = _train_config(first.meta, folders[0])
    tok = first.tokenizer_path.read_text() if first.tokenizer_path else None
    total = {k: v.detach().double().clone() for k, v in first.model.state_dict().items()}
    for folder in folders[1:]:
        other = ckpt.load_checkpoint(folder)
        if other.model.cfg != first.model.cfg:
            raise AverageError(f"{folder}: model config differs from {folders[0]}'s")
        other_tok = other.tokenizer_path.read_text() if other.tokenizer_path else None
        if (other_tok and json.loads(other_tok)) != (tok and json.loads(tok)):
            raise AverageError(f"{folder}: tokenizer differs from {folders[0]}'s")
        if other.meta.get("data_fingerprint") != first.meta.get("data_fingerprint"):
            raise AverageError(f"{folder}: trained on other data than {folders[0]} (data fingerprints differ)")
        theirs = _train_config(other.meta, folder)
        for key in _SPARSITY_KEYS:
            if getattr(theirs, key) != getattr(cfg, key):
                raise AverageError(f"{folder}: TrainConfig.{key} = {getattr(theirs, key)!r}, "
                                   f"but {folders[0]} has {getattr(cfg, key)!r}")
        for k, v in other.model.state_dict().items():
            total[k] += v.detach().double()
    model = first.model
    sparse_names = [sw.name for sw in model.sparse_weights()]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_((total[k] / len(folders)).to(p.dtype))
        before = sum(int((params[n] != 0).sum()) for n in sparse_names)
        project_weights(model, cfg, cfg.kept(cfg.steps))
        after = sum(int((params[n] != 0).sum()) for n in sparse_names)
    meta = {
        **{k: v for k, v in first.meta.items() if k not in ("metrics", "step")},
        "step": max(int(ckpt.read_json(f / ckpt.META).get("step", 0)) for f in folders),
        "metrics": {},
        "averaged_from": [str(f) for f in folders],
    }
    path = ckpt.save_checkpoint(Path(out), model, meta=meta, tokenizer_json=tok)
    return AverageResult(path, folders, not cfg.dense, before, after)


def record_validation_loss(path: Path, cache_dir: Path) -> float:
    """Compute a checkpoint's validation loss the way its run did, and store it in its meta.json.

    Uses the run's own data settings and tokenizer (`prepare_data` reuses the token cache), the
    run's validation windows and precision; refuses when the corpus found now is not the one the
    run was trained on.
    """
    loaded = ckpt.load_checkpoint(path)
    if loaded.tokenizer_path is None:
        raise AverageError(f"{path}: no tokenizer.json, so its validation data cannot be rebuilt")
    spec = RunSpec.from_dict(loaded.meta["spec"])
    data = prepare_data(spec.data, Path(cache_dir), tokenizer=load_tokenizer(loaded.tokenizer_path))
    if data.fingerprint != loaded.meta.get("data_fingerprint"):
        raise AverageError(f"{path}: the corpus found now differs from the one it was trained on "
                           "(data fingerprints differ), so its validation loss cannot be recomputed")
    windows = val_windows(data.val, spec.train.val_batches, spec.train.batch_size, spec.model.n_ctx)
    val = evaluate(loaded.model, windows, torch.device("cpu"), spec.train.precision)
    meta = {**loaded.meta, "metrics": {**loaded.meta.get("metrics", {}), "val_loss": val}}
    atomic_write_text(Path(loaded.path) / ckpt.META, json.dumps(meta, indent=2, sort_keys=True))
    return val
