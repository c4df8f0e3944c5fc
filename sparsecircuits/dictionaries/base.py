"""The one `Dictionary` interface for sparse dictionaries (SAEs and transcoders) and its registry.

A dictionary reads an activation x at hook `hook` and predicts the activation y at `out_hook`
(y = x for an SAE, the MLP output for a transcoder, Dunefsky et al. 2024):

    pre_F = x @ W_enc + b_enc                 (no b_dec subtraction: SAELens `apply_b_dec_to_input`
                                               false; loaders fold it into b_enc)
    z_F   = activation(pre_F)                 (per architecture; see `architectures.py`)
    ŷ     = z_F @ W_dec + b_dec [+ x @ W_skip.T] (optional affine skip connection for transcoders)

Weights use the SAELens layout: W_enc [d_in, width], W_dec [width, d_out], b_enc [width],
b_dec [d_out], W_skip [d_out, d_in] (the circuit-tracer layout). Architectures register themselves in
`ARCHITECTURES` (`@register`); the CLI's `--arch` choices come from it. A transcoder is not a separate
architecture: any architecture becomes one when `out_hook` differs from `hook`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from sparsecircuits.config_utils import opt, require_at_least

ARCHITECTURES: dict[str, type[Dictionary]] = {}


def register(cls: type[Dictionary]) -> type[Dictionary]:
    """Class decorator: add a `Dictionary` subclass to `ARCHITECTURES` under its `arch` name."""
    if cls.arch in ARCHITECTURES:
        raise ValueError(f"dictionary architecture {cls.arch!r} is registered twice")
    ARCHITECTURES[cls.arch] = cls
    return cls


@dataclass
class DictConfig:
    """Shape and placement of one dictionary (training hyperparameters live in `DictTrainConfig`)."""

    arch: str = opt("topk", "architecture (see ARCHITECTURES)")
    hook: str = opt("", "hook the dictionary reads, e.g. blocks.1.hook_resid_post")
    out_hook: str = opt("", "hook it predicts; empty = `hook` (an SAE); else a transcoder")
    d_in: int = opt(0, "width of the input activation")
    d_out: int = opt(0, "width of the predicted activation; 0 = d_in")
    width: int = opt(1024, "number of features")
    k: int = opt(32, "active features per token (topk) or on average (batchtopk)")
    skip: bool = opt(False, "affine skip connection x @ W_skip.T (skip transcoders)")

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"DictConfig.arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        if not self.hook:
            raise ValueError("DictConfig.hook must name a hook point")
        self.out_hook = self.out_hook or self.hook
        self.d_out = self.d_out or self.d_in
        require_at_least(self, 1, "d_in", "d_out", "width")
        if ARCHITECTURES[self.arch].uses_k and not 1 <= self.k <= self.width:
            raise ValueError(f"DictConfig.k must be in [1, width={self.width}], got {self.k}")

    @property
    def is_transcoder(self) -> bool:
        return self.out_hook != self.hook

    @property
    def name(self) -> str:
        """A short default name: arch, width and (for top-k architectures) k."""
        kind = "tc" if self.is_transcoder else "sae"
        k = f"-k{self.k}" if ARCHITECTURES[self.arch].uses_k else ""
        return f"{kind}-{self.arch}-w{self.width}{k}"


@dataclass
class DictOutput:
    """What `Dictionary.forward` returns."""

    recon: Tensor  # [..., d_out] prediction ŷ
    acts: Tensor  # [..., width] feature activations z
    error: Tensor  # [..., d_out] target - ŷ (the error node of Marks et al.)


@dataclass
class SparsityTerms:
    """Architecture-specific training pieces computed from the pre-activations."""

    acts: Tensor  # [batch, width] training-time activations (differentiable)
    penalty: Tensor  # scalar sparsity penalty (already weighted), 0 for top-k architectures
    # Per-token top-k: the kept features and their values ([batch, k]), so training can decode
    # sparsely (k rows of W_dec per token instead of all `width`); None for the others.
    indices: Tensor | None = None
    values: Tensor | None = None


class Dictionary(nn.Module):
    """Base class: encode / decode / forward shared by every architecture; see the module docstring."""

    arch: ClassVar[str] = ""
    uses_k: ClassVar[bool] = False  # whether `DictConfig.k` matters
    unit_decoder: ClassVar[bool] = True  # decoder rows kept at unit norm while training
    has_threshold: ClassVar[bool] = False  # stores a per-feature `threshold` (JumpReLU form)

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, d_in, d_out = cfg.width, cfg.d_in, cfg.d_out
        self.W_enc = nn.Parameter(torch.empty(d_in, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip else None
        init_dictionary(self)

    # --- inference -------------------------------------------------------------------------------
    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... width"]:
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        """Inference-time nonlinearity (per token; BatchTopK uses its threshold here)."""
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... width"]:
        self._check_width(x, self.cfg.d_in, "input")
        return self.activation(self.pre_acts(x))

    def decode(self, acts: Float[Tensor, "... width"], x: Tensor | None = None) -> Float[Tensor, "... d_out"]:
        out = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("this transcoder has a skip connection: decode(acts, x) needs its input x")
            out = out + x @ self.W_skip.T
        return out

    def decode_sparse(self, indices: Tensor, values: Tensor, x: Tensor | None = None) -> Tensor:
        """`decode` for activations given as k (feature, value) pairs per row ([batch, k] each):
        equal to decode(dense acts), with k instead of `width` decoder rows per token."""
        out = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("this transcoder has a skip connection: decode_sparse(..., x) needs its input x")
            out = out + x @ self.W_skip.T
        return out

    def forward(self, x: Float[Tensor, "... d_in"], target: Tensor | None = None) -> DictOutput:
        """Encode and decode; `error` is target - recon (target defaults to x for an SAE)."""
        if target is None:
            if self.cfg.is_transcoder:
                raise ValueError("a transcoder's error needs the target activation: forward(x, target)")
            target = x
        acts = self.encode(x)
        recon = self.decode(acts, x)
        self._check_width(target, self.cfg.d_out, "target")
        return DictOutput(recon=recon, acts=acts, error=target - recon)

    def _check_width(self, t: Tensor, d: int, what: str) -> None:
        if t.shape[-1] != d:
            raise ValueError(
                f"dictionary {self.cfg.name} on {self.cfg.hook!r} expects {what} width {d}, got shape {tuple(t.shape)}"
            )

    # --- training hooks (overridden by architectures) -----------------------------------------------
    def sparsity_terms(self, x_BD: Tensor, pre_BF: Tensor, coefs: SparsityCoefs) -> SparsityTerms:
        """Training-time activations and penalty for input x and its pre-activations (with grad)."""
        raise NotImplementedError

    def threshold_vector(self) -> Tensor | None:
        """Per-feature JumpReLU threshold for saving (None when the architecture has none)."""
        return None

    def load_threshold(self, threshold: Tensor) -> None:
        raise ValueError(f"architecture {self.arch!r} has no threshold")


@dataclass
class SparsityCoefs:
    """Loss coefficients handed to `Dictionary.sparsity_terms` at one step."""

    l1: float  # ReLU: weight of sum_i |z_i| * ||W_dec_i||
    l0: float  # JumpReLU: weight of the (straight-through) L0
    bandwidth: float  # JumpReLU: width of the rectangle kernel of the straight-through estimator


@torch.no_grad()
def init_dictionary(d: Dictionary) -> None:
    """All weight initialisation (Gao et al. 2024; Conerly et al. 2024, Anthropic).

    Decoder rows: random directions of unit norm. Encoder: the decoder transposed when d_in == d_out
    (tied init, fewer dead features), else random unit directions. Inputs are normalised to mean
    norm sqrt(d_in) in training, so unit encoder columns give pre-activations of order 1. Biases 0
    (training sets b_dec to the target mean); W_skip 0; thresholds are set by the architecture.
    """
    cfg = d.cfg
    W_dec = torch.randn(cfg.width, cfg.d_out)
    d.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
    if cfg.d_in == cfg.d_out:
        d.W_enc.copy_(d.W_dec.T)
    else:
        W_enc = torch.randn(cfg.d_in, cfg.width)
        d.W_enc.copy_(W_enc / W_enc.norm(dim=0, keepdim=True))
    d.b_enc.zero_()
    d.b_dec.zero_()
    if d.W_skip is not None:
        d.W_skip.zero_()


def make_dictionary(cfg: DictConfig) -> Dictionary:
    """A freshly initialised dictionary of the architecture named in `cfg`."""
    return ARCHITECTURES[cfg.arch](cfg)


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1 on (-1/2, 1/2) (Rajamanoharan et al. 2024)."""
    return (u.abs() < 0.5).to(u.dtype)



# The built-in architectures register themselves on import. Importing them here, after everything
# above is defined, fills `ARCHITECTURES` whichever module of the package is imported first (the
# package's `__init__` is lazy and no longer does it).
from sparsecircuits.dictionaries import architectures as _architectures  # noqa: E402, F401
