"""The one graph: `Node`, `Edge` and `Circuit`, with a single JSON schema, and circuit comparison.

A node is one unit at one hook site: a channel index into the site's activation (flattened over
trailing dims, e.g. q channels are `head * d_head + i`), optionally at one position. Kinds cover
every granularity of the four methods (DESIGN.md): residual read/write channels, q/k/v channels, MLP
neurons, attention heads, whole MLPs, dictionary features and error terms, token embeddings, logits.
A circuit holds nodes, edges between them, a score per node (DESIGN.md sign: metric(clean) -
metric(node ablated), positive = helps) and free-form metadata (task, method, losses, ...).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparsecircuits.atomic import atomic_write_text

NODE_KINDS = (
    "resid_read", "q", "k", "v", "resid_write", "neuron",  # weight-sparse channel nodes (Gao et al.)
    "head", "mlp",  # components (Lan et al.)
    "feature", "error",  # dictionary nodes (Marks et al., Dunefsky et al.)
    "embed", "logit",
)
SCHEMA = "sparsecircuits-circuit-v1"


@dataclass(frozen=True)
class Node:
    site: str  # hook name, e.g. "blocks.0.attn.hook_q"; "logits" for logit nodes
    index: int  # channel (flattened), neuron, head, feature or token id; -1 for a dictionary error term
    kind: str
    layer: int  # block index; -1 for embeddings, n_layers for logits
    position: int | None = None  # None = all positions

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"Node.kind must be one of {NODE_KINDS}, got {self.kind!r}")

    @property
    def id(self) -> str:
        pos = "" if self.position is None else f"@{self.position}"
        return f"{self.site}[{self.index}]{pos}"


@dataclass(frozen=True)
class Edge:
    src: str  # node ids
    dst: str
    weight: float
    kind: str  # "weight" (a nonzero parameter), "residual" (identity through the residual stream),
    #            "qk" (query and key channel of one head dimension), "attribution" (a scored effect)


@dataclass
class Circuit:
    nodes: list[Node]
    edges: list[Edge] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # node id -> score
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("Circuit.nodes holds duplicate node ids")
        known = set(ids)
        bad = [e for e in self.edges if e.src not in known or e.dst not in known]
        if bad:
            raise ValueError(f"Circuit has {len(bad)} edges between unknown nodes, e.g. {bad[0].src} -> {bad[0].dst}")

    @property
    def node_ids(self) -> set[str]:
        return {n.id for n in self.nodes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "nodes": [asdict(n) for n in self.nodes],
            "edges": [asdict(e) for e in self.edges],
            "scores": self.scores,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a sparsecircuits circuit (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        try:
            nodes = [Node(**n) for n in d["nodes"]]
            edges = [Edge(**e) for e in d["edges"]]
            scores = {k: float(v) for k, v in d.get("scores", {}).items()}
            metadata = dict(d.get("metadata", {}))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed circuit JSON: {e}") from None
        return cls(nodes, edges, scores, metadata)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Circuit:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"circuit file {str(path)!r} does not exist")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{str(path)!r} is not UTF-8 text (byte at offset {e.start}): not a circuit JSON") from None
        except RecursionError:
            raise ValueError(f"{str(path)!r}: JSON nested too deeply, not a circuit") from None
        if not isinstance(d, dict):
            raise ValueError(f"{str(path)!r} holds a JSON {type(d).__name__}, not a circuit object")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{str(path)!r}: {e}") from None


def node_iou(a: Circuit, b: Circuit) -> float:
    """Intersection over union of two circuits' node sets (1.0 for two empty circuits)."""
    sa, sb = a.node_ids, b.node_ids
    return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)


def edge_iou(a: Circuit, b: Circuit, kinds: tuple[str, ...] = ("residual", "weight", "attribution")) -> float:
    """Intersection over union of two circuits' (src, dst) edge sets of the given kinds (1.0 if both empty)."""
    ea = {(e.src, e.dst) for e in a.edges if e.kind in kinds}
    eb = {(e.src, e.dst) for e in b.edges if e.kind in kinds}
    return 1.0 if not ea | eb else len(ea & eb) / len(ea | eb)


def intersect(circuits: list[Circuit]) -> Circuit:
    """The shared core: nodes and edges present in every circuit (weights and scores of the first)."""
    if not circuits:
        raise ValueError("intersect needs at least one circuit")
    ids = set.intersection(*(c.node_ids for c in circuits))
    pairs = set.intersection(*({(e.src, e.dst) for e in c.edges} for c in circuits))
    first = circuits[0]
    nodes = [n for n in first.nodes if n.id in ids]
    edges = [e for e in first.edges if (e.src, e.dst) in pairs]
    tasks = [str(c.metadata.get("task", "?")) for c in circuits]
    return Circuit(nodes, edges, {k: v for k, v in first.scores.items() if k in ids},
                   {"method": "intersection", "task": "+".join(tasks), "sources": tasks})


@dataclass
class SizeRow:
    task: str
    sparse_nodes: int
    sparse_edges: int
    dense_nodes: int
    dense_edges: int

    @property
    def edge_ratio(self) -> float:
        """Dense edges per sparse edge (how many times smaller the sparse circuit is)."""
        return self.dense_edges / max(self.sparse_edges, 1)


def geometric_mean(values: list[float]) -> float:
    """Geometric mean of positive values (0 for an empty list); zeros count as 1 (an empty circuit)."""
    import math

    if not values:
        return 0.0
    return math.exp(sum(math.log(max(v, 1.0)) for v in values) / len(values))


def compare_sizes(sparse: dict[str, Circuit], dense: dict[str, Circuit]) -> list[SizeRow]:
    """Per-task circuit sizes of a sparse and a dense model, for the tasks both have a circuit for."""
    rows = []
    for task in sorted(set(sparse) & set(dense)):
        s, d = sparse[task], dense[task]
        rows.append(SizeRow(task, _n_channel_nodes(s), len(s.edges), _n_channel_nodes(d), len(d.edges)))
    return rows


def _n_channel_nodes(c: Circuit) -> int:
    """Nodes chosen by the method (embedding and logit endpoints are not counted)."""
    return sum(1 for n in c.nodes if n.kind not in ("embed", "logit"))


def load_circuit_dir(folder: Path) -> dict[str, Circuit]:
    """Every `*.json` circuit of a folder, keyed by its task (metadata 'task', else the file stem)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"circuit folder {str(folder)!r} does not exist")
    out = {}
    for f in sorted(folder.glob("*.json")):
        c = Circuit.load(f)
        out[str(c.metadata.get("task", f.stem))] = c
    return out
