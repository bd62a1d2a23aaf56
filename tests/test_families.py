"""Llama, Qwen2 and Qwen3 checkpoints against transformers: logits, greedy generation through the engine,
saving after training steps, the checkpoint's own chat template and EOS ids, and DeepSeek-V3 folders
written by transformers."""
import json
import os
import subprocess
import sys

import pytest
import torch

from hf_tiny import make_model, padded_batch

transformers = pytest.importorskip("transformers")

FAMILIES = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_model(folder, request.param, "r1distill" if request.param == "qwen2" else "qwen3")
    return request.param, folder, hf


def test_logits_equal_transformers_on_a_padded_batch(family):
    import r1lab

    name, folder, hf = family
    model, tokenizer = r1lab.load(folder)
    assert type(model).__name__ == "FamilyLM" and model.config.model_type == name
    assert [type(m).__name__ for m in (model.model.layers[0].self_attn,)] == ["GQAttention"]
    ids, valid, mask, lengths = padded_batch()
    with torch.no_grad():
        ours = model(ids, attn_mask=mask)
        theirs = hf(ids, attention_mask=valid.long()).logits
    for row, n in enumerate(lengths):
        assert (ours[row, :n] - theirs[row, :n]).abs().max().item() <= 1e-4
    if name == "qwen2":
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied in the small Qwen2 sizes
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    if name == "qwen3":
        assert model.config.head_dim == 24 and hasattr(model.model.layers[0].self_attn, "q_norm")
    if name == "llama":
        assert model.config.rope_scaling["rope_type"] == "llama3"


def test_engine_greedy_64_tokens_equal_generate_and_follow_live_weights(family):
    import r1lab
    from r1lab.engine import Engine, SamplingParams

    _, folder, hf = family
    model, _ = r1lab.load(folder)
    torch.manual_seed(2)
    prompts = [torch.randint(5, 300, (n,)).tolist() for n in (3, 11, 7)]
    engine = Engine(model, None, max_running=2)  # 3 prompts, 2 slots: continuous batching retires and admits
    greedy = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)

    def reference(p):
        out = hf.generate(torch.tensor([p]), max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
        return out[0, len(p):].tolist()

    assert [o.token_ids for o in engine.generate(prompts, greedy)] == [reference(p) for p in prompts]
    with torch.no_grad():  # an in-place update, as an optimizer step makes: the engine must follow it
        for p in model.parameters():
            p.mul_(1.3)
        hf.load_state_dict(model.state_dict(), strict=False)
    assert [o.token_ids for o in engine.generate(prompts[:1], greedy)] == [reference(prompts[0])]


def test_saved_after_training_steps_transformers_loads_equal_logits(family, tmp_path):
    import r1lab
    from r1lab.model import save_checkpoint

    name, folder, _ = family
    model, tokenizer = r1lab.load(folder)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(5, 300, (4, 24))
    for _ in range(3):
        loss, _ = model.loss(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    save_checkpoint(model, tokenizer, tmp_path / "ft")
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                        "qwen3": "Qwen3ForCausalLM"}[name]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ft", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "ft")
    chat = [{"role": "user", "content": "What is 12 + 30?"}]
    assert theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        tokenizer.render(chat, add_generation_prompt=True)
    generation = json.loads((tmp_path / "ft" / "generation_config.json").read_text())
    assert generation["temperature"] == 0.7 and generation["top_p"] == 0.8  # the checkpoint's own defaults kept
    again, _ = r1lab.load(tmp_path / "ft")
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


@pytest.mark.parametrize("style,prefix,system", [("chatml", "", True), ("qwen3", "", False),
                                                 ("r1distill", "<think>\n", False)])
def test_chat_template_as_transformers_renders_it(tmp_path, style, prefix, system):
    from hf_tiny import make_tokenizer
    from r1lab.chat_tokenizer import R1_SYSTEM_PROMPT, load_tokenizer, recipe_messages

    make_tokenizer(tmp_path, style)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 0]}))
    ours, theirs = load_tokenizer(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "<think>\n2+3=5\n</think>\nThe answer is \\boxed{5}."},
            {"role": "user", "content": "And 4 + 4?"}]
    for gen in (False, True):
        assert ours.apply_chat_template(chat, add_generation_prompt=gen) == \
            theirs.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True, return_dict=False)
    assert ours.response_prefix == prefix
    assert ours.eos_token_ids == {ours.eos_token_id, 5, 0}  # every EOS of generation_config.json stops
    user_only = ours.apply_chat_template(chat[1:2], add_generation_prompt=True, tokenize=False)
    assert R1_SYSTEM_PROMPT not in user_only  # the tokenizer adds nothing of its own
    recipe = ours.apply_chat_template(recipe_messages(ours, chat[1:2]), add_generation_prompt=True, tokenize=False)
    assert (R1_SYSTEM_PROMPT in recipe) == system  # no <think> in the template: the recipes' Open-R1 system prompt
    assert ours.decode(ours.encode("<think>\nok</think>")) == "<think>\nok</think>"


def test_deepseek_v3_saved_by_transformers_with_default_mtp_loads(tmp_path, capsys):
    import r1lab

    torch.manual_seed(0)
    config = transformers.DeepseekV3Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
        topk_group=1, first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=128)
    hf = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else None
    hf.save_pretrained(tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (saved.get("num_nextn_predict_layers") or saved.get("num_mtp_layers")) == 1  # the default: MTP on paper
    model, _ = r1lab.load(tmp_path / "hf")
    assert "no multi-token-prediction weights" in capsys.readouterr().err
    assert len(model.mtp) == 0
    ids = torch.randint(0, 300, (2, 19))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_bf16_load_and_dtype(tmp_path):
    import r1lab

    hf = make_model(tmp_path / "m", "qwen2", "chatml")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bf16" / name).write_bytes((tmp_path / "m" / name).read_bytes())
    model, _ = r1lab.load(tmp_path / "bf16")
    assert next(model.parameters()).dtype == torch.float32
    kept, _ = r1lab.load(tmp_path / "bf16", dtype=torch.bfloat16)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    ids = torch.randint(5, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = kept(ids).float(), hf(ids).logits.float()
    # both run in bf16, whose step is 2^-7 between 1 and 2: two kernels that sum in another order (an AVX2 CPU
    # takes another path than one with bf16 units) land a step or two apart, not more
    step = 2.0 ** -7 * max(1.0, theirs.abs().max().item())
    assert (ours - theirs).abs().max().item() <= 3 * step


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_unsupported_model_and_offline_hub_id_are_one_line_errors(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    done = _cli("eval", folder, "--n", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "GPT2LMHeadModel" in done.stderr and "Qwen2ForCausalLM" in done.stderr and "LlamaForCausalLM" in done.stderr
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    done = _cli("eval", "Qwen/Qwen2.5-0.5B-Instruct", "--n", "1", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "could not be fetched from the Hugging Face hub" in done.stderr and len(done.stderr.strip().splitlines()) == 1


PEAK_RSS = """
import gc, sys, torch
import r1lab
gc.collect()
def hwm():  # KiB, this process's own peak (ru_maxrss would include the forking pytest's)
    return int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))
before = hwm()
model, _ = r1lab.load(sys.argv[1])
after = hwm()
print(sum(p.numel() for p in model.parameters()), (after - before) * 1024)
"""


def test_loading_bf16_does_not_hold_two_fp32_copies(tmp_path):
    """A ~50M-parameter bf16 checkpoint loaded in fp32: the peak RSS grows by about 1.6 fp32 copies (the fp32
    weights plus the mapped bf16 file), not 2 (reading every bf16 tensor first, then converting, measured 1.98)."""
    hf = make_model(tmp_path / "m", "qwen2", "chatml", vocab_size=32000, hidden_size=512, intermediate_size=1536,
                    num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "m")
    del hf
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    params, grown = map(int, done.stdout.split())
    assert 40e6 < params < 70e6
    fp32 = 4 * params
    assert grown < 1.75 * fp32, f"loading grew the peak RSS by {grown / 2**20:.0f} MiB for {fp32 / 2**20:.0f} MiB of fp32"


def test_a_tokenizer_without_chat_template_loads_and_says_so_when_asked_to_chat(tmp_path):
    from hf_tiny import make_tokenizer
    from r1lab.chat_tokenizer import load_tokenizer

    make_tokenizer(tmp_path, "chatml")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.decode(tokenizer.encode("What is 2 + 3?")) == "What is 2 + 3?"
    with pytest.raises(ValueError, match="no chat_template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)


@pytest.mark.parametrize("style", ["qwen3", "r1distill"])
def test_sft_examples_train_what_the_template_leaves_to_the_model(tmp_path, style):
    """R1-Distill's template pre-fills "<think>\\n": the completion starts inside the thinking. Qwen3's does not:
    the completion opens <think> itself. Either way prompt + completion is the whole turn."""
    from hf_tiny import make_tokenizer
    from r1lab.chat_tokenizer import load_tokenizer
    from r1lab.train.data import chat_example

    make_tokenizer(tmp_path, style)
    tokenizer = load_tokenizer(tmp_path)
    row = {"prompt": "What is 2 + 3?", "completion": "<think>\n2+3=5\n</think>\nThe answer is \\boxed{5}."}
    example = chat_example(row, tokenizer)
    completion = tokenizer.decode(example.completion)
    assert completion.endswith(tokenizer.eos_token)
    whole = tokenizer.decode(example.prompt + example.completion)
    assert whole.endswith("<think>\n2+3=5\n</think>\nThe answer is \\boxed{5}." + tokenizer.eos_token)
    assert completion.startswith("<think>") == (style == "qwen3")


def test_generation_config_defaults_are_what_generate_eval_and_serve_sample_with(tmp_path, monkeypatch, capsys):
    """hf_tiny's generation_config.json says temperature 0.7, top_p 0.8: `r1lab generate`, `r1lab eval` and
    the server sample with them unless the command or request says otherwise; do_sample=false means greedy."""
    from argparse import Namespace

    import httpx

    import r1lab
    from r1lab.cli import main
    from r1lab.engine import Engine
    from r1lab.eval.cli import settings_for
    from r1lab.model.families import generation_defaults
    from r1lab.serve import create_app
    from r1lab.serve.cli import ServerThread

    make_model(tmp_path / "m", "qwen2", "chatml")
    model, tokenizer = r1lab.load(tmp_path / "m")
    assert generation_defaults(model) == {"temperature": 0.7, "top_p": 0.8}
    model.config.generation = dict(model.config.generation, do_sample=False)
    assert generation_defaults(model) == {"temperature": 0.0}
    model.config.generation["do_sample"] = True

    def knobs(params):
        return params.temperature, params.top_p

    # eval: the task's defaults, then the checkpoint's, then the command line
    for told, want in (((None, None), (0.7, 0.8)), ((0.0, None), (0.0, 0.8)), ((None, 0.5), (0.7, 0.5))):
        settings = settings_for("addition", Namespace(temperature=told[0], top_p=told[1], instruction=None),
                                generation_defaults(model))
        assert (settings["temperature"], settings["top_p"]) == want

    # generate
    seen = []
    submit = Engine.submit
    monkeypatch.setattr(Engine, "submit", lambda self, ids, params, **kw: seen.append(knobs(params))
                        or submit(self, ids, params, **kw))  # every request of the engine, streamed or not
    assert main(["generate", str(tmp_path / "m"), "What is", "--max-tokens", "2"]) == 0
    assert main(["generate", str(tmp_path / "m"), "What is", "--max-tokens", "2", "--temperature", "0.3"]) == 0
    assert seen == [(0.7, 0.8), (0.3, 0.8)]
    capsys.readouterr()

    # serve: a request without temperature / top_p gets the checkpoint's
    engine = Engine(model, tokenizer, max_running=2, max_model_len=64)
    seen.clear()
    engine.start()
    try:
        with ServerThread(create_app(engine, tokenizer, "m")) as server:
            for extra in ({}, {"top_p": 0.5}, {"temperature": 0}):
                body = {"model": "m", "prompt": "What is", "max_tokens": 2, **extra}
                assert httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        engine.stop()
    assert seen == [(0.7, 0.8), (0.7, 0.5), (0.0, 0.8)]
