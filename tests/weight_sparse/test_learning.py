"""Slow: the `tiny` preset, trained for its default steps on the stdlib, beats the bigram baseline.

Run with `python -m pytest -m slow` (about 5-8 minutes on 2 CPU cores).
"""

import pytest

from sparsecircuits.data.corpus import DataConfig
from sparsecircuits.model import ModelConfig
from sparsecircuits.weight_sparse.presets import get_preset
from sparsecircuits.weight_sparse.run import RunSpec, train_run
from sparsecircuits.weight_sparse.train import TrainConfig


@pytest.mark.slow
def test_tiny_preset_beats_bigram_baseline(tmp_path):
    preset = get_preset("tiny")
    spec = RunSpec(ModelConfig(**preset.model), TrainConfig(**preset.train), DataConfig())
    result = train_run(spec, tmp_path / "run", tmp_path / "cache")
    assert result.val_loss is not None
    assert result.val_loss < result.bigram_baseline - 0.3, (result.val_loss, result.bigram_baseline)
