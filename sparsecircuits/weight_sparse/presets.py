"""Registry of training presets: named model + training settings, from a CPU toy to Gao et al.'s sizes.

Every field can still be overridden on the command line; a preset only changes defaults. The
`paper-*` presets follow Gao et al. (2025): 8 layers, d_head 16, d_mlp = 4 d_model, batch 512 x 256
tokens, lr 1.28e-2; they are meant for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str  # one line for --help
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    data: dict[str, Any] = field(default_factory=dict)  # DataConfig overrides


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            "2 layers, d_model 128, 8 heads, context 128: a few minutes on 2 CPU cores",
            model=dict(n_layers=2, d_model=128, n_heads=8, d_head=16, d_mlp=512, n_ctx=128),
            train=dict(steps=1500, batch_size=32, lr=3e-2, weight_frac=0.125, embed_frac=0.25,
                       val_every=250, ckpt_every=500),
        ),
        Preset(
            "quickstart",
            "the models shipped for `sparsecircuits quickstart`: 4 layers, d_model 128, vocab 1024 (~1 h on CPU)",
            model=dict(n_layers=4, d_model=128, n_heads=8, d_head=16, d_mlp=512, n_ctx=128),
            train=dict(steps=4500, batch_size=32, lr=3e-2, weight_frac=0.125, embed_frac=0.25,
                       val_every=500, ckpt_every=250),
            data=dict(vocab_size=1024),
        ),
        Preset(
            "small",
            "4 layers, d_model 256, 16 heads, context 256: about an hour on 2 CPU cores",
            model=dict(n_layers=4, d_model=256, n_heads=16, d_head=16, d_mlp=1024, n_ctx=256),
            train=dict(steps=4000, batch_size=32, lr=1e-2, weight_frac=1 / 16, embed_frac=1 / 8,
                       val_every=500, ckpt_every=500),
        ),
        Preset(
            "paper-1x",
            "Gao et al. 1x: 8 layers, d_model 256, 16 heads of 16, d_mlp 1024, batch 512 x 256 (GPU)",
            model=dict(n_layers=8, d_model=256, n_heads=16, d_head=16, d_mlp=1024, n_ctx=256),
            train=dict(steps=50000, batch_size=512, lr=1.28e-2, weight_frac=1 / 32, embed_frac=1 / 8,
                       val_every=1000, ckpt_every=1000),
        ),
        Preset(
            "paper-4x",
            "Gao et al. 4x: 8 layers, d_model 1024, 64 heads of 16, d_mlp 4096, batch 512 x 256 (GPU)",
            model=dict(n_layers=8, d_model=1024, n_heads=64, d_head=16, d_mlp=4096, n_ctx=256),
            train=dict(steps=50000, batch_size=512, lr=1.28e-2, weight_frac=1 / 64, embed_frac=1 / 16,
                       val_every=1000, ckpt_every=1000),
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
