"""What a checkpoint is: its config, the nonzero census of every sparse matrix, and its losses.

`checkpoint_info(path)` reads a checkpoint (or a run folder's newest one) and returns a
`CheckpointInfo`; the CLI's `sparsecircuits info` renders it. Targets are the nonzero counts the
L0 schedule prescribes at the checkpoint's step, so a finished sparse run should show every matrix
at exactly its target and no neuron below the per-neuron minimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecircuits.model.checkpoint import load_checkpoint
from sparsecircuits.model.sparsity import MatrixL0, matrix_l0
from sparsecircuits.weight_sparse.train import TrainConfig, target_nonzeros_at


@dataclass
class CheckpointInfo:
    path: Path
    step: int | None
    model_config: dict[str, Any]
    n_params: int
    dense: bool
    min_per_neuron: int
    matrices: list[MatrixL0]
    val_loss: float | None
    train_loss: float | None
    bigram_baseline: float | None

    @property
    def all_at_target(self) -> bool:
        return all(m.nonzeros == m.target and m.neurons_below_min == 0 for m in self.matrices)


def checkpoint_info(path: Path) -> CheckpointInfo:
    ck = load_checkpoint(path)
    model, meta = ck.model, ck.meta
    spec = meta.get("spec")
    train = TrainConfig(**spec["train"]) if spec else None
    step = meta.get("step")
    params = dict(model.named_parameters())
    if train is not None and step is not None:
        targets = target_nonzeros_at(model, train, int(step))
        j = train.min_per_neuron
    else:  # a checkpoint without training metadata: report against dense
        targets = {sw.name: params[sw.name].numel() for sw in model.sparse_weights()}
        j = 0
    matrices = [matrix_l0(sw.name, params[sw.name], targets[sw.name], j, sw.neuron_dim) for sw in model.sparse_weights()]
    metrics = meta.get("metrics", {})
    return CheckpointInfo(
        path=ck.path,
        step=step,
        model_config=model.cfg.to_dict(),
        n_params=sum(p.numel() for p in model.parameters()),
        dense=bool(train.dense) if train else True,
        min_per_neuron=j,
        matrices=matrices,
        val_loss=metrics.get("val_loss"),
        train_loss=metrics.get("loss"),
        bigram_baseline=meta.get("bigram_baseline"),
    )
