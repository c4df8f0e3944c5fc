"""Sparse dictionaries — SAEs and transcoders: architectures, training, metrics, file formats and
feature examples. See `base.py` for the `Dictionary` interface and the `ARCHITECTURES` registry."""

from typing import TYPE_CHECKING

from sparsecircuits.lazy import lazy_exports

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.base import (
        ARCHITECTURES,
        DictConfig,
        Dictionary,
        DictOutput,
        make_dictionary,
    )
    from sparsecircuits.dictionaries.config import DictTrainConfig
    from sparsecircuits.dictionaries.features import (
        FeatureExamples,
        dictionary_source,
        feature_examples,
        load_feature_examples,
        neuron_source,
        save_feature_examples,
    )
    from sparsecircuits.dictionaries.formats import (
        convert_pickle,
        fold_scaling,
        load_dictionary,
        load_gemma_scope,
        load_transcoder_set,
        save_dictionary,
    )
    from sparsecircuits.dictionaries.metrics import DictEval, evaluate_dictionary, fvu, splice_hooks
    from sparsecircuits.dictionaries.train import SweepReport, train_dictionaries

# Imported on first use: `sparsecircuits.dictionaries.config` loads without torch (the CLI's start-up).
# `base` imports `architectures`, so `ARCHITECTURES` is complete whatever is imported first.
__getattr__, __dir__ = lazy_exports(__name__, {
    "base": ("ARCHITECTURES", "DictConfig", "Dictionary", "DictOutput", "make_dictionary"),
    "config": ("DictTrainConfig",),
    "features": ("FeatureExamples", "dictionary_source", "feature_examples", "load_feature_examples", "neuron_source",
                 "save_feature_examples"),
    "formats": ("convert_pickle", "fold_scaling", "load_dictionary", "load_gemma_scope", "load_transcoder_set",
                "save_dictionary"),
    "metrics": ("DictEval", "evaluate_dictionary", "fvu", "splice_hooks"),
    "train": ("SweepReport", "train_dictionaries"),
})

__all__ = [
    "ARCHITECTURES",
    "DictConfig",
    "DictEval",
    "DictOutput",
    "DictTrainConfig",
    "Dictionary",
    "FeatureExamples",
    "SweepReport",
    "convert_pickle",
    "dictionary_source",
    "evaluate_dictionary",
    "feature_examples",
    "fold_scaling",
    "fvu",
    "load_dictionary",
    "load_feature_examples",
    "load_gemma_scope",
    "load_transcoder_set",
    "make_dictionary",
    "neuron_source",
    "save_dictionary",
    "save_feature_examples",
    "splice_hooks",
    "train_dictionaries",
]
