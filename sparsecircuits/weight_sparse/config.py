"""The configs of weight-sparse training, pruning, bridges and sweeps (Gao et al. 2025), importable
without torch: the CLI builds its flags from them, so `sparsecircuits --help` starts instantly. Each
is used (and re-exported) by the module it configures: `TrainConfig` by `train.py`, `PruneConfig`
by `prune.py`, `BridgeConfig` by `bridges.py` / `bridges_train.py`, `SweepConfig` by `sweep.py`;
`QUICKSTART_PRUNE` is `quickstart.py`'s pruning budget and `MODES` the bridged intervention modes of
`bridges_intervene.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sparsecircuits.ablation_names import BASELINES
from sparsecircuits.config_utils import numbers, opt, require_at_least
from sparsecircuits.data.config import DataConfig
from sparsecircuits.weight_sparse.presets import PRESETS, get_preset

PRECISIONS = ("auto", "fp32", "bf16")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
MODES = ("ablate", "steer")  # bridged interventions: set channels to a baseline, or add alpha

# The quickstart's pruning budget, fitted to under 3 minutes on 2 CPU cores: a quarter of the default
# batch (circuits within about +-30% of the batch-64 ones on the shipped pair; docs/results.md) and
# node effects on 16 held-out examples. Flags override it; `sparsecircuits prune` uses the defaults.
QUICKSTART_PRUNE: dict[str, Any] = {"batch_size": 16, "effect_examples": 16}


@dataclass
class TrainConfig:
    steps: int = opt(1500, "optimizer steps")
    batch_size: int = opt(16, "sequences per step (each n_ctx tokens)")
    lr: float = opt(1e-2, "peak learning rate")
    warmup_frac: float = opt(0.01, "fraction of steps of linear warmup; [0, 1)")
    beta1: float = opt(0.9, "Adam beta1")
    beta2: float = opt(0.95, "Adam beta2")
    eps: float = opt(0.1, "Adam epsilon (Gao et al. use a large 0.1)")
    weight_decay: float = opt(0.1, "decoupled weight decay, applied after the sparsity projection")
    grad_rms_norm: bool = opt(True, "rescale the gradient to global RMS 1 every step")
    dense: bool = opt(False, "train the dense twin: no weight sparsity, same shapes")
    weight_frac: float = opt(0.125, "target kept fraction of hidden matrices (q,k,v,o,MLP); (0, 1]")
    embed_frac: float = opt(0.25, "target kept fraction of the embedding and unembedding; (0, 1]")
    min_per_neuron: int = opt(4, "nonzeros every neuron/channel keeps at least (j)")
    anneal_start: float = opt(0.01, "fraction of training at which sparsification starts")
    anneal_end: float = opt(0.5, "fraction of training at which the target L0 is reached")
    lr_l0_scaling: bool = opt(True, "multiply the lr by sqrt(L0_target / L0_now) while annealing")
    seed: int = opt(0, "seed of the initialisation and of the batch order")
    val_every: int = opt(250, "steps between validation-loss evaluations (0 = only at the end)")
    val_batches: int = opt(8, "validation batches per evaluation")
    ckpt_every: int = opt(500, "steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = opt(2, "most recent checkpoints kept in the run folder (>= 1)")
    log_every: int = opt(10, "steps between lines of metrics.jsonl")
    device: str = opt("auto", "torch device: auto (cuda if available) | cpu | cuda | cuda:N")
    precision: str = opt("auto", f"compute precision: {' | '.join(PRECISIONS)} (auto = bf16 on GPU, fp32 on CPU)")
    threads: int = opt(0, "CPU threads for torch (0 = the process default: one, or SPARSECIRCUITS_THREADS)")
    compile: bool = opt(False, "torch.compile the forward pass (mostly useful on GPU; on CPU it needs a C++ compiler)")
    fused_adam: bool = opt(True, "use the fused Adam kernel when training on CUDA (never on CPU)")
    init_from: str = opt("", "checkpoint folder whose weights start the run: continued training with a fresh "
                         "optimizer and lr schedule (same shapes and tokenizer; empty = random init)")

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "val_batches", "keep_checkpoints", "log_every")
        require_at_least(self, 1, *positive)
        require_at_least(self, 0, "val_every", "ckpt_every", "threads", "min_per_neuron")
        for name in ("weight_frac", "embed_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"TrainConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"TrainConfig.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0.0 <= self.anneal_start <= self.anneal_end <= 1.0:
            raise ValueError("TrainConfig.anneal_start and anneal_end must satisfy 0 <= start <= end <= 1")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.lr and eps must be > 0 and weight_decay >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("TrainConfig.beta1 and beta2 must be in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not _DEVICE_RE.fullmatch(self.device):
            raise ValueError(f"TrainConfig.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def kept(self, step: int) -> dict[str, float]:
        """Scheduled kept fraction per weight group at a step (1.0 everywhere for the dense twin)."""
        from sparsecircuits.model.sparsity import kept_fraction  # here, not at the top: it imports torch

        if self.dense:
            return {"hidden": 1.0, "embed": 1.0}
        f = {"hidden": self.weight_frac, "embed": self.embed_frac}
        return {g: kept_fraction(step, self.steps, t, self.anneal_start, self.anneal_end) for g, t in f.items()}

    def lr_at(self, step: int) -> float:
        """Learning rate at a step: warmup, linear decay, times sqrt(L0_target / L0_now)."""
        warm = max(1, int(round(self.warmup_frac * self.steps)))
        base = self.lr * min((step + 1) / warm, max(0.0, (self.steps - step) / max(1, self.steps - warm)))
        if self.lr_l0_scaling and not self.dense:
            base *= math.sqrt(self.weight_frac / self.kept(step)["hidden"])
        return base


@dataclass
class PruneConfig:
    steps: int = opt(300, "optimisation steps of the gate parameters")
    batch_size: int = opt(64, "task examples per step")
    lr: float = opt(0.01, "AdamW peak learning rate for the gates (linear decay to 0)")
    k_coef: float = opt(1e-4, "penalty per active node, in nats")
    weight_decay: float = opt(1e-3, "AdamW weight decay on the gates")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "gradient-norm clipping")
    temperature: float = opt(1.0, "temperature of the sigmoid-derivative surrogate gradient")
    init_mean: float = opt(0.1, "mean of the gate initialisation (> 0: all nodes on)")
    init_std: float = opt(0.01, "std of the gate initialisation")
    target_loss: float = opt(0.15, "task loss (nats) the discretised circuit must reach")
    target_slack: float = opt(0.05, "when the full model's held-out loss is above target_loss, aim for full loss + this instead")
    extra_targets: tuple[float, ...] = opt((), "also bisect the same gates to these task losses and record each circuit's size (metadata sizes_at_targets)")
    baseline: str = opt("mean", f"value of pruned nodes: {' | '.join(BASELINES)}")
    calibrate: bool = opt(False, "fit a logit scale and per-answer shift (16 LBFGS steps) when evaluating")
    effect_examples: int = opt(32, "held-out examples used for each node's single-ablation effect")
    max_effect_nodes: int = opt(512, "compute node effects (one forward per node) only for circuits up to this size")
    seed: int = opt(0, "seed of the gate initialisation and batch order")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "steps", "batch_size")
        if self.baseline not in BASELINES:
            raise ValueError(f"PruneConfig.baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.target_slack < 0:
            raise ValueError(f"PruneConfig.target_slack must be >= 0, got {self.target_slack}")
        self.extra_targets = numbers(self, "extra_targets", float)
        if any(t <= 0 for t in self.extra_targets):
            raise ValueError(f"PruneConfig.extra_targets must be > 0, got {self.extra_targets}")
        if self.init_mean <= 0 or self.temperature <= 0 or self.lr <= 0 or self.target_loss <= 0:
            raise ValueError("PruneConfig.init_mean, temperature, lr and target_loss must be > 0")


@dataclass
class BridgeConfig:
    enc_topk: float = opt(0.25, "fraction of the encoder's outputs AbsTopK keeps per token; (0, 1]")
    lm_coef: float = opt(1.0, "weight of the sparse model's next-token loss; >= 0")
    nmse_coef: float = opt(1.0, "weight of the normalised MSE, both directions, mean over sites; >= 0")
    kl_coef: float = opt(1.0, "weight of the hybrid-to-dense KL, both directions, mean over sites; >= 0")
    hybrid_sites: int = opt(2, "sites per direction whose hybrid KL is taken each step (drawn per step); 0 = all")
    bridge_lr: float = opt(1e-3, "peak Adam learning rate of the bridges (same warmup/decay as the model); > 0")
    lstsq_init: bool = opt(True, "start each encoder/decoder at the ridge least-squares fit on >= 64 training sequences")
    ridge: float = opt(1e-3, "ridge of that fit, relative to the mean squared input; >= 0")
    seq_len: int = opt(0, "tokens per training sequence; 0 = the models' n_ctx (at most n_ctx)")

    def __post_init__(self) -> None:
        if not 0.0 < self.enc_topk <= 1.0:
            raise ValueError(f"BridgeConfig.enc_topk must be in (0, 1], got {self.enc_topk}")
        require_at_least(self, 0, "lm_coef", "nmse_coef", "kl_coef", "ridge")
        if self.seq_len < 0:
            raise ValueError(f"BridgeConfig.seq_len must be >= 0 (0 = n_ctx), got {self.seq_len}")
        if self.hybrid_sites < 0:
            raise ValueError(f"BridgeConfig.hybrid_sites must be >= 0 (0 = all sites), got {self.hybrid_sites}")
        if self.bridge_lr <= 0:
            raise ValueError(f"BridgeConfig.bridge_lr must be > 0, got {self.bridge_lr}")


@dataclass
class SweepConfig:
    widths: tuple[int, ...] = opt((32, 64), "d_model of the models (multiples of d_head); d_mlp = mlp_ratio x d_model")
    weight_fracs: tuple[float, ...] = opt((0.25, 0.0625), "target kept fractions of the hidden matrices, one sparse model each; (0, 1)")
    match_nonzeros: bool = opt(False, "weight_fracs hold at the smallest width; wider models keep the same nonzeros per matrix (fraction x (w0/w)^2)")
    embed_ratio: float = opt(2.0, "embedding kept fraction = min(1, embed_ratio x hidden fraction)")
    act_sparsities: tuple[float, ...] = opt((0.25,), "AbsTopK kept fractions of the sparse models; 1 = activation sparsity off")
    dense_baselines: bool = opt(True, "also train a dense model at every width")
    dense_act_sparsity: float = opt(1.0, "AbsTopK kept fraction of the dense baselines (1 = off: a standard transformer)")
    preset: str = opt("tiny", f"base preset for every other model/training field: {' | '.join(PRESETS)}")
    n_layers: int = opt(2, "transformer blocks of every model")
    d_head: int = opt(16, "width of one attention head")
    mlp_ratio: int = opt(4, "d_mlp / d_model")
    n_ctx: int = opt(64, "training context in tokens")
    steps: int = opt(300, "optimizer steps per model")
    batch_size: int = opt(16, "sequences per step")
    lr: float = opt(0.0, "peak learning rate; 0 = the preset's")
    lr_by_width: tuple[float, ...] = opt((), "peak learning rate per width, in the order of widths (empty = lr for all)")
    seed: int = opt(0, "seed of every run")
    val_batches: int = opt(8, "validation batches for the final validation loss (same windows for every model)")
    ckpt_every: int = opt(100, "steps between checkpoints (a killed sweep resumes from the newest)")
    tasks: tuple[str, ...] = opt(("single_double_quote", "bracket_type"), "tasks pruned on every model")
    n_examples: int = opt(128, "examples per task (half train the gates, half held out for the bisection)")
    pruning_seeds: tuple[int, ...] = opt((0,), "seeds of the pruning (gate init and batch order; replaces prune.seed): one circuit each, spread = error bars")
    min_accuracy: float = opt(0.9, "a task enters the frontier only if every full model's held-out accuracy on it is at least this")
    frontier_target: float = opt(0.0, "task loss the frontier is drawn at: 0 = prune.target_loss, else one of prune.extra_targets (re-summarises only, no re-pruning)")
    workers: int = opt(0, "processes training/pruning at once (0 = one per CPU core); results do not depend on it")
    data: DataConfig = opt(DataConfig(vocab_size=1024), "training corpus and tokenizer, shared by every model")
    # The CLI's own defaults (`sparsecircuits prune`): the frontier is a statement about the tool users run.
    prune: PruneConfig = opt(PruneConfig(), "pruning settings, the same for every model and task (seed: see pruning_seeds)")

    def __post_init__(self) -> None:
        # CLI flags arrive as strings, JSON as lists.
        self.widths = numbers(self, "widths", int)
        self.weight_fracs = numbers(self, "weight_fracs", float)
        self.act_sparsities = numbers(self, "act_sparsities", float)
        self.tasks = tuple(str(t) for t in self.tasks)
        self.lr_by_width = numbers(self, "lr_by_width", float)
        self.pruning_seeds = numbers(self, "pruning_seeds", int)
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.prune, dict):
            self.prune = PruneConfig(**self.prune)
        require_at_least(self, 1, "n_layers", "d_head", "mlp_ratio", "steps", "batch_size", "val_batches")
        if self.ckpt_every < 0 or self.lr < 0 or self.embed_ratio <= 0 or self.n_ctx < 8 or self.n_examples < 4:
            raise ValueError("SweepConfig needs ckpt_every >= 0, lr >= 0, embed_ratio > 0, n_ctx >= 8, n_examples >= 4")
        if self.lr_by_width and (len(self.lr_by_width) != len(self.widths) or min(self.lr_by_width) <= 0):
            raise ValueError(f"SweepConfig.lr_by_width needs one learning rate > 0 per width {self.widths}, "
                             f"got {self.lr_by_width}")
        if not self.pruning_seeds or self.workers < 0 or not 0 <= self.min_accuracy <= 1:
            raise ValueError("SweepConfig needs at least one pruning seed, workers >= 0 and min_accuracy in [0, 1]")
        if self.frontier_target and self.frontier_target not in (self.prune.target_loss, *self.prune.extra_targets):
            raise ValueError(f"SweepConfig.frontier_target {self.frontier_target:g} must be prune.target_loss "
                             f"({self.prune.target_loss:g}) or one of prune.extra_targets {self.prune.extra_targets}")
        bad_w = [w for w in self.widths if w < self.d_head or w % self.d_head]
        if not self.widths or bad_w:
            raise ValueError(f"SweepConfig.widths must be non-empty multiples of d_head={self.d_head}, got {self.widths}")
        if any(not 0 < f < 1 for f in self.weight_fracs):
            raise ValueError(f"SweepConfig.weight_fracs must be in (0, 1) (dense models: dense_baselines), got {self.weight_fracs}")
        if any(not 0 < a <= 1 for a in (*self.act_sparsities, self.dense_act_sparsity)):
            raise ValueError("SweepConfig.act_sparsities and dense_act_sparsity must be in (0, 1] (1 = off)")
        for name in ("widths", "weight_fracs", "act_sparsities", "tasks", "pruning_seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"SweepConfig.{name} holds duplicates: {values}")
        if not self.dense_baselines and not (self.weight_fracs and self.act_sparsities):
            raise ValueError("SweepConfig: empty grid (no weight_fracs or act_sparsities, and no dense baselines)")
        if not self.tasks:
            raise ValueError("SweepConfig.tasks must name at least one task (see `sparsecircuits tasks`)")
        from sparsecircuits.tasks.base import get_task

        for t in self.tasks:
            get_task(t)  # TaskError (a ValueError) naming the known tasks
        get_preset(self.preset)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"]["sources"] = list(self.data.sources)
        return json.loads(json.dumps(d))
