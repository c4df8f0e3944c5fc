import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_model, tokens
from sparsecircuits.model import checkpoint as ckpt
from sparsecircuits.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_is_exact(tmp_path):
    model = tiny_model(n_kv_heads=2, positions="rotary")
    path = save_checkpoint(tmp_path / "c", model, meta={"step": 3}, tokenizer_json="{}")
    loaded = load_checkpoint(path)
    t = tokens()
    assert torch.equal(loaded.model(t), model(t))
    assert loaded.meta == {"step": 3}
    assert loaded.tokenizer_path == path / "tokenizer.json"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors", "tokenizer.json"]


def test_overwrite_leaves_no_temporary_folders(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "c", model, meta={"step": 1})
    save_checkpoint(tmp_path / "c", model, meta={"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    assert load_checkpoint(tmp_path / "c").meta["step"] == 2


def test_wrong_shape_names_every_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "c", tiny_model())
    cfg = json.loads((path / "config.json").read_text())
    cfg["d_mlp"] = 48
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.W_in: checkpoint \(64, 32\) vs model \(48, 32\)"):
        load_checkpoint(path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "c", tiny_model())
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["blocks.1.attn.W_O"]
    tensors["blocks.9.extra"] = torch.zeros(2)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors: blocks\.1\.attn\.W_O.*unexpected tensors: blocks\.9\.extra"):
        load_checkpoint(path)


def test_truncated_weights_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c", tiny_model())
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_checkpoint(path)


def test_missing_or_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        load_checkpoint(tmp_path / "empty")
    path = save_checkpoint(tmp_path / "c", tiny_model())
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"d_model": 32, "n_layerz": 2}))
    with pytest.raises(CheckpointError, match="n_layerz"):
        load_checkpoint(path)


def test_run_folder_resolves_to_newest_complete_step(tmp_path):
    model = tiny_model()
    for step in (10, 20):
        save_checkpoint(ckpt.step_dir(tmp_path, step), model, meta={"step": step})
    # a half-written folder from a killed run must be ignored
    (tmp_path / "checkpoints" / ".step-0000030.tmp-x").mkdir()
    assert load_checkpoint(tmp_path).meta["step"] == 20
    ckpt.prune_steps(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-0000020"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000020"]


def test_export_float16_drops_train_state_and_loads_close(tmp_path):
    # no AbsTopK here: fp16 rounding can flip which entries are in the top fraction (a discrete change)
    model = tiny_model(act_sparsity_sites=())
    src = save_checkpoint(tmp_path / "c", model, meta={"step": 5}, tokenizer_json="{}",
                          train_state={"rng.torch": torch.get_rng_state()})
    out = ckpt.export_checkpoint(src, tmp_path / "e", dtype="float16")
    assert not (out / "train_state.safetensors").exists()
    assert load_file(str(out / "model.safetensors"))["W_E"].dtype == torch.float16
    loaded = load_checkpoint(out)
    assert loaded.meta["stored_dtype"] == "float16" and loaded.meta["step"] == 5
    assert next(loaded.model.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded.model(tokens()), model(tokens()), atol=2e-2, rtol=2e-2)
    with pytest.raises(CheckpointError, match="dtype must be one of"):
        ckpt.export_checkpoint(src, tmp_path / "f", dtype="int8")
