"""Dictionary graph: splice sparse dictionaries into the model so that every feature and every error
term is a node, and score the nodes (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647).

Sites. A `Site` is one spliced activation y at hook `name`, computed from x at `in_hook`:
  dictionary  an SAE (x = y: resid, attn_out, mlp_out, embed) or a transcoder (x = the MLP input,
              y = the MLP output; Dunefsky et al. 2024): y = f(x) W_dec + b_dec [+ x W_skipᵀ] + ε.
              Nodes: each feature f_i at each position, and the error ε as one node per position;
  neurons     y's channels are the nodes, with no error (MLP neurons at `mlp.hook_post`, for the
              features-vs-neurons comparison);
  whole       y is one node per position (the token embedding when no dictionary sits there).
Values per site: f [batch, pos, width] and ε [batch, pos, d] (`NodeValues`).

Splice modes (the hooks of `site_hooks`):
  record  compute f and ε from the live activations, change nothing;
  grad    y + (f̃ − sg f̃) W_dec + (ε̃ − sg ε̃) with leaves f̃ = f, ε̃ = ε (sg = stop-gradient): the value
          is exactly y and the gradient to everything upstream is the identity, i.e. the paper's
          x = x̂(f) + stopgrad(x − x̂) arrangement, while ∂m/∂f̃ and ∂m/∂ε̃ are the exact node gradients;
  set     y + (f' − f) W_dec + (ε' − ε) with (f', ε') = rule(f, ε) and f, ε computed live, so features
          downstream of a change respond to it (exact patching, integrated gradients, ablations).
`cut` mode, for edges, lives in `circuit.py`.

Node effects, with the DESIGN.md sign (≈ m(clean) − m(node patched), positive = helps) and a patch
value a_p per node (the counterfactual prompt's, zero or the mean: `patch_values`):
  exact   one node (site, position, feature or error) patched per forward, `chunk` nodes per batched
          forward; features that equal their patch value on every example are skipped (effect 0);
  attrib  attribution patching: −∇_a m · (a_p − a), every node from one forward and backward;
  ig      integrated gradients: −mean over α ∈ {0, 1/N, …, (N−1)/N} of ∇_a m at (1 − α) a + α a_p,
          times (a_p − a), one site interpolated at a time (N = 10 in the paper); N = 1 is attrib.
An error node's effect is its gradient dotted with its change, one scalar per (site, position).
`metric_fn(logits) -> [batch]` is any per-example scalar (higher = task done better); it is summed
over the batch before differentiating, so each example's gradient is its own. A metric of an inner
activation (e.g. a probe on the residual stream, for SHIFT) can read it from a hook the caller attaches
around the call (`with model.hooks(...)`): caller hooks run before the splice hooks on a shared hook
point, so read a point after the last spliced site (e.g. `ln_final.hook_normalized`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.feature_circuits.config import ABLATIONS, METHODS  # torch-free, for the CLI
from sparsecircuits.model.hooks import HookFn, HookPoint
from sparsecircuits.model.transformer import Transformer

MetricFn = Callable[[Tensor], Tensor]  # logits [batch, pos, vocab] -> per-example metric [batch]
Progress = Callable[[str, int, int], None]  # (stage, done, total)
SITE_KINDS = ("dictionary", "neurons", "whole")


@dataclass
class Site:
    name: str  # output hook: where the reconstruction replaces the activation (the nodes' Node.site)
    in_hook: str  # hook the encoder reads (== name except for transcoders)
    layer: int  # block index, -1 for the embedding
    kind: str  # one of SITE_KINDS
    width: int  # feature nodes per position (0 for "whole")
    d_out: int  # width of the activation at `name`
    dictionary: Dictionary | None = None


@dataclass
class NodeValues:
    feats: dict[str, Tensor]  # site name -> [batch, pos, width]
    errors: dict[str, Tensor]  # site name -> [batch, pos, d_out]


@dataclass
class NodeEffects:
    feats: dict[str, Tensor]  # site name -> [batch, pos, width], per-example scores
    errors: dict[str, Tensor]  # site name -> [batch, pos]
    metric: Tensor  # [batch] metric of the clean run
    method: str
    grads: NodeValues | None = None  # ∇m at the nodes (IG: averaged over α), for edges


# --- sites -------------------------------------------------------------------------------------------

def execution_order(model: Transformer) -> list[str]:
    """Hook names in forward order (`Transformer.execution_order`)."""
    return model.execution_order()


def _layer(hook: str) -> int:
    return int(hook.split(".")[1]) if hook.startswith("blocks.") else -1


def make_sites(model: Transformer, dictionaries: list[Dictionary], embed: bool = True) -> list[Site]:
    """Sites for dictionaries (validated against the model), in forward order; with `embed`, the
    token embedding is added as a "whole" site unless a dictionary sits at `hook_embed`."""
    from sparsecircuits.dictionaries.activations import hook_widths

    order = execution_order(model)
    sites = []
    for d in dictionaries:
        cfg = d.cfg
        for h in (cfg.hook, cfg.out_hook):
            if h not in model.hook_points:
                model.resolve_hook_names(h)  # raises a ValueError naming close matches
            if h not in order:
                raise ValueError(f"dictionary {cfg.name}: hook {h!r} does not run in this model's forward pass")
        widths = hook_widths(model, [cfg.hook, cfg.out_hook])
        if widths[cfg.hook] != cfg.d_in or widths[cfg.out_hook] != cfg.d_out:
            raise ValueError(f"dictionary {cfg.name} on {cfg.hook!r}: d_in={cfg.d_in}, d_out={cfg.d_out}, but the "
                             f"model's activations there are {widths[cfg.hook]} and {widths[cfg.out_hook]} wide")
        if order.index(cfg.hook) > order.index(cfg.out_hook):
            raise ValueError(f"transcoder input hook {cfg.hook!r} runs after its output hook {cfg.out_hook!r}")
        sites.append(Site(cfg.out_hook, cfg.hook, _layer(cfg.out_hook), "dictionary", cfg.width, cfg.d_out, d))
    if embed and "hook_embed" not in {s.name for s in sites}:
        sites.append(Site("hook_embed", "hook_embed", -1, "whole", 0, model.cfg.d_model))
    return sort_sites(model, sites, order)


def neuron_sites(model: Transformer, layers: list[int] | None = None, embed: bool = False) -> list[Site]:
    """MLP neurons (`mlp.hook_post`) as nodes, for the features-vs-neurons comparison."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    d_mlp = model.cfg.d_mlp
    sites = [Site(f"blocks.{L}.mlp.hook_post", f"blocks.{L}.mlp.hook_post", L, "neurons", d_mlp, d_mlp) for L in layers]
    if embed:
        sites.append(Site("hook_embed", "hook_embed", -1, "whole", 0, model.cfg.d_model))
    return sort_sites(model, sites)


def sort_sites(model: Transformer, sites: list[Site], order: list[str] | None = None) -> list[Site]:
    """Sites in forward order; two sites on one output hook are an error."""
    order = order or execution_order(model)
    names = [s.name for s in sites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two dictionaries write the same hook {dup[0]!r}; splice one per output hook")
    return sorted(sites, key=lambda s: order.index(s.name))


# --- encode / reconstruct ------------------------------------------------------------------------------

def encode(site: Site, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(f, ε) of a site from its input x and output y."""
    if site.kind == "neurons":
        return y, torch.zeros_like(y)
    if site.kind == "whole":
        return y.new_zeros(*y.shape[:-1], 0), y
    d = site.dictionary
    assert d is not None
    f = d.encode(x.to(d.W_enc.dtype)).to(y.dtype)
    return f, y - reconstruct(site, f, x)


def feature_out(site: Site, f: Tensor) -> Tensor:
    """The features' linear contribution to y (no bias, no skip): f W_dec (neurons: f itself)."""
    if site.kind == "neurons":
        return f
    if site.kind == "whole":
        return f.new_zeros(*f.shape[:-1], site.d_out)
    d = site.dictionary
    assert d is not None
    return (f.to(d.W_dec.dtype) @ d.W_dec).to(f.dtype)


def reconstruct(site: Site, f: Tensor, x: Tensor) -> Tensor:
    """x̂ = f W_dec + b_dec [+ x W_skipᵀ] (neurons: f; whole: 0)."""
    if site.kind != "dictionary":
        return feature_out(site, f)
    d = site.dictionary
    assert d is not None
    return d.decode(f.to(d.W_dec.dtype), x.to(d.W_dec.dtype)).to(f.dtype)


SiteFn = Callable[[Site, Tensor, Tensor], Tensor | None]  # (site, x, y) -> new y or None


def site_hooks(sites: list[Site], fn: SiteFn) -> list[tuple[str, HookFn]]:
    """Hooks calling fn(site, x, y) at each site's output hook, x read earlier at its input hook."""
    hooks: list[tuple[str, HookFn]] = []
    for site in sites:
        hooks += _one_site(site, fn)
    return hooks


def _one_site(site: Site, fn: SiteFn) -> list[tuple[str, HookFn]]:
    state: dict[str, Tensor] = {}

    def read(x: Tensor, hook: HookPoint) -> None:
        state["x"] = x

    def write(y: Tensor, hook: HookPoint) -> Tensor | None:
        x = state.pop("x") if site.in_hook != site.name else y
        return fn(site, x, y)

    return ([(site.in_hook, read)] if site.in_hook != site.name else []) + [(site.name, write)]


Rule = Callable[[Site, Tensor, Tensor], tuple[Tensor, Tensor]]  # (site, f, ε) -> (f', ε')


def set_nodes(rule: Rule) -> SiteFn:
    """Splice mode `set`: y + (f' − f) W_dec + (ε' − ε), f and ε computed live (module docstring)."""

    def fn(site: Site, x: Tensor, y: Tensor) -> Tensor:
        f, e = encode(site, x, y)
        f_new, e_new = rule(site, f, e)
        return y + feature_out(site, f_new - f) + (e_new - e)

    return fn


def gradient_splice(clean: NodeValues, leaves: dict[str, tuple[Tensor, Tensor]]) -> SiteFn:
    """Splice mode `grad`: y + (f̃ − sg f̃) W_dec + (ε̃ − sg ε̃) with new leaves f̃, ε̃ (equal to the clean
    values, stored in `leaves`): the value is y exactly and the gradient upstream the identity."""

    def fn(site: Site, x: Tensor, y: Tensor) -> Tensor:
        f = clean.feats[site.name].detach().clone().requires_grad_(True)
        e = clean.errors[site.name].detach().clone().requires_grad_(True)
        leaves[site.name] = (f, e)
        return y + (feature_out(site, f) - feature_out(site, f).detach()) + (e - e.detach())

    return fn


# --- values and patches --------------------------------------------------------------------------------

@torch.no_grad()
def node_values(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"]) -> NodeValues:
    """Feature activations and error terms of every site on `tokens` (splice mode `record`)."""
    out = NodeValues({}, {})

    def record(site: Site, x: Tensor, y: Tensor) -> None:
        out.feats[site.name], out.errors[site.name] = encode(site, x, y)

    with model.hooks(site_hooks(sites, record)):
        model(tokens)
    return out


def mean_values(values: NodeValues, lengths: Int[Tensor, " batch"] | None = None) -> NodeValues:
    """Per-channel means over the real (non-padding) tokens, shaped [1, 1, width] / [1, 1, d]."""

    def mean(t: Tensor) -> Tensor:
        B, P = t.shape[:2]
        real = torch.ones(B, P, dtype=torch.bool, device=t.device)
        if lengths is not None:
            real = torch.arange(P, device=t.device)[None] < lengths.to(t.device)[:, None]
        return t[real].mean(0).view(1, 1, -1) if t.shape[-1] else t[:1, :1]

    return NodeValues({k: mean(v) for k, v in values.feats.items()}, {k: mean(v) for k, v in values.errors.items()})


def patch_values(model: Transformer, sites: list[Site], clean: NodeValues, ablation: str,
                 cf_tokens: Int[Tensor, "batch pos"] | None = None,
                 lengths: Int[Tensor, " batch"] | None = None) -> NodeValues:
    """Patch values a_p of every node: the counterfactual prompts' values, zero, or the mean over
    the clean prompts' tokens; same shapes as `clean`."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if ablation == "counterfactual":
        if cf_tokens is None:
            raise ValueError("counterfactual patching needs counterfactual prompts (this task has none); "
                             "use --ablation zero or mean")
        return node_values(model, sites, cf_tokens)
    if ablation == "zero":
        return NodeValues({k: torch.zeros_like(v) for k, v in clean.feats.items()},
                          {k: torch.zeros_like(v) for k, v in clean.errors.items()})
    means = mean_values(clean, lengths)
    return NodeValues({k: means.feats[k].expand_as(v).clone() for k, v in clean.feats.items()},
                      {k: means.errors[k].expand_as(v).clone() for k, v in clean.errors.items()})


# --- node effects --------------------------------------------------------------------------------------

def _effects(grads: NodeValues, clean: NodeValues, patch: NodeValues) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    feats = {k: -(g * (patch.feats[k] - clean.feats[k])) for k, g in grads.feats.items()}
    errors = {k: -(g * (patch.errors[k] - clean.errors[k])).sum(-1) for k, g in grads.errors.items()}
    return feats, errors


def attribution_effects(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                        clean: NodeValues, patch: NodeValues) -> NodeEffects:
    """Attribution patching, −∇_a m · (a_p − a), every node from one forward and backward."""
    leaves: dict[str, tuple[Tensor, Tensor]] = {}
    with torch.enable_grad(), model.hooks(site_hooks(sites, gradient_splice(clean, leaves))):
        m = metric_fn(model(tokens))
        flat = [t for pair in leaves.values() for t in pair]
        grads = torch.autograd.grad(m.sum(), flat, allow_unused=True)
    g = NodeValues({}, {})
    for i, name in enumerate(leaves):
        gf, ge = grads[2 * i], grads[2 * i + 1]
        g.feats[name] = torch.zeros_like(leaves[name][0]) if gf is None else gf.detach()
        g.errors[name] = torch.zeros_like(leaves[name][1]) if ge is None else ge.detach()
    feats, errors = _effects(g, clean, patch)
    return NodeEffects(feats, errors, m.detach(), "attrib", g)


def ig_effects(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
               clean: NodeValues, patch: NodeValues, steps: int = 10, progress: Progress | None = None) -> NodeEffects:
    """Integrated gradients, one site interpolated at a time (module docstring)."""
    if steps < 1:
        raise ValueError(f"ig steps must be >= 1, got {steps}")
    g = NodeValues({}, {})
    metric = None
    for n, site in enumerate(sites):
        a_f, a_e = clean.feats[site.name], clean.errors[site.name]
        p_f, p_e = patch.feats[site.name], patch.errors[site.name]
        sum_f, sum_e = torch.zeros_like(a_f), torch.zeros_like(a_e)
        for k in range(steps):
            alpha = k / steps
            f = ((1 - alpha) * a_f + alpha * p_f).detach().requires_grad_(True)
            e = ((1 - alpha) * a_e + alpha * p_e).detach().requires_grad_(True)
            with torch.enable_grad(), model.hooks(site_hooks([site], set_nodes(_fixed(f, e)))):
                m = metric_fn(model(tokens))
                gf, ge = torch.autograd.grad(m.sum(), [f, e], allow_unused=True)
            if k == 0:
                metric = m.detach()
            sum_f += 0 if gf is None else gf.detach()
            sum_e += 0 if ge is None else ge.detach()
        g.feats[site.name], g.errors[site.name] = sum_f / steps, sum_e / steps
        if progress:
            progress("integrated gradients", n + 1, len(sites))
    assert metric is not None
    feats, errors = _effects(g, clean, patch)
    return NodeEffects(feats, errors, metric, "ig", g)


def _fixed(f: Tensor, e: Tensor) -> Rule:
    """A `set` rule putting the given values at its site."""
    return lambda site, f0, e0: (f, e)


@torch.no_grad()
def exact_effects(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                  clean: NodeValues, patch: NodeValues, chunk: int = 32,
                  progress: Progress | None = None) -> NodeEffects:
    """Exact patching: m(clean) − m(one node set to its patch value), for every node that differs
    from its patch value on some example; `chunk` nodes share one batched forward."""
    base = metric_fn(model(tokens))
    feats = {s.name: torch.zeros_like(clean.feats[s.name]) for s in sites}
    errors = {s.name: clean.errors[s.name].new_zeros(clean.errors[s.name].shape[:2]) for s in sites}
    todo: list[tuple[str, int, int]] = []  # (site, position, feature index or -1 for the error)
    for s in sites:
        diff_f = (clean.feats[s.name] != patch.feats[s.name]).any(0)  # [pos, width]
        todo += [(s.name, int(p), int(i)) for p, i in torch.nonzero(diff_f).tolist()]
        diff_e = (clean.errors[s.name] != patch.errors[s.name]).any(0).any(-1)  # [pos]
        todo += [(s.name, int(p), -1) for p in torch.nonzero(diff_e).flatten().tolist()]
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        m = _patched_metric(model, sites, tokens, metric_fn, patch, part)
        for c, (name, p, i) in enumerate(part):
            if i >= 0:
                feats[name][:, p, i] = base - m[c]
            else:
                errors[name][:, p] = base - m[c]
        if progress:
            progress("exact patching", min(start + chunk, len(todo)), len(todo))
    return NodeEffects(feats, errors, base, "exact")


def _patched_metric(model: Transformer, sites: list[Site], tokens: Tensor, metric_fn: MetricFn, patch: NodeValues,
                    part: list[tuple[str, int, int]]) -> Tensor:
    """[len(part), batch] metric with node c of `part` patched in copy c of the batch."""
    k, B = len(part), tokens.shape[0]

    def rule(site: Site, f: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        f4, e4 = f.clone().view(k, B, *f.shape[1:]), e.clone().view(k, B, *e.shape[1:])
        for c, (name, p, i) in enumerate(part):
            if name != site.name:
                continue
            if i >= 0:
                f4[c, :, p, i] = patch.feats[name][:, p, i]
            else:
                e4[c, :, p] = patch.errors[name][:, p]
        return f4.view_as(f), e4.view_as(e)

    with model.hooks(site_hooks(sites, set_nodes(rule))):
        logits = model(tokens.repeat(k, 1))
    return torch.stack([metric_fn(chunk) for chunk in logits.view(k, B, *logits.shape[1:])])


def node_effects(model: Transformer, sites: list[Site], tokens: Int[Tensor, "batch pos"], metric_fn: MetricFn,
                 patch: NodeValues, method: str = "ig", steps: int = 10, clean: NodeValues | None = None,
                 progress: Progress | None = None) -> NodeEffects:
    """Scores of every feature and error node of `sites` on a batch of prompts (module docstring).
    `grads` of the result (∇m at the nodes, for edges) are IG's averaged gradients for "ig" and the
    clean-point gradients otherwise."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    clean = node_values(model, sites, tokens) if clean is None else clean
    if method == "exact":
        out = exact_effects(model, sites, tokens, metric_fn, clean, patch, progress=progress)
        out.grads = attribution_effects(model, sites, tokens, metric_fn, clean, patch).grads
        return out
    if method == "attrib":
        return attribution_effects(model, sites, tokens, metric_fn, clean, patch)
    return ig_effects(model, sites, tokens, metric_fn, clean, patch, steps, progress)


__all__ = ["ABLATIONS", "METHODS", "SITE_KINDS", "MetricFn", "NodeEffects", "NodeValues", "Site", "attribution_effects",
           "encode", "exact_effects", "execution_order", "feature_out", "gradient_splice", "ig_effects", "make_sites", "mean_values",
           "neuron_sites", "node_effects", "node_values", "patch_values", "reconstruct", "set_nodes", "site_hooks",
           "sort_sites"]

