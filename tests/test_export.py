"""Checkpoints for the serving engines: config.json fields vLLM/SGLang read, --fix-config for older
checkpoints, the save-time vLLM note, and the GGUF file llama.cpp loads (read back with gguf's reader)."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from r1lab.model import Transformer, load_model, save_checkpoint
from r1lab.model.checkpoint import CheckpointError, rewrite_config, verify_checkpoint
from r1lab.model.config import preset
from r1lab.model.serving import serving_problems


@pytest.fixture()
def ckpt(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config(tokenizer.vocab_size, n_group=2, topk_group=1))
    for m in model.modules():  # a trained router bias, so a wrong export would show
        if hasattr(m, "e_score_correction_bias"):
            m.e_score_correction_bias.normal_()
    return save_checkpoint(model, tokenizer, tmp_path / "ckpt")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True, timeout=300)


def test_config_json_has_the_routing_fields_engines_read(ckpt):
    hf = json.loads((ckpt / "config.json").read_text())
    assert hf["topk_method"] == "noaux_tc" and hf["scoring_func"] == "sigmoid" and hf["moe_layer_freq"] == 1
    assert hf["torch_dtype"] == "bfloat16"
    try:  # vLLM's own config handling, where it is installed (scripts/interop.sh's venv)
        from vllm.transformers_utils.config import get_config
    except ImportError:
        import transformers

        config = transformers.AutoConfig.from_pretrained(ckpt)
    else:
        config = get_config(str(ckpt), trust_remote_code=False)
    assert getattr(config, "topk_method") == "noaux_tc" and getattr(config, "scoring_func") == "sigmoid"
    assert config.n_group == 2 and config.topk_group == 1


def test_old_checkpoint_loads_and_fix_config_rewrites_it(ckpt):
    config_path = ckpt / "config.json"
    old = json.loads(config_path.read_text())
    for key in ("topk_method", "scoring_func", "moe_layer_freq"):
        del old[key]
    old["torch_dtype"], old["custom_key"] = "float32", 7
    config_path.write_text(json.dumps(old, indent=2) + "\n")
    manifest = json.loads((ckpt / "r1lab_manifest.json").read_text())
    manifest["files"]["config.json"]["bytes"] = config_path.stat().st_size
    from r1lab.model.checkpoint import _sha256

    manifest["files"]["config.json"]["sha256"] = _sha256(config_path)
    (ckpt / "r1lab_manifest.json").write_text(json.dumps(manifest))  # yesterday's checkpoint, consistent
    weights = (ckpt / "model.safetensors").read_bytes()
    before = load_model(ckpt)  # loads without the new fields
    r = _cli("export", str(ckpt))
    assert r.returncode == 0 and "config.json lacks topk_method, scoring_func: run with --fix-config" in r.stdout
    r = _cli("export", str(ckpt), "--fix-config")
    assert r.returncode == 0, r.stderr
    assert "moe_layer_freq" in r.stdout and "scoring_func" in r.stdout and "torch_dtype" in r.stdout
    fixed = json.loads(config_path.read_text())
    assert fixed["topk_method"] == "noaux_tc" and fixed["torch_dtype"] == "bfloat16" and fixed["custom_key"] == 7
    verify_checkpoint(ckpt)  # the manifest was updated
    assert (ckpt / "model.safetensors").read_bytes() == weights
    after = load_model(ckpt)
    x = torch.randint(0, 300, (1, 12))
    assert torch.equal(before(x), after(x))
    assert rewrite_config(ckpt) == []  # idempotent
    assert "already up to date" in _cli("export", str(ckpt), "--fix-config").stdout


def test_fix_config_refuses_a_damaged_checkpoint(ckpt):
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        rewrite_config(ckpt)
    r = _cli("export", str(ckpt), "--fix-config")
    assert r.returncode == 2 and "sha256 mismatch" in r.stderr and "Traceback" not in r.stderr


def test_softmax_router_config_is_refused(ckpt):
    hf = json.loads((ckpt / "config.json").read_text())
    hf["scoring_func"] = "softmax"
    (ckpt / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="scoring_func 'softmax'"):
        load_model(ckpt, verify=False)


def test_serving_presets_and_save_time_note(tmp_path, tokenizer, capsys):
    assert serving_problems(preset("cpu-vllm"))["vllm"] == []
    assert serving_problems(preset("gpu-small"))["vllm"] == []
    assert "512 + 64" in serving_problems(preset("cpu-tiny"))["vllm"][0]
    assert serving_problems(preset("cpu-tiny"))["llama.cpp"] == []
    assert serving_problems(preset("cpu-tiny", attention="mha"))["llama.cpp"]
    from r1lab.model import serving

    serving._warned.clear()
    model = Transformer(tiny_config(tokenizer.vocab_size))
    save_checkpoint(model, tokenizer, tmp_path / "a")
    save_checkpoint(model, tokenizer, tmp_path / "b")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vLLM will not serve" in err[0] and "kv_lora_rank + qk_rope_head_dim = 32 + 8" in err[0]
    save_checkpoint(Transformer(preset("cpu-vllm", vocab_size=tokenizer.vocab_size)), tokenizer, tmp_path / "c")
    assert capsys.readouterr().err == ""


def test_gguf_export_layout(ckpt, tmp_path, tokenizer):
    gguf = pytest.importorskip("gguf", reason="the GGUF writer is the optional gguf package (test extra)")
    out = tmp_path / "model.gguf"
    r = _cli("export", str(ckpt), "--gguf", str(out))
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(str(out))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    cfg = load_model(ckpt).config
    assert field("general.architecture") == "deepseek2"
    assert field("deepseek2.attention.kv_lora_rank") == cfg.kv_lora_rank
    assert field("deepseek2.attention.key_length") == cfg.kv_lora_rank + cfg.qk_rope_head_dim
    assert field("deepseek2.attention.head_count_kv") == 1
    assert field("deepseek2.leading_dense_block_count") == cfg.first_k_dense_replace
    assert field("deepseek2.expert_gating_func") == int(gguf.ExpertGatingFuncType.SIGMOID)
    assert field("deepseek2.expert_group_count") == 2 and field("deepseek2.expert_group_used_count") == 1
    assert field("tokenizer.ggml.pre") == "refact"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size and tokens[tokenizer.eos_token_id] == tokenizer.eos_token
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field("tokenizer.chat_template") == tokenizer.chat_template
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    sd = load_model(ckpt).state_dict()
    nh, nope, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    for i in range(cfg.num_hidden_layers):
        # k_b (heads, latent, nope) and v_b (heads, v, latent) put back together are kv_b_proj
        k_b, v_b = tensors[f"blk.{i}.attn_k_b.weight"], tensors[f"blk.{i}.attn_v_b.weight"]
        kv_b = torch.cat([k_b.transpose(1, 2), v_b], dim=1).reshape(nh * (nope + v), cfg.kv_lora_rank)
        assert torch.equal(kv_b, sd[f"model.layers.{i}.self_attn.kv_b_proj.weight"])
    layer = cfg.first_k_dense_replace
    assert torch.equal(tensors[f"blk.{layer}.exp_probs_b.bias"], sd[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"])
    assert torch.equal(tensors[f"blk.{layer}.ffn_down_exps.weight"][3],
                       sd[f"model.layers.{layer}.mlp.experts.3.down_proj.weight"])
    assert "blk.0.ffn_gate.weight" in tensors and "blk.0.ffn_gate_inp.weight" not in tensors


def test_gguf_export_refuses_what_llama_cpp_cannot_run(tmp_path, tokenizer):
    pytest.importorskip("gguf", reason="the GGUF writer is the optional gguf package (test extra)")
    folder = save_checkpoint(Transformer(tiny_config(tokenizer.vocab_size, attention="mha")), tokenizer, tmp_path / "mha")
    r = _cli("export", str(folder), "--gguf", str(tmp_path / "x.gguf"))
    assert r.returncode == 2 and "attention=mha" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_grpo_rollout_option_errors_are_one_line(ckpt, tmp_path):
    r = _cli("grpo", "--init", str(ckpt), "--out", str(tmp_path / "g"), "grpo.rollout=sglang")
    assert r.returncode == 2 and "grpo.rollout must be r1lab or vllm, got 'sglang'" in r.stderr
    try:
        import vllm  # noqa: F401
    except ImportError:
        r = _cli("grpo", "--init", str(ckpt), "--out", str(tmp_path / "g"), "grpo.rollout=vllm", "max_steps=1")
        assert r.returncode == 2 and "grpo.rollout=vllm needs vLLM" in r.stderr and "Traceback" not in r.stderr
