"""Published dictionary layouts: read every one (from a folder or the user's Hugging Face cache), write
ours in the layouts other tools read, list what a folder holds.

| layout | read | write |
|---|---|---|
| ours (SAELens layout + a `sparsecircuits` block) | `formats.load_dictionary` | `formats.save_dictionary` |
| SAELens `cfg.json` + `sae_weights.safetensors` | `saelens.py` | `formats.save_dictionary` (SAELens reads it) |
| Gemma Scope `params.npz` / Gemma Scope 2 `params.safetensors` | `gemma_scope.py` | |
| dictionary_learning `ae.pt` + `config.json` | `dictionary_learning.py` | `save_dictionary_learning` |
| Dunefsky et al. `.pt` | `dunefsky.py` | |
| circuit-tracer transcoder set / cross-layer transcoder | `circuit_tracer.py` | `save_transcoder_set` |

`load_any(path_or_repo, model=None)` detects the layout (`detect.py`), finds repos in the HF cache
(`hub.py`) and, given a model, checks hooks and widths and maps hook conventions (`common.py`).
"""

from sparsecircuits.dictionaries.layouts.circuit_tracer import (
    CrossLayerTranscoder,
    load_circuit_tracer,
    save_transcoder_set,
)
from sparsecircuits.dictionaries.layouts.common import Loaded, fit_to_model
from sparsecircuits.dictionaries.layouts.detect import LAYOUTS, DictInfo, find_dictionaries, load_any
from sparsecircuits.dictionaries.layouts.dictionary_learning import save_dictionary_learning

__all__ = ["LAYOUTS", "CrossLayerTranscoder", "DictInfo", "Loaded", "find_dictionaries", "fit_to_model", "load_any",
           "load_circuit_tracer", "save_dictionary_learning", "save_transcoder_set"]
