"""LoRA: adapters in PEFT's format that `peft` loads onto transformers' model with r1lab's logits, `r1lab merge`,
the engine sampling with the adapter, and LoRA SFT / GRPO runs that train only the adapter and resume bitwise."""
import copy
import hashlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

import r1lab
from conftest import kill_at_checkpoint, serve_in_background, small_policy_checkpoint, tiny_config
from r1lab.engine import Engine, SamplingParams
from r1lab.model import Transformer, load_model, save_checkpoint
from r1lab.model.adapter import peft_config, save_adapter
from r1lab.model.lora import LoRASpec, add_adapters, merge_adapters, merged_view, resolve_targets

transformers = pytest.importorskip("transformers")

ATTENTION = "q_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj"
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "r1lab.cli", *map(str, args)]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def _adapted(tokenizer, base_dir, targets, **model_overrides):
    """A tiny base checkpoint in base_dir, and the same model with random (non-zero) adapters on `targets`."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(tokenizer.vocab_size, **model_overrides)).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.05)
    save_checkpoint(model, tokenizer, base_dir)
    spec = LoRASpec(4, 8.0, 0.0, resolve_targets(model, targets))
    add_adapters(model, spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B.weight"):
                p.normal_(0, 0.1)  # a fresh adapter is a no-op (B = 0); make it change the logits
    model.peft_config = peft_config(spec, str(base_dir))
    return model


@pytest.mark.parametrize("variant", ["mla-moe", "q-lora-mtp"])
def test_peft_loads_our_adapter_with_same_logits(tmp_path, tokenizer, variant):
    peft = pytest.importorskip("peft")
    overrides, targets = ({}, ATTENTION) if variant == "mla-moe" else (
        {"q_lora_rank": 24, "num_nextn_predict_layers": 1}, "q_a_proj,q_b_proj,o_proj")
    model = _adapted(tokenizer, tmp_path / "base", targets, **overrides)
    save_adapter(model, tokenizer, tmp_path / "adapter")
    names = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight" in names
    assert not any(".mtp." in n or "experts." in n for n in names)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert sorted(config["target_modules"]) == sorted(targets.split(","))

    ids = torch.randint(0, tokenizer.vocab_size, (2, 23))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base_logits = hf(ids).logits
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(ids).logits
        ours = model(ids)
    assert (ours - base_logits).abs().max().item() > 1e-2  # the adapter matters
    assert (ours - theirs).abs().max().item() <= 1e-4
    # and r1lab reads the folder back: base from adapter_config.json, adapters on it
    again, tok = r1lab.load(tmp_path / "adapter")
    assert tok is not None
    with torch.no_grad():
        assert (again(ids) - ours).abs().max().item() == 0.0


def test_an_adapter_peft_saved_loads_in_r1lab(tmp_path, tokenizer):
    """The other direction: get_peft_model on transformers' model, save_pretrained, r1lab.load."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    save_checkpoint(Transformer(tiny_config(tokenizer.vocab_size)), tokenizer, tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, tokenizer.vocab_size, (2, 15))
    with torch.no_grad():
        theirs = peft_model.eval()(ids).logits
        ours = r1lab.load(tmp_path / "adapter")[0](ids)
        base = load_model(tmp_path / "base")(ids)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - base).abs().max().item() > 1e-2  # the adapter matters


def test_merge_equals_adapter_logits_and_engine_samples_with_the_adapter(tmp_path, tokenizer):
    model = _adapted(tokenizer, tmp_path / "base", "all-linear", mlp="moe")
    assert {"gate_proj", "up_proj", "down_proj", "q_proj", "o_proj"} <= set(model.peft_config["target_modules"])
    save_adapter(model, tokenizer, tmp_path / "adapter")
    base_sha = _sha(tmp_path / "base" / "model.safetensors")
    done = subprocess.run(_cli("merge", tmp_path / "adapter", "--out", tmp_path / "merged"), capture_output=True,
                          text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    merged = load_model(tmp_path / "merged")
    assert not any("lora" in n for n in merged.state_dict())
    ids = torch.randint(0, tokenizer.vocab_size, (2, 19))
    with torch.no_grad():
        ours, folded = model(ids), merged(ids)
        base = load_model(tmp_path / "base")(ids)
    assert (ours - base).abs().max().item() > 1e-2
    assert (ours - folded).abs().max().item() <= 1e-5
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(ids).logits - ours).abs().max().item() <= 1e-4
    assert _sha(tmp_path / "base" / "model.safetensors") == base_sha  # a merge leaves the base as it was

    # the engine decodes the adapter folder exactly as the merged checkpoint, and unlike the base
    adapted, tok = r1lab.load(tmp_path / "adapter")
    prompts = [tok.encode("What is 4821 + 1379?"), tok.encode("Hello world")]
    greedy = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    out = [o.token_ids for o in Engine(adapted, tok).generate(prompts, greedy)]
    assert out == [o.token_ids for o in Engine(merged, tok).generate(prompts, greedy)]
    assert out != [o.token_ids for o in Engine(load_model(tmp_path / "base"), tok).generate(prompts, greedy)]


def test_serve_an_adapter_folder(tmp_path, tokenizer):
    """`r1lab serve ADAPTER_DIR` answers with the adapter applied: greedy text equals the merged model's."""

    import httpx

    model = _adapted(tokenizer, tmp_path / "base", "all-linear")
    save_adapter(model, tokenizer, tmp_path / "adapter")
    merged = copy.deepcopy(model)
    merge_adapters(merged)
    prompt = "What is 4821 + 1379?"
    want = Engine(merged, tokenizer).generate([prompt], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].text
    proc, url = serve_in_background([tmp_path / "adapter"], ENV)
    try:
        body = {"model": "adapter", "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        answer = httpx.post(url + "/v1/completions", json=body, timeout=30).json()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert answer["choices"][0]["text"] == want


def test_engine_follows_an_adapter_updated_in_place(tmp_path, tokenizer):
    """GRPO's rollouts: after an optimizer step changes the adapter, the next generation uses it."""
    model = _adapted(tokenizer, tmp_path / "base", ATTENTION)
    engine = Engine(model, tokenizer)
    prompt = [tokenizer.encode("Solve for x")]
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    before = engine.generate(prompt, greedy)[0].token_ids
    base_q = model.get_parameter("model.layers.0.self_attn.q_proj.weight").clone()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B.weight"):
                p.mul_(-3.0)  # in place, as an optimizer step does
    after = engine.generate(prompt, greedy)[0].token_ids
    assert after != before
    merged = copy.deepcopy(model)
    merge_adapters(merged)
    assert after == Engine(merged, tokenizer).generate(prompt, greedy)[0].token_ids
    # the engine read the adapted weights through merged_view, which put the base weights back
    assert torch.equal(model.get_parameter("model.layers.0.self_attn.q_proj.weight"), base_q)
    with merged_view(model):
        assert not torch.equal(model.get_submodule("model.layers.0.self_attn.q_proj").weight, base_q)


def test_adapter_folder_errors_name_the_problem(tmp_path, tokenizer, capsys):
    from r1lab.cli import main

    model = _adapted(tokenizer, tmp_path / "base", ATTENTION)
    model.peft_config["base_model_name_or_path"] = str(tmp_path / "gone")
    save_adapter(model, tokenizer, tmp_path / "adapter")
    assert main(["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "gone" in err and "--base" in err and len(err.strip().splitlines()) == 1
    # --base names where the base is now
    assert main(["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "m"), "--base", str(tmp_path / "base")]) == 0
    assert load_model(tmp_path / "m") is not None
    with pytest.raises(ValueError, match="matches no linear layer.*kv_b_proj"):
        resolve_targets(Transformer(tiny_config(tokenizer.vocab_size)), "v_proj")


# ---------------------------------------------------------------- training runs

TINY = ["grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.max_new_tokens=12", "grpo.samples_every=1",
        "grpo.rewards={repetition: 1.0, tag_count: 1.0}", "grpo.max_sampling_rounds=2", "log_every=1"]


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory, tokenizer):
    return small_policy_checkpoint(tokenizer, tmp_path_factory.mktemp("lora") / "base")


def _check_adapter_run(run, base_ckpt, base_sha):
    final = run / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    assert _sha(base_ckpt / "model.safetensors") == base_sha  # the base file is untouched
    model, _ = r1lab.load(final)
    base = load_model(base_ckpt).state_dict()
    state = model.state_dict()
    trained = [n for n in state if "lora_B" in n]
    assert trained and all(state[n].abs().max() > 0 for n in trained)  # B started at zero: it moved
    for name, t in base.items():  # every base weight (and router bias) exactly as it was
        assert torch.equal(state[name], t), name


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_lora_run_trains_the_adapter_only_and_resumes_bitwise(tmp_path, base_ckpt, command, capsys):
    base_sha = _sha(base_ckpt / "model.safetensors")
    if command == "sft":
        args = ["sft", "--init", base_ckpt, "data.tasks=addition", "seq_len=64", "batch_size=4", "max_steps=12",
                "save_every=4", "warmup_steps=2", "lr=1e-2", "log_every=100", "lora.r=4", "lora.dropout=0.1"]
    else:
        args = ["grpo", "--init", base_ckpt, "max_steps=6", "save_every=2", *TINY, "lora.r=4", "lora.targets=q_proj,o_proj"]
    first = "step_4" if command == "sft" else "step_2"
    from r1lab.cli import main

    # the uninterrupted run and the resume run in this process (one thread, as the killed subprocess)
    assert main([*map(str, args), "--out", str(tmp_path / "straight")]) == 0
    assert "trainable parameters" in capsys.readouterr().err
    _check_adapter_run(tmp_path / "straight", base_ckpt, base_sha)
    ckpt = tmp_path / "straight" / "checkpoints" / ("step_12" if command == "sft" else "step_6")
    assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "optimizer.pt").exists()
    straight = _rows(tmp_path / "straight" / "metrics.jsonl")
    if command == "sft":
        assert sum(r["loss"] for r in straight[-3:]) < sum(r["loss"] for r in straight[:3])  # it learns

    kill_at_checkpoint(_cli(*args, "--out", tmp_path / "cut"), tmp_path / "cut" / "checkpoints" / first, ENV)
    assert not (tmp_path / "cut" / "final").exists(), "the run finished before it was killed"
    assert main([*map(str, args), "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().err
    cut = _rows(tmp_path / "cut" / "metrics.jsonl")
    keys = ("loss", "reward", "response_length") if command == "grpo" else ("loss", "grad_norm")
    assert [[r[k] for k in keys] for r in cut] == [[r[k] for k in keys] for r in straight]
    assert ((tmp_path / "cut" / "final" / "adapter_model.safetensors").read_bytes()
            == (tmp_path / "straight" / "final" / "adapter_model.safetensors").read_bytes())


def test_lora_grpo_raises_a_reward_it_is_given(tmp_path, tokenizer, monkeypatch):
    """The toy reward of test_grpo (share of '7's) rises with only a LoRA adapter training.

    The base's LM head is scaled up, as a trained model's is: with a frozen head of a fresh model (rows of
    norm ~0.1, final norm 1) no hidden state can give any token more than ~0.5% (measured), whatever the
    adapters do, while full fine-tuning grows the head itself."""
    from r1lab import rewards
    from r1lab.config import build
    from r1lab.train.grpo import GRPOConfig, PRESETS, grpo

    torch.manual_seed(0)
    base = Transformer(tiny_config(tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                   moe_intermediate_size=16, n_routed_experts=4, kv_lora_rank=16))
    with torch.no_grad():
        base.lm_head.weight.mul_(20.0)
    save_checkpoint(base, tokenizer, tmp_path / "base")
    base_sha = _sha(tmp_path / "base" / "model.safetensors")

    def sevens():
        def fn(completions, **_):
            return [c[len("<think>\n"):].count("7") / max(1, len(c) - len("<think>\n")) for c in completions]
        return fn

    monkeypatch.setitem(rewards.FACTORIES, "sevens", sevens)
    cfg = build(GRPOConfig, PRESETS, "cpu-tiny", ["max_steps=15", "lr=1e-2", "warmup_steps=1", "grpo.group_size=8",
                                                  "grpo.prompts_per_step=4", "grpo.max_new_tokens=8",
                                                  "grpo.rewards={sevens: 1.0}", "save_every=100", "lora.r=8"])
    grpo(cfg, tmp_path / "run", init=tmp_path / "base")
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    print(f"share of '7' with LoRA: first 3 steps {first:.3f}, last 3 steps {last:.3f}")
    assert last > first + 0.3
    _check_adapter_run(tmp_path / "run", tmp_path / "base", base_sha)


def test_lora_config_errors_are_one_line(tmp_path, base_ckpt, capsys):
    from r1lab.cli import main

    assert main(["sft", "--init", str(base_ckpt), "--out", str(tmp_path / "r"), "lora.r=4", "lora.targets=v_proj",
                 "max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "'v_proj' matches no linear layer" in err and "kv_b_proj" in err and "Traceback" not in err


def test_lora_distillation_trains_an_adapter_on_the_student(tmp_path, base_ckpt, monkeypatch):
    """`r1lab distill ... lora.r=8`: the student's SFT on the verified traces trains an adapter only (the
    teacher here answers with the tasks' reference traces, so every problem has a verified trace)."""
    from r1lab.config import build
    from r1lab.train import distill

    def teacher(path, problems, cfg):
        return [[p["reference_trace"]] * cfg.k for p in problems]

    monkeypatch.setattr(distill, "responses_from_checkpoint", teacher)
    base_sha = _sha(base_ckpt / "model.safetensors")
    cfg = build(distill.DistillConfig, distill.PRESETS, "cpu-micro",
                ["teacher.problems=16", "max_steps=12", "batch_size=4", "seq_len=128", "warmup_steps=2", "lr=1e-2",
                 "save_every=100", "log_every=100", "lora.r=8"])
    stats = distill.distill(cfg, tmp_path / "run", teacher="unused-teacher", student=base_ckpt)
    assert stats["teacher_correct"] == 1.0 and stats["kept_traces"] == 16
    losses = [r["loss"] for r in _rows(tmp_path / "run" / "sft" / "metrics.jsonl")]
    assert sum(losses[-3:]) < sum(losses[:3])
    _check_adapter_run(tmp_path / "run" / "sft", base_ckpt, base_sha)


def test_attach_lora_freezes_the_base_and_the_optimizer_sees_only_adapters(tmp_path, tokenizer):
    from r1lab.config import ConfigError, TrainConfig
    from r1lab.train.lora import LoRAConfig, attach_lora
    from r1lab.train.dist import Dist, RunState
    from r1lab.train.step import make_optimizer

    run = RunState(tmp_path, Dist(), TrainConfig(optimizer="muon"))
    model = _adapted(tokenizer, tmp_path / "base", ATTENTION)  # as loaded from an adapter folder
    save_adapter(model, tokenizer, tmp_path / "adapter")
    ids = torch.randint(0, tokenizer.vocab_size, (1, 17))
    with torch.no_grad():
        want = model(ids)
    # the same adapter settings: training goes on with that adapter; other settings: a one-line error
    with pytest.raises(ConfigError, match="already carries a LoRA adapter"):
        attach_lora(model, LoRAConfig(r=8, targets=ATTENTION), "unused", run)
    model = attach_lora(model, LoRAConfig(r=4, alpha=8.0, targets=ATTENTION), "unused", run)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer = make_optimizer(model, run.train)  # muon asked for, but adapters stay on AdamW
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(model.get_parameter(n)) for n in trainable}
    # lora.r=0 with an adapter folder as --init: merged, and the whole model trains
    fresh, _ = r1lab.load(tmp_path / "adapter")
    merged = attach_lora(fresh, LoRAConfig(r=0), None, run)
    assert not any("lora" in n for n in merged.state_dict()) and all(p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        assert (merged(ids) - want).abs().max().item() <= 1e-5
    with pytest.raises(ConfigError, match="needs --init"):
        attach_lora(Transformer(tiny_config(tokenizer.vocab_size)), LoRAConfig(r=4, targets=ATTENTION), None, run)
