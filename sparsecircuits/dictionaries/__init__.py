"""Sparse dictionaries — SAEs and transcoders: architectures, training, metrics, file formats and
feature examples. See `base.py` for the `Dictionary` interface and the `ARCHITECTURES` registry."""

from sparsecircuits.dictionaries import architectures as _architectures  # noqa: F401  (registers them)
from sparsecircuits.dictionaries.base import (
    ARCHITECTURES,
    DictConfig,
    Dictionary,
    DictOutput,
    make_dictionary,
)
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
from sparsecircuits.dictionaries.train import DictTrainConfig, SweepReport, train_dictionaries

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
