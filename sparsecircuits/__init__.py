"""sparsecircuits: find, verify and show interpretable circuits in language models.

`import sparsecircuits as sc` gives the notebook API (`api.py`; docs/api.md): load a model and a task,
train a model, find a circuit with the method of any of the four papers, evaluate it and write its
page, plus the core data types and configs. Everything else is imported from its own module.

Importing the package does not import torch (the CLI starts without it): the names below are
imported on first use (`lazy.py`, PEP 562); type checkers read them from the TYPE_CHECKING imports.
"""

from typing import TYPE_CHECKING

from sparsecircuits.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sparsecircuits.api import (
        CircuitEvaluation,
        LoadedModel,
        attribution_graph,
        default_cache_dir,
        discover,
        evaluate_circuit,
        feature_circuit,
        load_model,
        load_task,
        prune,
        train_dictionary,
        train_model,
        write_page,
    )
    from sparsecircuits.component_circuits.config import DiscoverConfig
    from sparsecircuits.component_circuits.methods import METHODS
    from sparsecircuits.data.config import DataConfig
    from sparsecircuits.dictionaries.base import Dictionary
    from sparsecircuits.dictionaries.config import DictTrainConfig
    from sparsecircuits.evaluate import Evaluation
    from sparsecircuits.feature_circuits.config import FeatureCircuitConfig
    from sparsecircuits.graph import Circuit, Edge, Node
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.model.transformer import Transformer
    from sparsecircuits.tasks import TASKS
    from sparsecircuits.tasks.base import Example, TaskData
    from sparsecircuits.transcoder_circuits.attribution_graph import AttributionConfig
    from sparsecircuits.viz.config import ViewConfig
    from sparsecircuits.weight_sparse.config import PruneConfig, TrainConfig

# submodule -> the names it gives the package root. No name may equal a submodule's (`evaluate`,
# `graph`, ...): importing that submodule would replace the name with the module.
EXPORTS: dict[str, tuple[str, ...]] = {
    "api": ("load_model", "load_task", "train_model", "prune", "discover", "feature_circuit", "attribution_graph",
            "train_dictionary", "evaluate_circuit", "write_page", "default_cache_dir", "LoadedModel",
            "CircuitEvaluation"),
    "model.transformer": ("Transformer",),
    "model.config": ("ModelConfig",),
    "graph": ("Circuit", "Node", "Edge"),
    "tasks": ("TASKS",),  # the package: importing it registers the built-in tasks
    "tasks.base": ("TaskData", "Example"),
    "evaluate": ("Evaluation",),
    "dictionaries.base": ("Dictionary",),
    "transcoder_circuits.attribution_graph": ("AttributionConfig",),
    "component_circuits.methods": ("METHODS",),
    # the configs' own modules are torch-free
    "data.config": ("DataConfig",),
    "weight_sparse.config": ("TrainConfig", "PruneConfig"),
    "component_circuits.config": ("DiscoverConfig",),
    "dictionaries.config": ("DictTrainConfig",),
    "feature_circuits.config": ("FeatureCircuitConfig",),
    "viz.config": ("ViewConfig",),
}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = [
    "METHODS", "TASKS", "AttributionConfig", "Circuit", "CircuitEvaluation", "DataConfig", "DictTrainConfig",
    "Dictionary", "DiscoverConfig", "Edge", "Evaluation", "Example", "FeatureCircuitConfig", "LoadedModel",
    "ModelConfig", "Node", "PruneConfig", "TaskData", "TrainConfig", "Transformer", "ViewConfig", "__version__",
    "attribution_graph", "default_cache_dir", "discover", "evaluate_circuit", "feature_circuit", "load_model",
    "load_task", "prune", "train_dictionary", "train_model", "write_page",
]
