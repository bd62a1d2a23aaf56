import json
import os

import pytest
import torch

from conftest import tiny_config
from r1lab.model import CheckpointError, Transformer, load_model, save_checkpoint


@pytest.fixture()
def ckpt(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config(tokenizer.vocab_size))
    return save_checkpoint(model, tokenizer, tmp_path / "ckpt"), model


def test_folder_is_a_hf_checkpoint(ckpt):
    folder, _ = ckpt
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "r1lab_manifest.json"} <= names
    assert json.loads((folder / "config.json").read_text())["model_type"] == "deepseek_v3"
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]


def test_truncated_weights_are_refused_with_path(ckpt):
    folder, _ = ckpt
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(folder)


def test_flipped_byte_is_refused_with_path(ckpt):
    folder, _ = ckpt
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256.*model.safetensors"):
        load_model(folder)


def test_garbage_without_manifest_is_refused_with_path(ckpt):
    folder, _ = ckpt
    (folder / "r1lab_manifest.json").unlink()
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(folder)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "empty")


def test_overwrite_is_atomic_and_keeps_loading(ckpt, tokenizer):
    folder, model = ckpt
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_checkpoint(model, tokenizer, folder)
    again = load_model(folder)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt"]


def test_failed_write_leaves_old_checkpoint(ckpt, tokenizer, monkeypatch):
    folder, model = ckpt
    before = (folder / "model.safetensors").read_bytes()
    import r1lab.model.checkpoint as checkpoint

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, tokenizer, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt"]


def test_public_load(ckpt):
    import r1lab

    folder, model = ckpt
    loaded, tok = r1lab.load(folder)
    ids = torch.tensor([tok.encode("What is 1 + 2?")])
    with torch.no_grad():
        assert torch.allclose(loaded(ids), model.eval()(ids), atol=1e-5)
