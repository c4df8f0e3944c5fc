"""The dictionary package's torch-free part, for the CLI: `DictTrainConfig` (the training flags of
`train-dict`; used and re-exported by `train.py`) and `ARCHITECTURE_NAMES`, the names of the
built-in architectures (the `--arch` choices). The architectures themselves register in
`base.ARCHITECTURES` from `architectures.py`; a test keeps the two name lists equal."""

from __future__ import annotations

from dataclasses import dataclass

from sparsecircuits.config_utils import opt, require_at_least

ARCHITECTURE_NAMES = ("batchtopk", "jumprelu", "relu", "topk")  # sorted(base.ARCHITECTURES)


@dataclass
class DictTrainConfig:
    tokens: int = opt(2_000_000, "training tokens (activations) per dictionary")
    batch_size: int = opt(4096, "tokens per optimizer step")
    buffer_tokens: int = opt(131072, "tokens per shuffled buffer (a multiple of n_ctx; >= batch_size)")
    lr: float = opt(1e-3, "peak Adam learning rate")
    warmup_steps: int = opt(50, "steps of linear lr warmup")
    decay_frac: float = opt(0.2, "final fraction of training with linear lr decay to 0; [0, 1)")
    beta1: float = opt(0.9, "Adam beta1")
    beta2: float = opt(0.999, "Adam beta2")
    normalize: bool = opt(True, "scale inputs/targets to mean norm sqrt(d) while training (folded back on save)")
    l1_coef: float = opt(2.0, "relu: weight of the decoder-norm-weighted L1 penalty (normalised units)")
    l0_coef: float = opt(0.5, "jumprelu: weight of the L0 penalty")
    bandwidth: float = opt(0.05, "jumprelu: straight-through estimator bandwidth (normalised pre-activation units)")
    sparsity_warmup_frac: float = opt(0.05, "fraction of training over which the L1/L0 weight ramps up from 0")
    aux_k: int = opt(0, "topk/batchtopk: dead features used by the aux-k loss; 0 = d_out // 2")
    aux_coef: float = opt(1 / 32, "topk/batchtopk: weight of the aux-k loss")
    dead_tokens: int = opt(200_000, "a feature is dead after this many tokens without firing")
    resample_at: tuple[float, ...] = opt((0.2, 0.4, 0.6), "relu: fractions of training at which dead features are resampled")
    model_batch: int = opt(32, "sequences per model forward pass when computing activations")
    seed: int = opt(0, "seed of the initialisation, the token windows and the shuffling")
    ckpt_every: int = opt(0, "steps between checkpoints (0 = only at the end)")
    log_every: int = opt(10, "steps between lines of metrics.jsonl")
    threads: int = opt(0, "torch CPU threads (0 = the process default: one, or SPARSECIRCUITS_THREADS)")

    def __post_init__(self) -> None:
        self.resample_at = tuple(float(f) for f in self.resample_at)
        require_at_least(self, 1, "tokens", "batch_size", "buffer_tokens", "model_batch", "log_every", "dead_tokens")
        if self.buffer_tokens < self.batch_size:
            raise ValueError(f"DictTrainConfig.buffer_tokens ({self.buffer_tokens}) must be >= batch_size ({self.batch_size})")
        if not 0 <= self.decay_frac < 1 or not 0 <= self.sparsity_warmup_frac < 1:
            raise ValueError("DictTrainConfig.decay_frac and sparsity_warmup_frac must be in [0, 1)")
        if self.lr <= 0 or min(self.l1_coef, self.l0_coef, self.aux_coef) < 0 or self.bandwidth <= 0:
            raise ValueError("DictTrainConfig.lr and bandwidth must be > 0, the loss coefficients >= 0")
        if any(not 0 < f < 1 for f in self.resample_at):
            raise ValueError(f"DictTrainConfig.resample_at fractions must be in (0, 1), got {self.resample_at}")
        if self.aux_k < 0 or self.warmup_steps < 0 or self.ckpt_every < 0 or self.threads < 0:
            raise ValueError("DictTrainConfig.aux_k, warmup_steps, ckpt_every, threads must be >= 0")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    def lr_at(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay_start = int(self.steps * (1 - self.decay_frac))
        decay = 1.0 if step < decay_start else max(0.0, (self.steps - step) / max(self.steps - decay_start, 1))
        return self.lr * warm * decay

    def sparsity_scale(self, step: int) -> float:
        n = int(self.steps * self.sparsity_warmup_frac)
        return min(1.0, (step + 1) / n) if n else 1.0
