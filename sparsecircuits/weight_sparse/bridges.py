"""Bridges between a dense model and a weight-sparse model (Gao et al. 2025, "Weight-sparse
transformers have interpretable circuits", arXiv 2511.13653, section "Bridges").

At each of the 2L+1 residual sites (`bridge_sites`: `blocks.{i}.hook_resid_pre` and
`blocks.{i}.hook_resid_mid` of every block, and the last block's `hook_resid_post`) a bridge holds
  * an encoder, dense -> sparse: `enc(h) = AbsTopK(W_enc h + b_enc)` (keeps `enc_topk` of the entries);
  * a decoder, sparse -> dense: `dec(z) = W_dec z + b_dec`.
They are trained jointly with the sparse model, the dense model frozen (`weight_sparse/bridges_train.py`). The loss
(`bridge_loss`) of one batch:
  1. the sparse model's next-token cross-entropy (`lm_coef`);
  2. normalised MSE in both directions, averaged over sites (`nmse_coef`):
     NMSE(dec(h_sparse), h_dense) + NMSE(enc(h_dense), h_sparse), with
     NMSE(p, y) = sum ||p - y||^2 / sum ||y - mean(y)||^2 (1 = as good as predicting the mean);
  3. KL(dense logits || hybrid logits), averaged over sites (`kl_coef`), for both kinds of hybrid:
     dense->sparse (the dense model up to site s, encoded, the rest of the sparse model) and
     sparse->dense (the sparse model up to s, decoded, the rest of the dense model). With
     `hybrid_sites` = n > 0 only n sites per direction, drawn per step, take part in this term
     (a pure function of (seed, step), so a resumed run draws the same ones); 0 = every site.
Hybrids are run by splicing: the receiving model runs with a hook that replaces its activation at
the site. Its layers before the site are computed and discarded, which costs time but not
correctness (the replaced activation does not depend on them, so no gradient reaches them).
Differences in d_model are allowed; vocabulary, context and layer count must match (`check_compatible`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.sparsity import abs_topk
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.weight_sparse.config import BridgeConfig  # torch-free, for the CLI


def bridge_sites(cfg: ModelConfig) -> list[str]:
    """The 2L+1 residual sites, in forward order: resid_pre and resid_mid of each block, final resid_post."""
    if cfg.parallel_attn_mlp:
        raise ValueError("bridges need a resid_mid site; models with parallel attention and MLP have none")
    sites = [f"blocks.{i}.hook_resid_{w}" for i in range(cfg.n_layers) for w in ("pre", "mid")]
    return sites + [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]


def check_compatible(dense: ModelConfig, sparse: ModelConfig) -> None:
    """Raise ValueError unless the two models can be bridged (same vocab, context and layer count)."""
    diffs = [f"{name}: dense {getattr(dense, name)} vs sparse {getattr(sparse, name)}"
             for name in ("d_vocab", "n_ctx", "n_layers") if getattr(dense, name) != getattr(sparse, name)]
    if diffs:
        raise ValueError("the dense and sparse checkpoints cannot be bridged: " + "; ".join(diffs))
    for cfg in (dense, sparse):
        bridge_sites(cfg)  # raises for parallel attention/MLP


class Bridges(nn.Module):
    """Encoders and decoders at every bridge site, stacked: `W_enc[s]` is `[d_sparse, d_dense]`."""

    def __init__(self, sites: list[str], d_dense: int, d_sparse: int, enc_topk: float) -> None:
        super().__init__()
        self.sites, self.d_dense, self.d_sparse, self.enc_topk = list(sites), d_dense, d_sparse, enc_topk
        n = len(sites)
        self.W_enc = nn.Parameter(torch.empty(n, d_sparse, d_dense))
        self.b_enc = nn.Parameter(torch.zeros(n, d_sparse))
        self.W_dec = nn.Parameter(torch.empty(n, d_dense, d_sparse))
        self.b_dec = nn.Parameter(torch.zeros(n, d_dense))
        init_bridges_(self)

    @classmethod
    def identity(cls, sites: list[str], d_model: int) -> Bridges:
        """Identity encoders and decoders with no top-k (between a model and itself; for tests)."""
        b = cls(sites, d_model, d_model, 1.0)
        with torch.no_grad():
            b.W_enc.copy_(torch.eye(d_model).expand_as(b.W_enc))
            b.W_dec.copy_(torch.eye(d_model).expand_as(b.W_dec))
        return b

    def index(self, site: str) -> int:
        if site not in self.sites:
            raise ValueError(f"no bridge at site {site!r}; bridge sites: {', '.join(self.sites)}")
        return self.sites.index(site)

    def encode(self, site: str, h: Float[Tensor, "... d_dense"]) -> Float[Tensor, "... d_sparse"]:
        i = self.index(site)
        return abs_topk(F.linear(h, self.W_enc[i], self.b_enc[i]), self.enc_topk)

    def decode(self, site: str, z: Float[Tensor, "... d_sparse"]) -> Float[Tensor, "... d_dense"]:
        i = self.index(site)
        return F.linear(z, self.W_dec[i], self.b_dec[i])


@torch.no_grad()
def init_bridges_(b: Bridges) -> None:
    """All bridge initialisation: weights ~ N(0, 1 / fan_in), biases 0 (replaced by `fit_lstsq_`)."""
    b.W_enc.normal_(0.0, b.d_dense ** -0.5)
    b.W_dec.normal_(0.0, b.d_sparse ** -0.5)
    b.b_enc.zero_()
    b.b_dec.zero_()


def _ridge_fit(x_NI: Tensor, y_NO: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """W [O, I], b [O] minimising ||x W^T + b - y||^2 + ridge * mean(x^2) * N * ||W||^2."""
    x1 = torch.cat([x_NI, torch.ones(len(x_NI), 1, dtype=x_NI.dtype)], 1).double()
    reg = torch.eye(x1.shape[1], dtype=torch.float64) * ridge * float(x_NI.double().pow(2).mean()) * len(x1)
    reg[-1, -1] = 0.0  # no ridge on the bias
    sol = torch.linalg.solve(x1.T @ x1 + reg, x1.T @ y_NO.double())  # [I + 1, O]
    return sol[:-1].T.float(), sol[-1].float()


@torch.no_grad()
def fit_lstsq_(b: Bridges, dense_acts: dict[str, Tensor], sparse_acts: dict[str, Tensor], ridge: float) -> None:
    """Set every encoder and decoder to the ridge least-squares linear map between the activations."""
    for i, site in enumerate(b.sites):
        hd, hs = dense_acts[site].flatten(0, -2), sparse_acts[site].flatten(0, -2)
        b.W_enc[i], b.b_enc[i] = _ridge_fit(hd, hs, ridge)
        b.W_dec[i], b.b_dec[i] = _ridge_fit(hs, hd, ridge)


def nmse(pred: Float[Tensor, "... d"], target: Float[Tensor, "... d"]) -> Float[Tensor, ""]:
    """sum ||pred - target||^2 / sum ||target - mean(target)||^2 over all leading dims."""
    t = target.flatten(0, -2)
    return (pred.flatten(0, -2) - t).pow(2).sum() / (t - t.mean(0)).pow(2).sum().clamp_min(1e-12)


def kl_to_teacher(teacher: Float[Tensor, "... vocab"], student: Float[Tensor, "... vocab"]) -> Float[Tensor, ""]:
    """KL(teacher || student) of next-token distributions, mean over positions, in nats."""
    t, s = teacher.float().log_softmax(-1), student.float().log_softmax(-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def spliced_logits(
    model: Transformer, tokens: Int[Tensor, "batch pos"], site: str, value: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos vocab"]:
    """Run `model` with its activation at `site` replaced by `value` (the rest of a hybrid pass)."""
    with model.hooks([(site, lambda x, hook: value.to(x.dtype))]):
        return model(tokens)


def hybrid_sites_at(sites: list[str], n: int, seed: int, step: int) -> list[str]:
    """The `n` sites (0 = all) whose hybrids enter the loss at `step`: a pure function of (seed, step)."""
    if n == 0 or n >= len(sites):
        return list(sites)
    digest = hashlib.sha256(f"bridge_sites\0{seed}\0{step}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return [sites[i] for i in sorted(torch.randperm(len(sites), generator=g)[:n].tolist())]


@dataclass
class BridgeLoss:
    total: Tensor  # scalar with the autograd graph
    lm: float  # sparse model's next-token loss, nats
    nmse_dec: float  # NMSE(dec(h_sparse), h_dense), mean over sites
    nmse_enc: float  # NMSE(enc(h_dense), h_sparse), mean over sites
    kl_d2s: float  # KL(dense || dense->sparse hybrid), mean over the hybrid sites
    kl_s2d: float  # KL(dense || sparse->dense hybrid)

    def as_dict(self) -> dict[str, float]:
        names = ("lm", "nmse_dec", "nmse_enc", "kl_d2s", "kl_s2d")
        return {"loss": float(self.total.detach()), **{k: getattr(self, k) for k in names}}


def bridge_loss(
    dense: Transformer, sparse: Transformer, bridges: Bridges, tokens: Int[Tensor, "batch pos_plus_1"],
    cfg: BridgeConfig, kl_sites: list[str] | None = None,
) -> BridgeLoss:
    """The joint loss of one batch (module docstring); `kl_sites` default: every site."""
    inp, sites = tokens[:, :-1], bridges.sites
    kl_sites = sites if kl_sites is None else kl_sites
    with torch.no_grad():
        dense_logits, dense_cache = dense.run_with_cache(inp, names_filter=sites)
    sparse_logits, sparse_cache = sparse.run_with_cache(inp, names_filter=sites, detach=False)
    lm = F.cross_entropy(sparse_logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    hd, hs = dense_cache.activations, sparse_cache.activations
    dec = torch.stack([nmse(bridges.decode(s, hs[s]), hd[s]) for s in sites]).mean()
    enc = torch.stack([nmse(bridges.encode(s, hd[s]), hs[s]) for s in sites]).mean()
    zero = sparse_logits.new_zeros(())
    d2s = s2d = zero
    if cfg.kl_coef > 0 and kl_sites:
        d2s = torch.stack([kl_to_teacher(dense_logits, spliced_logits(sparse, inp, s, bridges.encode(s, hd[s])))
                           for s in kl_sites]).mean()
        s2d = torch.stack([kl_to_teacher(dense_logits, spliced_logits(dense, inp, s, bridges.decode(s, hs[s])))
                           for s in kl_sites]).mean()
    total = cfg.lm_coef * lm + cfg.nmse_coef * (dec + enc) + cfg.kl_coef * (d2s + s2d)
    return BridgeLoss(total, float(lm.detach()), float(dec.detach()), float(enc.detach()),
                      float(d2s.detach()), float(s2d.detach()))


@torch.no_grad()
def bridge_metrics(
    dense: Transformer, sparse: Transformer, bridges: Bridges, windows: list[Int[Tensor, "batch pos_plus_1"]],
) -> dict[str, dict[str, float]]:
    """Per-site NMSE both ways and hybrid KL both ways on held-out windows, their means over sites, the
    sparse model's LM loss and, for scale, KL(dense || sparse) of the sparse model alone."""
    keys = ("nmse_dec", "nmse_enc", "kl_d2s", "kl_s2d")
    per_site = {s: dict.fromkeys(keys, 0.0) for s in bridges.sites}
    lm = kl_sparse = 0.0
    n = len(windows)
    for w in windows:
        inp = w[:, :-1]
        dense_logits, hd = dense.run_with_cache(inp, names_filter=bridges.sites)
        sparse_logits, hs = sparse.run_with_cache(inp, names_filter=bridges.sites)
        lm += float(F.cross_entropy(sparse_logits.float().flatten(0, 1), w[:, 1:].flatten())) / n
        kl_sparse += float(kl_to_teacher(dense_logits, sparse_logits)) / n
        for s, row in per_site.items():
            z = bridges.encode(s, hd[s])
            row["nmse_dec"] += float(nmse(bridges.decode(s, hs[s]), hd[s])) / n
            row["nmse_enc"] += float(nmse(z, hs[s])) / n
            row["kl_d2s"] += float(kl_to_teacher(dense_logits, spliced_logits(sparse, inp, s, z))) / n
            decoded = bridges.decode(s, hs[s])
            row["kl_s2d"] += float(kl_to_teacher(dense_logits, spliced_logits(dense, inp, s, decoded))) / n
    mean = {k: sum(v[k] for v in per_site.values()) / len(per_site) for k in keys}
    return {"mean": {**mean, "lm": lm, "kl_sparse": kl_sparse}, **per_site}
