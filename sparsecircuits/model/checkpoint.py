"""Checkpoints: folders of safetensors + JSON, written atomically, loaded with exact checks.

A checkpoint folder holds (DESIGN.md):
  config.json             the `ModelConfig`
  model.safetensors       the model's parameters
  tokenizer.json          the tokenizer (optional)
  train_state.safetensors optimizer moments and RNG state (optional; training only)
  meta.json               step, training/data configs, metrics (optional)

A training run folder holds `checkpoints/step-NNNNNNN/` checkpoint folders and `metrics.jsonl`;
every function that takes a checkpoint also accepts a run folder and then uses its latest step.

Atomicity: a checkpoint is written into a temporary sibling folder and renamed into place, so a
killed run leaves either the old or the new checkpoint, never a half-written one. Nothing is ever
unpickled: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparsecircuits.atomic import atomic_dir
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.transformer import Transformer

CONFIG, WEIGHTS, TOKENIZER, TRAIN_STATE, META = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "train_state.safetensors",
    "meta.json",
)
STEP_PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the model and whatever else the folder holds."""

    path: Path
    model: Transformer
    meta: dict[str, Any]
    tokenizer_path: Path | None
    train_state: dict[str, Tensor] | None


def save_checkpoint(
    path: Path,
    model: Transformer,
    *,
    meta: dict[str, Any] | None = None,
    tokenizer_json: str | None = None,
    train_state: dict[str, Tensor] | None = None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one at `path`).

    `dtype` stores floating-point weights in another precision (e.g. float16 to ship a model);
    loading casts them back to the model's float32 parameters. `extra_files` (name -> content) are
    written into the same folder inside the same atomic rename (e.g. the bridges of `weight_sparse/bridges_train.py`).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2, sort_keys=True))
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS))
        if tokenizer_json is not None:
            (tmp / TOKENIZER).write_text(tokenizer_json)
        if train_state is not None:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in train_state.items()}, str(tmp / TRAIN_STATE))
        (tmp / META).write_text(json.dumps(meta or {}, indent=2, sort_keys=True))
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
    return path


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{STEP_PREFIX}{step:07d}"


def list_steps(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / META).exists()]
    return sorted(found, key=lambda p: p.name)


def prune_steps(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints of a run, and temporary folders a kill left behind."""
    for p in list_steps(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    folder = Path(run_dir) / "checkpoints"
    # Called between saves by the one writing process, so no temporary folder is in use.
    for p in folder.glob(f".{STEP_PREFIX}*") if folder.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def resolve(path: Path) -> Path:
    """A checkpoint folder itself, or the latest checkpoint of a run folder; clear error otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if (path / CONFIG).exists():
        return path
    steps = list_steps(path)
    if steps:
        return steps[-1]
    raise CheckpointError(
        f"{str(path)!r} is neither a checkpoint folder (no {CONFIG}) nor a run folder with checkpoints/{STEP_PREFIX}*"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing file {str(path)!r}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{str(path)!r} is not UTF-8 text (byte at offset {e.start}), not JSON") from None


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; a missing or truncated file raises CheckpointError naming it."""
    if not Path(path).exists():
        raise CheckpointError(f"missing file {str(path)!r}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {str(path)!r}: it is truncated or not a safetensors file ({e})") from None


def load_state_checked(model: torch.nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Copy tensors into a model after checking names and shapes; list every mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + " | ".join(problems))
    model.load_state_dict(tensors, strict=True)


def load_checkpoint(path: Path, *, with_train_state: bool = False, device: str = "cpu") -> Checkpoint:
    """Load a model (and optionally its training state) from a checkpoint or run folder."""
    folder = resolve(path)
    try:
        cfg = ModelConfig.from_dict(read_json(folder / CONFIG))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{str(folder / CONFIG)!r} is not a valid model config: {e}") from None
    model = Transformer(cfg)
    load_state_checked(model, read_tensors(folder / WEIGHTS), str(folder / WEIGHTS))
    meta = read_json(folder / META) if (folder / META).exists() else {}
    tok = folder / TOKENIZER
    state = read_tensors(folder / TRAIN_STATE) if with_train_state else None
    return Checkpoint(folder, model.to(device), meta, tok if tok.exists() else None, state)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_checkpoint(src: Path, dst: Path, dtype: str = "float32") -> Path:
    """Copy a checkpoint without its training state, weights stored as `dtype` (for shipping)."""
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    ck = load_checkpoint(src)
    tok = ck.tokenizer_path.read_text() if ck.tokenizer_path else None
    meta = {**ck.meta, "exported_from": str(ck.path), "stored_dtype": dtype}
    return save_checkpoint(Path(dst), ck.model, meta=meta, tokenizer_json=tok, dtype=DTYPES[dtype])
