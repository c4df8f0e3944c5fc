"""Peer tests: the tools themselves load the files we write and compute the same activations and
reconstructions. SAELens (`sae-lens`) and circuit-tracer each run in a subprocess: this environment's
python if it imports the package, else `$SPARSECIRCUITS_SAELENS_PYTHON` / `.venv-ref` and
`$SPARSECIRCUITS_CIRCUIT_TRACER_PYTHON` / `.venv-ct` (circuit-tracer pins an older transformers, so
it lives in its own venv; `.ci/run` builds both). Skipped only when the peer is not installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_layout_writers import D, random_dictionary, transcoder_set

from sparsecircuits.dictionaries import load_dictionary, save_dictionary
from sparsecircuits.dictionaries.layouts import load_any, save_transcoder_set

ROOT = Path(__file__).resolve().parents[2]


def peer_python(module: str, env: str, venv: str) -> list[str] | None:
    if importlib.util.find_spec(module) is not None:
        return [sys.executable]
    for candidate in (os.environ.get(env), ROOT / venv / "bin" / "python"):
        if candidate and Path(candidate).exists():
            return [str(candidate)]
    return None


def skip_or_fail(why: str) -> None:
    """Skip (the peer is not installed), except under SPARSECIRCUITS_REQUIRE_PEERS=1 (CI installs them)."""
    if os.environ.get("SPARSECIRCUITS_REQUIRE_PEERS") == "1":
        pytest.fail(why + " (SPARSECIRCUITS_REQUIRE_PEERS=1)")
    pytest.skip(why)


def run_peer(python: list[str], script: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*python, "-c", script, *args], env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


SAELENS = """
import sys, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
data = load_file(sys.argv[2])
out = {}
for name in sys.argv[3:]:
    sae = SAE.load_from_disk(sys.argv[1] + "/" + name, device="cpu")
    with torch.no_grad():
        out[name + ".acts"] = sae.encode(data["x"])
        out[name + ".recon"] = sae(data["x"])
save_file(out, sys.argv[2] + ".out")
"""


@pytest.mark.slow
def test_saelens_loads_ours(tmp_path):
    python = peer_python("sae_lens", "SPARSECIRCUITS_SAELENS_PYTHON", ".venv-ref")
    if python is None:
        skip_or_fail("sae_lens is not installed here, in $SPARSECIRCUITS_SAELENS_PYTHON or in .venv-ref")
    tc = ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    dicts = {"relu": random_dictionary("relu"), "topk": random_dictionary("topk"),
             "batchtopk": random_dictionary("batchtopk"), "jumprelu": random_dictionary("jumprelu"),
             "tc-relu": random_dictionary("relu", *tc), "tc-skip": random_dictionary("relu", *tc, skip=True),
             "tc-jumprelu": random_dictionary("jumprelu", *tc)}
    for name, d in dicts.items():
        save_dictionary(d, tmp_path / name)
    x = torch.randn(11, D)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    run_peer(python, SAELENS, str(tmp_path), str(tmp_path / "x.safetensors"), *dicts)
    out = load_file(str(tmp_path / "x.safetensors.out"))
    for name in dicts:
        d = load_dictionary(tmp_path / name)
        torch.testing.assert_close(out[name + ".acts"], d.encode(x), rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(out[name + ".recon"], d(x, x).recon, rtol=1e-5, atol=1e-5, msg=name)


CIRCUIT_TRACER = """
import sys, glob, torch
from safetensors.torch import load_file, save_file
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
folder, hook_in, hook_out = sys.argv[1], sys.argv[3], sys.argv[4]
paths = {i: f"{folder}/layer_{i}.safetensors" for i in range(len(glob.glob(folder + "/layer_*.safetensors")))}
ts = load_transcoder_set(paths, scan="test", feature_input_hook=hook_in, feature_output_hook=hook_out,
                         device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
x = load_file(sys.argv[2])["x"]
out = {}
with torch.no_grad():
    for i in paths:
        acts = ts[i].encode(x)
        out[f"{i}.acts"], out[f"{i}.recon"] = acts, ts[i].decode(acts, x)
save_file(out, sys.argv[2] + ".out")
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch,skip", [("relu", False), ("jumprelu", True), ("batchtopk", False)])
def test_circuit_tracer_loads_our_sets(arch, skip, tmp_path):
    python = peer_python("circuit_tracer", "SPARSECIRCUITS_CIRCUIT_TRACER_PYTHON", ".venv-ct")
    if python is None:
        skip_or_fail("circuit_tracer is not installed here, in $SPARSECIRCUITS_CIRCUIT_TRACER_PYTHON or in .venv-ct")
    tcs = transcoder_set(arch, skip)
    save_transcoder_set(tcs, tmp_path / "set")
    back = load_any(tmp_path / "set").dictionaries
    x = torch.randn(9, D)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    run_peer(python, CIRCUIT_TRACER, str(tmp_path / "set"), str(tmp_path / "x.safetensors"), "mlp.hook_in",
             "hook_mlp_out")
    out = load_file(str(tmp_path / "x.safetensors.out"))
    for i, d in enumerate(tcs):
        o = d(x, x)
        torch.testing.assert_close(out[f"{i}.acts"], o.acts, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[f"{i}.recon"], o.recon, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(back[i](x, x).recon, o.recon, rtol=1e-5, atol=1e-4)
