"""Feature edits and linear probes: zero-ablating dictionary features, the feature lists a person
edits, and the probe of SHIFT (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647,
section 4; the pipeline is in `feature_circuits/shift.py`).

  features     a feature is named `{site}[{index}]`, the `graph.Node` id of a dictionary feature summed
               over positions (e.g. `blocks.1.hook_resid_post[17]`);
  ablate file  one feature per line; `#` starts a comment; blank lines are ignored (`parse_ablate_file`);
  ablation     the named features are set to 0 at every position (splice mode `set` of
               `dictionary_graph.py`: features downstream are recomputed from the edited stream, the
               error terms stay as they are);
  probe        logistic regression on an activation mean-pooled over positions, p(y = 1) = σ(w·x̄ + b),
               fitted by full-batch L-BFGS with a small L2 penalty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparsecircuits.feature_circuits.dictionary_graph import Site, set_nodes, site_hooks
from sparsecircuits.model.hooks import HookPoint
from sparsecircuits.model.transformer import Transformer

Feature = tuple[str, int]  # (site name, feature index)
_LINE = re.compile(r"^(?P<site>[\w.]+)\[(?P<index>\d+)\]$")


def feature_id(feature: Feature) -> str:
    return f"{feature[0]}[{feature[1]}]"


def parse_ablate_file(path: Path, sites: list[Site]) -> list[Feature]:
    """The features named in an ablate file (module docstring), checked against the sites; a
    ValueError names the first bad line (unparsable, unknown site, index out of range)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ablate file {str(path)!r} does not exist")
    widths = {s.name: s.width for s in sites if s.kind == "dictionary"}
    out: list[Feature] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"{path}:{n}: expected a feature like 'blocks.1.hook_resid_post[17]', got {line!r}")
        site, index = m["site"], int(m["index"])
        if site not in widths:
            raise ValueError(f"{path}:{n}: no dictionary at {site!r}; dictionary sites: {', '.join(sorted(widths))}")
        if index >= widths[site]:
            raise ValueError(f"{path}:{n}: feature {index} out of range; {site} has {widths[site]} features")
        if (site, index) not in out:
            out.append((site, index))
    return out


def zero_ablation_hooks(sites: list[Site], features: list[Feature]):  # noqa: ANN201
    """Hooks zero-ablating `features` at every position (module docstring)."""
    by_site: dict[str, list[int]] = {}
    for site, i in features:
        by_site.setdefault(site, []).append(i)
    active = [s for s in sites if s.name in by_site]

    def rule(site: Site, f: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        f = f.clone()
        f[..., by_site[site.name]] = 0.0
        return f, e

    return site_hooks(active, set_nodes(rule))


@torch.no_grad()
def pooled_activations(model: Transformer, tokens: Int[Tensor, "batch pos"], hook: str, sites: list[Site] | None = None,
                       ablate: list[Feature] | None = None, batch: int = 64) -> Float[Tensor, "batch d"]:
    """The activation at `hook` averaged over positions, with `ablate` zero-ablated (None: clean)."""
    if hook not in model.hook_points:
        model.resolve_hook_names(hook)  # raises a ValueError naming close matches
    device = next(model.parameters()).device
    out: list[Tensor] = []
    store: dict[str, Tensor] = {}

    def read(x: Tensor, hp: HookPoint) -> None:
        store["x"] = x.mean(1)

    # the reader is attached last, so at a shared hook it sees the value after the ablation there
    edit = zero_ablation_hooks(sites or [], ablate or []) if ablate else []
    for start in range(0, tokens.shape[0], batch):
        with model.hooks(edit + [(hook, read)]):
            model(tokens[start:start + batch].to(device))
        out.append(store.pop("x").float().cpu())
    return torch.cat(out)


@dataclass
class Probe:
    w: Tensor  # [d]
    b: Tensor  # []
    hook: str  # activation it reads (mean-pooled)

    def logit(self, x: Float[Tensor, "batch d"]) -> Float[Tensor, " batch"]:
        return x @ self.w.to(x) + self.b.to(x)

    def predict(self, x: Float[Tensor, "batch d"]) -> Int[Tensor, " batch"]:
        return (self.logit(x) > 0).long()


def fit_probe(x: Float[Tensor, "n d"], y: Int[Tensor, " n"], hook: str, l2: float = 1e-3, steps: int = 200) -> Probe:
    """Logistic regression (module docstring); inputs are centred and scaled inside the fit and the
    scaling folded into (w, b)."""
    x, y = x.double(), y.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w.detach() / sd)
    return Probe(w_raw.float(), (b.detach() - (mu * w_raw).sum()).float(), hook)


@dataclass
class Accuracy:
    label: float  # accuracy at predicting the label
    spurious: float  # accuracy at predicting the spurious attribute (as mapped in the ambiguous data)
    worst_group: float  # lowest accuracy (label) over the four (label, attribute) groups
    groups: list[float]  # accuracy of groups 2 * label + attribute


def accuracy(pred: Int[Tensor, " n"], label: Int[Tensor, " n"], spurious: Int[Tensor, " n"]) -> Accuracy:
    """Label, spurious-attribute and worst-group accuracy of predictions (groups with no examples
    are left out of the worst group)."""
    groups = 2 * label + spurious
    per = [float((pred[groups == g] == label[groups == g]).float().mean()) if (groups == g).any() else float("nan")
           for g in range(4)]
    present = [a for a in per if a == a]
    return Accuracy(float((pred == label).float().mean()), float((pred == spurious).float().mean()),
                    min(present), per)


__all__ = ["Accuracy", "Feature", "Probe", "accuracy", "feature_id", "fit_probe", "parse_ablate_file",
           "pooled_activations", "zero_ablation_hooks"]
