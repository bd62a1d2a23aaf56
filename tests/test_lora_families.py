"""LoRA on the open families: a tiny Llama, Qwen2 and Qwen3 made with transformers' own classes (hf_tiny), a few
steps of `r1lab sft ... lora.r=4` with adapters on the attention and MLP projections, then: peft loads the saved
adapter onto transformers' model with r1lab's logits; `r1lab merge` writes a folder transformers loads with the
same logits; the engine samples with the adapter applied (greedy tokens equal the merged model's), also after an
in-place update of the adapter as GRPO's optimizer makes."""
import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from hf_tiny import make_model, padded_batch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

FAMILIES = ["llama", "qwen2", "qwen3"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory):
    """(family, base folder, LoRA SFT's final adapter folder, merged folder)."""
    from r1lab.cli import main

    family = request.param
    root = tmp_path_factory.mktemp(f"lora-{family}")
    make_model(root / "base", family, "r1distill" if family == "qwen2" else "qwen3" if family == "qwen3" else "chatml")
    assert main(["sft", "--init", str(root / "base"), "--out", str(root / "sft"), "data.tasks=addition", "seq_len=512",
                 "batch_size=4", "max_steps=4", "warmup_steps=1", "lr=1e-2", "save_every=100", "log_every=100",
                 "lora.r=4", f"lora.targets={','.join(TARGETS)}"]) == 0
    assert main(["merge", str(root / "sft" / "final"), "--out", str(root / "merged")]) == 0
    return family, root / "base", root / "sft" / "final", root / "merged"


def _max_diff(a, b, lengths) -> float:
    return max((a[row, :n] - b[row, :n]).abs().max().item() for row, n in enumerate(lengths))


def _hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_the_adapter_is_in_peft_format_on_attention_and_mlp(run):
    family, base, adapter, _ = run
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and sorted(config["target_modules"]) == sorted(TARGETS)
    assert not (adapter / "model.safetensors").exists()
    names = load_file(adapter / "adapter_model.safetensors")
    for layer in range(2):
        for module in TARGETS:
            part = "mlp" if module.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
            for ab in "AB":
                assert f"base_model.model.model.layers.{layer}.{part}.{module}.lora_{ab}.weight" in names
    assert all(names[n].abs().max() > 0 for n in names if "lora_B" in n)  # B starts at zero: training moved it


def test_the_adapter_folder_keeps_the_checkpoints_tokenizer(run):
    """Its own chat template and every EOS id of the base (an adapter folder has no generation_config.json)."""
    import r1lab

    family, base, adapter, _ = run
    _, ours = r1lab.load(adapter)
    _, want = r1lab.load(base)
    assert type(ours) is type(want) and type(ours).__name__ == "ChatTokenizer"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                    {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n5"},
                    {"role": "user", "content": "And 4 + 4?"}]
    for prompt in (True, False):
        assert (ours.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False)
                == want.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False))
    assert ours.eos_token_ids == want.eos_token_ids and len(want.eos_token_ids) == (1 if family == "qwen2" else 2)
    assert ours.response_prefix == want.response_prefix


def test_peft_loads_the_adapter_with_r1labs_logits(run):
    import r1lab

    family, base, adapter, _ = run
    ours_model, _ = r1lab.load(adapter)
    assert type(ours_model).__name__ == "FamilyLM" and ours_model.config.model_type == family
    ids, valid, mask, lengths = padded_batch()
    hf = _hf(base)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base_logits = hf(ids, attention_mask=valid.long()).logits
        theirs = peft.PeftModel.from_pretrained(hf, adapter).eval()(ids, attention_mask=valid.long()).logits
        ours = ours_model(ids, attn_mask=mask)
    print(f"{family}: peft vs r1lab max |diff| {_max_diff(ours, theirs, lengths):.2e}, "
          f"adapter vs base {_max_diff(ours, base_logits, lengths):.2e}")
    assert _max_diff(ours, base_logits, lengths) > 1e-2  # the adapter matters
    assert _max_diff(ours, theirs, lengths) <= 1e-4


def test_merge_loads_in_transformers_with_the_adapters_logits(run):
    import r1lab
    from r1lab.model import load_model

    family, base, adapter, merged = run
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == [json.loads((base / "config.json").read_text())["architectures"][0]]
    assert not any("lora" in n for n in load_file(merged / "model.safetensors"))
    ids, valid, mask, lengths = padded_batch()
    with torch.no_grad():
        ours = r1lab.load(adapter)[0](ids, attn_mask=mask)
        folded = load_model(merged)(ids, attn_mask=mask)
        theirs = _hf(merged)(ids, attention_mask=valid.long()).logits
    assert _max_diff(ours, folded, lengths) <= 1e-5
    assert _max_diff(ours, theirs, lengths) <= 1e-4


def test_an_adapter_folder_loads_in_the_dtype_asked_for(run):
    import r1lab

    family, base, adapter, _ = run
    half, _ = r1lab.load(adapter, dtype=torch.bfloat16)
    full, _ = r1lab.load(adapter)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}  # base and adapters
    ids = torch.randint(5, 300, (2, 20))
    with torch.no_grad():
        assert (half(ids).float() - full(ids)).abs().max().item() <= 5e-2


def test_engine_samples_with_the_adapter_applied(run):
    import r1lab
    from r1lab.engine import Engine, SamplingParams
    from r1lab.model import load_model
    from r1lab.model.lora import merge_adapters

    family, base, adapter, merged = run
    adapted, tokenizer = r1lab.load(adapter)
    torch.manual_seed(2)
    prompts = [torch.randint(5, 300, (n,)).tolist() for n in (3, 11, 7)]
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)

    def tokens(model):
        return [o.token_ids for o in Engine(model, tokenizer, max_running=2).generate(prompts, greedy)]

    engine = Engine(adapted, tokenizer, max_running=2)
    out = [o.token_ids for o in engine.generate(prompts, greedy)]
    assert out == tokens(load_model(merged))
    assert out != tokens(load_model(base))
    # GRPO's rollouts: an optimizer step changes the adapter in place; the same engine follows it
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith("lora_B.weight"):
                p.mul_(-3.0)
    after = [o.token_ids for o in engine.generate(prompts, greedy)]
    folded = copy.deepcopy(adapted)
    merge_adapters(folded)
    assert after != out and after == tokens(folded)
