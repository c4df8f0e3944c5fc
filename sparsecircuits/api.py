"""The Python API for notebooks: `import sparsecircuits as sc` (docs/api.md shows one workflow per paper).

Every function here is thin: it wires the library's own functions together the way the matching CLI
command does (named in each docstring), so a notebook and the command line give the same results.
Nothing here prints; long steps take an optional progress callback. Models are passed as a
`LoadedModel` (from `load_model`), a bare `Transformer` where no tokenizer or corpus is needed, or
a path, which is loaded first. Finding functions (`prune`, `discover`, `feature_circuit`,
`attribution_graph`) all return a `Circuit` with their measurements in `circuit.metadata`.

Mean-ablation baselines and corpus windows are computed over the model's pretraining corpus
(the stdlib when its metadata names none) and cached in `cache_dir`: by default
$SPARSECIRCUITS_CACHE, else ~/.cache/sparsecircuits, as on the command line.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from tokenizers import Tokenizer
from torch import Tensor

from sparsecircuits.component_circuits.config import DiscoverConfig
from sparsecircuits.data.config import DataConfig
from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.config import DictTrainConfig
from sparsecircuits.evaluate import Evaluation
from sparsecircuits.feature_circuits.config import FeatureCircuitConfig
from sparsecircuits.graph import Circuit
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.transformer import Transformer
from sparsecircuits.tasks.base import TaskData
from sparsecircuits.threads import apply_default_unless_set
from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig
from sparsecircuits.viz.config import ViewConfig
from sparsecircuits.weight_sparse.config import PruneConfig, TrainConfig
from sparsecircuits.weight_sparse.run import RunResult, StepReport

# --- torch threads (issue 25): one thread, as on the command line, unless the user chose
# (SPARSECIRCUITS_THREADS, OMP_NUM_THREADS / MKL_NUM_THREADS, or torch.set_num_threads before this import)
apply_default_unless_set()
# --- end torch threads


@dataclass
class LoadedModel:
    """A model with what the API needs besides its weights (what `load_model` returns)."""

    model: Transformer
    tokenizer: Tokenizer | None  # None only for a bare `Transformer` passed to the API
    path: Path | None  # the checkpoint (or Hugging Face) folder; None for an in-memory model
    meta: dict[str, Any]  # our checkpoint's meta.json (its training and data specs); {} otherwise
    family: str | None = None  # the Hugging Face model_type; None for our checkpoints

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg


ModelLike = LoadedModel | Transformer | str | Path


@dataclass
class CircuitEvaluation:
    """What `evaluate_circuit` returns: task loss, accuracy and mean logit difference of the model,
    of the circuit (everything outside it ablated) and of the empty circuit (everything ablated)."""

    full: Evaluation
    circuit: Evaluation | None  # None when no circuit was given
    empty: Evaluation | None
    faithfulness: float  # (m(C) - m(empty)) / (m(full) - m(empty)) on the mean logit difference; NaN without a circuit
    ablation: str | None  # the baseline ablated nodes or edges took


def default_cache_dir() -> Path:
    """The cache the CLI uses: $SPARSECIRCUITS_CACHE, else ~/.cache/sparsecircuits."""
    env = os.environ.get("SPARSECIRCUITS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparsecircuits"


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def load_model(name_or_path: str | Path, *, device: str = "cpu", n_ctx: int | None = None,
               download: bool = True) -> LoadedModel:
    """Load one of our checkpoints or a Hugging Face model, with its tokenizer, in eval mode.

    Args:
        name_or_path: our checkpoint folder or training-run folder (its newest checkpoint), e.g. the
            shipped `sparsecircuits/assets/quickstart/sparse`; or a Hugging Face checkpoint folder or
            a model name in the Hugging Face cache (`org/name`; downloaded only when `download` is on,
            `huggingface_hub` is installed and HF_HUB_OFFLINE is unset).
        device: torch device to put the model on (default "cpu").
        n_ctx: Hugging Face models only: cap the context length, in tokens (default: the config's).
        download: Hugging Face models only: allow a download (default True).

    Returns a `LoadedModel` (model, tokenizer, folder, metadata). Same rule as the CLI's `--model`:
    a folder without a `config.json` naming a Hugging Face `model_type` is ours.
    """
    from sparsecircuits.data.tokenizer import load_tokenizer
    from sparsecircuits.model.checkpoint import load_checkpoint
    from sparsecircuits.model.load import load_pretrained

    path = Path(name_or_path).expanduser()
    cfg = path / "config.json"
    if path.exists() and (not cfg.exists() or "model_type" not in json.loads(cfg.read_text())):
        ck = load_checkpoint(path, device=device)
        if ck.tokenizer_path is None:
            raise ValueError(f"{ck.path} has no tokenizer.json; tasks need the model's tokenizer")
        return LoadedModel(ck.model.eval(), load_tokenizer(ck.tokenizer_path), ck.path, ck.meta)
    pre = load_pretrained(name_or_path, device=device, n_ctx=n_ctx, download=download)
    if pre.tokenizer is None:
        raise ValueError(f"{pre.path} has no tokenizer.json; tasks need the model's tokenizer")
    return LoadedModel(pre.model.eval(), pre.tokenizer, pre.path, {}, pre.family)


def _loaded(model: ModelLike) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, Transformer):
        return LoadedModel(model, None, None, {})
    return load_model(model)


def _source(m: LoadedModel) -> str | None:
    """What a circuit's metadata records as its model: the folder (as the CLI), None for an in-memory model."""
    return None if m.path is None else str(m.path)


def _tokenizer(m: LoadedModel, why: str) -> Tokenizer:
    if m.tokenizer is None:
        raise ValueError(f"{why} needs the model's tokenizer: pass a LoadedModel (sc.load_model), not a bare Transformer")
    return m.tokenizer


def load_task(task: str | Path, model: ModelLike, n_examples: int = 256, *, seed: int = 0) -> TaskData:
    """Load a task for a model: tokenized with its tokenizer and validated against its context.

    Args:
        task: a built-in task name (see `sc.TASKS`, or `sparsecircuits tasks`), or a JSONL file with
            one `{"prompt", "correct", "incorrect"[, "counterfactual"]}` object per line.
        model: the model whose tokenizer and context length the examples must fit.
        n_examples: built-in tasks: examples to draw (default 256; examples that do not fit the
            tokenizer are skipped, and fewer than half fitting is an error).
        seed: built-in tasks: the seed examples are drawn with (default 0, as the CLI).

    Returns the `TaskData` (prompts right-padded, answer token ids, counterfactual prompts). A JSONL
    task is validated strictly (`tasks/base.py`): a bad line raises a `TaskError` naming it.
    """
    import sparsecircuits.tasks  # noqa: F401  (registers the built-in tasks)
    from sparsecircuits.tasks.base import TASKS, load_jsonl_task
    from sparsecircuits.tasks.base import load_task as load_builtin

    m = _loaded(model)
    tok = _tokenizer(m, "load_task")
    if isinstance(task, str) and (task in TASKS or not (task.endswith(".jsonl") or Path(task).exists())):
        return load_builtin(task, tok, m.cfg.n_ctx, n_examples, seed)  # an unknown name: TaskError listing the tasks
    return load_jsonl_task(Path(task), tok, m.cfg.n_ctx)


def _config(cls: type, given: Any, preset: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Any:
    """A config from a complete instance, or from preset values overridden by a mapping (lists -> tuples)."""
    if isinstance(given, cls):
        return given
    values = {**preset, **(extra or {}), **{k: tuple(v) if isinstance(v, list) else v for k, v in (given or {}).items()}}
    return cls(**values)


def train_model(out_dir: str | Path, *, preset: str = "tiny", model: ModelConfig | Mapping[str, Any] | None = None,
                train: TrainConfig | Mapping[str, Any] | None = None, data: DataConfig | Mapping[str, Any] | None = None,
                cache_dir: str | Path | None = None, resume: bool = False,
                on_step: Callable[[StepReport], None] | None = None) -> RunResult:
    """Train a weight-sparse transformer (Gao et al. 2025) or its dense twin, as `sparsecircuits train`.

    Args:
        out_dir: the run folder: `checkpoints/step-*/` and `metrics.jsonl` are written there.
        preset: size preset supplying the defaults (`weight_sparse/presets.py`: tiny, quickstart, small,
            paper-1x, paper-4x; default "tiny", a few minutes on 2 CPU cores).
        model, train, data: a complete `ModelConfig` / `TrainConfig` / `DataConfig`, or a mapping of
            fields that override the preset (e.g. `train={"steps": 100, "dense": True}`,
            `data={"sources": ["my/code"]}`); as on the CLI the vocabulary size comes from `data`.
        cache_dir: tokenizer and token cache (default: $SPARSECIRCUITS_CACHE or ~/.cache/sparsecircuits).
        resume: continue from the newest checkpoint in `out_dir`.
        on_step: called after every optimizer step with a `StepReport` (loss, lr, kept fraction, ...).

    Returns the `RunResult`: `result.checkpoint` is the newest checkpoint folder (`load_model` it).
    """
    from sparsecircuits.weight_sparse.presets import get_preset
    from sparsecircuits.weight_sparse.run import RunSpec, train_run

    p = get_preset(preset)
    data_cfg = _config(DataConfig, data, p.data)
    model_cfg = _config(ModelConfig, model, p.model, {"d_vocab": data_cfg.vocab_size})
    train_cfg = _config(TrainConfig, train, p.train)
    return train_run(RunSpec(model_cfg, train_cfg, data_cfg), Path(out_dir), _cache(cache_dir), resume=resume,
                     on_step=on_step)


def _means(m: LoadedModel, cache_dir: str | Path | None) -> dict[str, Tensor]:
    from sparsecircuits.ablation import checkpoint_means

    return checkpoint_means(m.model, m.meta, _tokenizer(m, "mean ablation"), _cache(cache_dir))


def prune(model: ModelLike, data: TaskData, config: PruneConfig | None = None, *, cache_dir: str | Path | None = None,
          means: dict[str, Float[Tensor, "..."]] | None = None,
          on_step: Callable[[int, int, float, int], None] | None = None) -> Circuit:
    """Prune a task circuit of channel nodes with learned masks (Gao et al. 2025), as `sparsecircuits prune`.

    Half the examples train one gate per node (8 sites per layer) with a penalty per active node; the
    other half picks the smallest circuit whose task loss is <= `config.target_loss` (0.15 nats).

    Args:
        model: the model (a weight-sparse one gives small circuits; any of ours works).
        data: the task (`load_task`); 64 or more examples are advisable.
        config: `PruneConfig` (default: the CLI's defaults, 300 steps, batch 64, mean ablation).
        cache_dir: where the mean activations over the pretraining corpus are cached.
        means: precomputed mean activations per hook (default: computed and cached when the
            baseline is "mean").
        on_step: called as `on_step(step, steps, loss, active_nodes)` during gate training.

    Returns the `Circuit`: channel nodes with single-node ablation effects as scores, weight edges,
    and in `metadata` the losses, accuracies and logit differences of circuit / full / empty model
    on the held-out half, `n_nodes`, `n_edges`, `reached_target` and the bisection trace.
    """
    from sparsecircuits.weight_sparse.prune import prune_task

    m = _loaded(model)
    cfg = config or PruneConfig()
    if means is None and cfg.baseline == "mean":
        means = _means(m, cache_dir)
    result = prune_task(m.model, data, cfg, means, on_step=on_step)
    result.circuit.metadata["model"] = _source(m)
    return result.circuit


def discover(model: ModelLike, data: TaskData, method: str = "eap-ig", config: DiscoverConfig | None = None, *,
             solved_only: bool = True, cache_dir: str | Path | None = None) -> Circuit:
    """Find a component circuit (attention heads, MLPs and the edges between them), as `sparsecircuits discover`.

    Args:
        model: the model (heads and MLPs are the nodes).
        data: the task (`load_task`); counterfactual prompts for the default ablation.
        method: a name in `sc.METHODS`: "eap" (Syed et al. 2023), "eap-ig" (Hanna et al. 2024,
            default), "acdc" (Conmy et al. 2023), "exact", "exact-node", "path" (Wang et al. 2023),
            "iterative" (Lan et al. 2024: iterative node pruning, then edge pruning); "prune" runs
            `prune` (Gao et al., channel nodes) with default settings.
        config: `DiscoverConfig` (ablation, IG steps, thresholds; default: the CLI's defaults).
        solved_only: keep only the prompts the model gets right with p(correct) > 2 p(incorrect)
            (Lan et al.; default on, as the CLI's --filter).
        cache_dir: method "prune" only: cache of the mean activations.

    Returns the `Circuit`; `metadata` holds the full, empty and circuit metric (mean logit difference)
    and the circuit's `faithfulness`.
    """
    from sparsecircuits.component_circuits.methods import discover as run_method
    from sparsecircuits.component_circuits.methods import get_method
    from sparsecircuits.evaluate import filter_solved

    m = _loaded(model)
    if solved_only:
        data = filter_solved(m.model, data)
    if get_method(method).granularity == "channel":
        return prune(m, data, cache_dir=cache_dir)
    t0 = time.perf_counter()
    circuit = run_method(m.model, data, method, config or DiscoverConfig())
    circuit.metadata["model"], circuit.metadata["seconds"] = _source(m), time.perf_counter() - t0
    return circuit


def feature_circuit(model: ModelLike, data: TaskData, dictionaries: Sequence[Dictionary | str | Path],
                    config: FeatureCircuitConfig | None = None, *, solved_only: bool = False,
                    untouched_layers: int = -1) -> Circuit:
    """A sparse feature circuit (Marks et al. 2025), as `sparsecircuits feature-circuit`.

    The dictionaries are spliced in at their hooks, so each feature (per position) and each
    dictionary's error term are nodes; nodes are scored by integrated gradients (or attribution or
    exact patching), kept above `config.node_threshold`, and joined by edges above `edge_threshold`.

    Args:
        model: the model the dictionaries were trained on.
        data: the task (`load_task`).
        dictionaries: SAEs or transcoders (`Dictionary` objects or SAELens-layout folders), one per hook.
        config: `FeatureCircuitConfig` (method "ig", 10 steps, counterfactual patching, thresholds 0.1 / 0.01).
        solved_only: keep only prompts the model solves with p(correct) > 2 p(incorrect) (default off, as the CLI).
        untouched_layers: evaluation leaves sites of layers below this alone; -1 = the first third
            (Marks et al.'s protocol).

    Returns the `Circuit`; `metadata` holds `faithfulness` and `completeness` under mean ablation,
    the full, circuit and empty metric and the node counts.
    """
    from sparsecircuits.dictionaries.formats import load_dictionary
    from sparsecircuits.evaluate import filter_solved
    from sparsecircuits.feature_circuits.circuit import find_feature_circuit, task_metric
    from sparsecircuits.feature_circuits.dictionary_graph import make_sites, mean_values, node_values
    from sparsecircuits.feature_circuits.evaluation import evaluate_circuit as evaluate_features

    m = _loaded(model)
    if solved_only:
        data = filter_solved(m.model, data)
    device = next(m.model.parameters()).device
    dicts = [(d if isinstance(d, Dictionary) else load_dictionary(Path(d))).to(device) for d in dictionaries]
    sites = make_sites(m.model, dicts)
    metric = task_metric(data)
    tokens = data.tokens.to(device)
    cf = None if data.cf_tokens is None else data.cf_tokens.to(device)
    t0 = time.perf_counter()
    result = find_feature_circuit(m.model, sites, tokens, metric, config or FeatureCircuitConfig(), cf, data.lengths)
    untouched = m.cfg.n_layers // 3 if untouched_layers < 0 else untouched_layers
    means = mean_values(node_values(m.model, sites, tokens), data.lengths)
    ev = evaluate_features(m.model, sites, tokens, metric, result.kept, means, result.scores.per_position, untouched)
    result.circuit.metadata.update(
        task=data.name, model=_source(m), n_examples=len(data), seconds=time.perf_counter() - t0,
        untouched_layers=untouched, faithfulness=ev.faithfulness, completeness=ev.completeness,
        circuit_metric=ev.circuit, empty_metric=ev.empty)
    return result.circuit


def _transcoder_set(transcoders: Mapping[int, Dictionary] | Sequence[Dictionary] | str | Path) -> dict[int, Dictionary]:
    """Per-layer transcoders from a mapping, a list (layer read from each hook), a circuit-tracer set
    (folder with config.yaml) or a folder of per-layer dictionary folders (as `sparsecircuits graph`)."""
    from sparsecircuits.dictionaries.formats import load_dictionary, load_transcoder_set

    if isinstance(transcoders, Mapping):
        return dict(transcoders)
    if isinstance(transcoders, (str, Path)):
        path = Path(transcoders)
        if (path / "config.yaml").exists() or path.suffix in (".yaml", ".yml"):
            return load_transcoder_set(path if path.is_dir() else path.parent)
        if not path.is_dir():
            raise FileNotFoundError(f"transcoder set {str(path)!r} does not exist")
        transcoders = [load_dictionary(f) for f in sorted(path.iterdir()) if (f / "cfg.json").exists()]
    out: dict[int, Dictionary] = {}
    for d in transcoders:
        found = re.match(r"blocks\.(\d+)\.", d.cfg.hook)
        if not found or not d.cfg.is_transcoder:
            raise ValueError(f"{d.cfg.name} is not a per-layer transcoder (hook {d.cfg.hook!r} -> {d.cfg.out_hook!r})")
        if int(found.group(1)) in out:
            raise ValueError(f"two transcoders for layer {found.group(1)}")
        out[int(found.group(1))] = d
    return out


def attribution_graph(model: ModelLike, transcoders: Mapping[int, Dictionary] | Sequence[Dictionary] | str | Path,
                      prompt: str, config: AttributionConfig | None = None, *, node_threshold: float = 0.8,
                      edge_threshold: float = 0.98, out: str | Path | None = None) -> Circuit:
    """The attribution graph of one prompt through per-layer transcoders (Dunefsky et al. 2024, in
    circuit-tracer's formulation), as `sparsecircuits graph`.

    Edges are exact direct effects in the replacement model (MLPs replaced by transcoders plus their
    error; attention patterns, norm scales and AbsTopK selections frozen), for the logit targets that
    cover 95% of the next-token probability (at most 10); the graph is pruned by influence on those logits.

    Args:
        model: the model, with its tokenizer (`load_model`).
        transcoders: one transcoder per layer (MLP input -> `hook_mlp_out`): a {layer: Dictionary}
            mapping, a list of dictionaries, a folder of per-layer dictionary folders, or a
            circuit-tracer transcoder set (folder with config.yaml).
        prompt: the prompt text (its last n_ctx tokens are used).
        config: `AttributionConfig` (logit targets, backward batch size).
        node_threshold: share of node influence kept (default 0.8).
        edge_threshold: share of edge influence kept (default 0.98).
        out: also write the pruned graph as circuit-tracer / Neuronpedia JSON there.

    Returns the pruned graph as a `Circuit` (features, errors, token embeddings and logits; scores =
    influence); `metadata` holds the `replacement_score` and `completeness_score` of the whole graph.
    """
    from sparsecircuits.atomic import atomic_write_text
    from sparsecircuits.transcoder_circuits.attribution_graph import attribute
    from sparsecircuits.transcoder_circuits.export import prune_graph, scores, to_circuit, to_neuronpedia

    m = _loaded(model)
    tok = _tokenizer(m, "attribution_graph")
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    dtype = next(m.model.parameters()).dtype
    tcs = {layer: d.to(dtype).eval() for layer, d in _transcoder_set(transcoders).items()}
    ids = tok.encode(prompt).ids
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
    toks = torch.tensor(ids[-m.cfg.n_ctx:])
    t0 = time.perf_counter()
    graph = attribute(m.model, tcs, toks, config or AttributionConfig())
    seconds = time.perf_counter() - t0
    pruned = prune_graph(graph, node_threshold, edge_threshold)
    if out is not None:
        strs = [tok.decode([int(t)]) for t in toks]
        logit_strs = [tok.decode([int(t)]) for t in graph.logit_tokens]
        js = to_neuronpedia(graph, pruned, prompt, strs, logit_strs, slug=Path(out).stem, node_threshold=node_threshold)
        atomic_write_text(Path(out), json.dumps(js))
    return to_circuit(graph, pruned, scores(graph), {"model": _source(m), "prompt": prompt, "seconds": seconds})


def train_dictionary(model: ModelLike, hook: str, out_dir: str | Path, *, out_hook: str | None = None,
                     arch: str = "topk", width: int = 1024, k: int = 32, skip: bool = False,
                     config: DictTrainConfig | None = None, cache_dir: str | Path | None = None,
                     resume: bool = False, on_step: Callable[[Any], None] | None = None) -> Dictionary:
    """Train one sparse dictionary on a model's activations over its pretraining corpus, as
    `sparsecircuits train-dict`: an SAE, or a transcoder (Dunefsky et al. 2024) when `out_hook` differs.

    Args:
        model: the model (its corpus, from its metadata, is tokenized and cached in `cache_dir`).
        hook: the activation the dictionary reads, e.g. "blocks.1.hook_resid_post".
        out_dir: folder for the checkpoint and the exported SAELens-layout dictionary folder.
        out_hook: the activation it predicts (default `hook`: an SAE); e.g. "blocks.1.hook_mlp_out"
            with hook "blocks.1.ln2.hook_normalized" for a transcoder.
        arch: a name in `sparsecircuits.dictionaries.ARCHITECTURES` (topk, batchtopk, relu, jumprelu; default topk).
        width: number of features (default 1024).
        k: active features per token for topk / batchtopk (default 32).
        skip: an affine skip connection (skip transcoders).
        config: `DictTrainConfig` (tokens, batch size, lr, ...; default 2M tokens of batch 4096).
        cache_dir: token cache. resume: continue the run in `out_dir`.
        on_step: called after every step with the `SweepReport` (FVU, L0, dead fraction per dictionary).

    Returns the trained `Dictionary` (loaded back from its exported folder).
    """
    from sparsecircuits.data.batches import checkpoint_corpus
    from sparsecircuits.dictionaries import DictConfig, load_dictionary, train_dictionaries
    from sparsecircuits.dictionaries.activations import hook_widths

    m = _loaded(model)
    out_hook = out_hook or hook
    widths = hook_widths(m.model, [hook, out_hook])
    cfg = DictConfig(arch=arch, hook=hook, out_hook=out_hook, d_in=widths[hook], d_out=widths[out_hook], width=width,
                     k=k, skip=skip)
    corpus = checkpoint_corpus(m.meta, _tokenizer(m, "train_dictionary"), _cache(cache_dir))
    meta = {"model": _source(m), "context_size": m.cfg.n_ctx, **({"model_name": m.path.name} if m.path else {})}
    result = train_dictionaries(m.model, corpus.train, [cfg], config or DictTrainConfig(), Path(out_dir), resume=resume,
                                meta=meta, on_step=on_step)
    return load_dictionary(result.paths[cfg.name])


def evaluate_circuit(model: ModelLike, data: TaskData, circuit: Circuit | str | Path | None = None, *,
                     cache_dir: str | Path | None = None,
                     means: dict[str, Float[Tensor, "..."]] | None = None) -> CircuitEvaluation:
    """Evaluate the model, and a circuit in it, on a task: everything outside the circuit is ablated
    the way the circuit was found (DESIGN.md: every check of a circuit is one masked run).

    Args:
        model: the model the circuit was found in.
        data: the task examples to evaluate on (`load_task`; e.g. a new seed for fresh examples).
        circuit: a `Circuit` or its JSON file: a channel circuit from `prune` (nodes outside take the
            circuit's own baseline at its own sites, with its calibration setting) or a component
            circuit from `discover` (edges outside take its ablation). None: the full model only.
        cache_dir: cache of the mean activations (channel circuits pruned with mean ablation).
        means: precomputed mean activations per hook (default: computed and cached when needed).

    Returns a `CircuitEvaluation`: task loss (nats), accuracy and mean logit difference of the full
    model, the circuit and the empty circuit, and the faithfulness (Marks et al. 2025; MIB).
    """
    from sparsecircuits.evaluate import evaluate_task, faithfulness

    m = _loaded(model)
    full = evaluate_task(m.model, data)
    if circuit is None:
        return CircuitEvaluation(full, None, None, math.nan, None)
    circuit = circuit if isinstance(circuit, Circuit) else Circuit.load(Path(circuit))
    if circuit.metadata.get("granularity") == "component":
        return _evaluate_components(m, data, circuit)
    from sparsecircuits.ablation import circuit_masks
    from sparsecircuits.evaluate import MaskedTask
    from sparsecircuits.viz.task_panel import circuit_sites

    sites = circuit_sites(circuit, m.model)
    if sites is None:
        raise ValueError("evaluate_circuit takes circuits from `prune` (channel nodes with their sites in the metadata) "
                         "or `discover` (components); feature circuits and attribution graphs are evaluated when found "
                         "(metadata 'faithfulness', 'completeness', 'replacement_score')")
    hyper = circuit.metadata.get("hyperparameters", {})
    baseline, calibrate = str(hyper.get("baseline", "mean")), bool(hyper.get("calibrate", False))
    if means is None and baseline == "mean":
        means = _means(m, cache_dir)
    task = MaskedTask(m.model, data, baseline, means, sites)
    ones = {s.hook: torch.ones(s.shape) for s in sites}
    zeros = {s.hook: torch.zeros(s.shape) for s in sites}
    ev_full, ev_empty = task.evaluate(ones, calibrate), task.evaluate(zeros, calibrate)
    ev_circuit = task.evaluate(circuit_masks(circuit, sites), calibrate)
    return CircuitEvaluation(ev_full, ev_circuit, ev_empty,
                             faithfulness(ev_circuit.logit_diff, ev_full.logit_diff, ev_empty.logit_diff), baseline)


def _evaluate_components(m: LoadedModel, data: TaskData, circuit: Circuit) -> CircuitEvaluation:
    """A component circuit under its ablation: one masked run each for full, empty and circuit edges."""
    from sparsecircuits.component_circuits.component_graph import run_masked
    from sparsecircuits.component_circuits.prepare import circuit_edge_mask, prepare
    from sparsecircuits.evaluate import faithfulness
    from sparsecircuits.tasks.base import last_logits, logit_diff, task_loss

    ablation = str(circuit.metadata.get("ablation", "counterfactual"))
    task = prepare(m.model, data, ablation)
    tokens = task.data.tokens.to(task.device)

    @torch.no_grad()
    def run(mask: Tensor) -> Evaluation:
        logits = run_masked(m.model, task.graph, tokens, mask.float().to(task.device), task.base)
        diff = logit_diff(last_logits(logits, task.data.lengths), task.data).cpu()
        return Evaluation(float(task_loss(diff)), float((diff > 0).float().mean()), float(diff.mean()))

    keep = circuit_edge_mask(task, circuit)
    full, empty, inside = run(torch.ones_like(keep)), run(torch.zeros_like(keep)), run(keep)
    return CircuitEvaluation(full, inside, empty, faithfulness(inside.logit_diff, full.logit_diff, empty.logit_diff),
                             ablation)


def write_page(circuit: Circuit | str | Path, path: str | Path, model: ModelLike | None = None, *,
               config: ViewConfig | None = None, task_file: str | Path | None = None, title: str | None = None,
               cache_dir: str | Path | None = None) -> Path:
    """Write a circuit's page: one self-contained HTML file that opens offline, as `sparsecircuits view`.

    Args:
        circuit: a `Circuit` or its JSON file (from any method).
        path: the HTML file to write.
        model: the model the circuit was found in (one of our checkpoints): adds each node's top
            activating corpus contexts and histogram, the task panel (full model vs circuit on
            held-out examples) and attention of q/k nodes. None: a page from the circuit alone.
        config: `ViewConfig` (corpus windows scanned, contexts per node, ...).
        task_file: the JSONL task of a circuit found on one (built-in tasks are found by name).
        title: page title (default: from the circuit's task and method).
        cache_dir: cache of corpus tokens and mean activations.

    Returns the path written.
    """
    from sparsecircuits.viz.report import ModelContext, load_model_context, write_circuit_page

    circuit = circuit if isinstance(circuit, Circuit) else Circuit.load(Path(circuit))
    cfg = config or ViewConfig()
    ctx = None
    if model is not None:
        m = _loaded(model)
        if m.path is not None and m.family is None:  # ours: as `view --model`, corpus windows and means
            ctx = load_model_context(m.path, _cache(cache_dir), cfg.windows)
        else:  # a Hugging Face or in-memory model: the task panel of the full model only
            ctx = ModelContext(m.model, _tokenizer(m, "write_page"), None, None)
    return write_circuit_page(circuit, Path(path), ctx, cfg, None if task_file is None else Path(task_file), title)


FUNCTIONS = ("load_model", "load_task", "train_model", "prune", "discover", "feature_circuit", "attribution_graph",
             "train_dictionary", "evaluate_circuit", "write_page", "default_cache_dir")

__all__ = ["CircuitEvaluation", "LoadedModel", "ModelLike", *FUNCTIONS]
