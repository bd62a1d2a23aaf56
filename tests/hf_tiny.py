"""Tiny random Llama / Qwen2 / Qwen3 checkpoints built with transformers' own classes and save_pretrained,
with small byte-level BPE tokenizers carrying a Qwen-style ChatML template or an R1-Distill-style one."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML = (  # Qwen2.5-Instruct's template without the tool branches: no <think> anywhere
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3 = (  # Qwen3's shape: ChatML, earlier thinking dropped, the model opens <think> itself
    "{%- for message in messages %}"
    "{%- set content = message.content %}"
    "{%- if message.role == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
R1_DISTILL = (  # DeepSeek-R1-Distill-Qwen's template, trimmed: it pre-fills "<think>\n"
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endfor %}{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
STYLES = {
    # specials, eos, bos, pad, template, generation eos ids (by token)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|endoftext|>", CHATML,
               ["<|im_end|>", "<|endoftext|>"]),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|endoftext|>", QWEN3,
              ["<|im_end|>", "<|endoftext|>"]),
    "r1distill": (["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                   "<｜▁pad▁｜>"], "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>", R1_DISTILL,
                  ["<｜end▁of▁sentence｜>"]),
}
CORPUS = [
    "What is 4821 + 1379? <think>\n1+9=10, write 0 carry 1\n</think>\nThe answer is \\boxed{6200}.",
    "Solve for x: 3x + 7 = 22. Subtract 7, divide by 3, so x = 5. user assistant system",
    "Hello world! The quick brown fox jumps over the lazy dog. You are Qwen, created by Alibaba Cloud.",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
] * 20


def make_tokenizer(folder: Path, style: str, vocab_size: int = 300) -> None:
    """tokenizer.json + tokenizer_config.json (+ chat template) for one of STYLES."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    specials, eos, bos, pad, template, _, *added = STYLES[style]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer=trainer)
    from tokenizers import AddedToken

    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t in ["<think>", "</think>", *(added[0] if added else [])]])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
              "unk_token": None, "clean_up_tokenization_spaces": False, "model_max_length": 2048,
              "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))


def make_model(folder: Path, family: str, style: str = "chatml", seed: int = 0, **overrides):
    """A random transformers model of `family` (llama | qwen2 | qwen3) with a `style` tokenizer, saved to
    folder; returns the transformers model (fp32, eval)."""
    import transformers
    from tokenizers import Tokenizer

    make_tokenizer(folder, style)
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos_ids = [backend.token_to_id(t) for t in STYLES[style][5]]
    torch.manual_seed(seed)
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, eos_token_id=eos_ids[0],
                  bos_token_id=backend.token_to_id(STYLES[style][2] or STYLES[style][0][0]))
    common.update(overrides)
    if family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{"tie_word_embeddings": True, **common}))
    elif family == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{"head_dim": 24, **common}))
    else:
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 10000.0}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{"rope_parameters": rope, **common}))
    with torch.no_grad():  # transformers' init is tiny: make every weight (and bias) matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.temperature, model.generation_config.top_p, model.generation_config.do_sample = 0.7, 0.8, True
    model.save_pretrained(folder)
    return model.eval()


def padded_batch():
    """Three right-padded rows of random ids: ids, the padding mask, the bool attention mask (B, 1, T, T), the lengths."""
    torch.manual_seed(1)
    lengths = [17, 9, 4]
    T = max(lengths)
    ids = torch.randint(5, 300, (len(lengths), T))
    valid = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    ids[~valid] = 0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return ids, valid, causal[None, None] & valid[:, None, None, :], lengths


# ---------------------------------------------------------------- the checkpoints' real chat templates

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|eom_id|>", "<|python_tag|>"]
DEEPSEEK_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜▁pad▁｜>",
                     *(f"<｜tool▁{t}｜>" for t in ("calls▁begin", "calls▁end", "call▁begin", "call▁end", "sep",
                                                  "outputs▁begin", "outputs▁end", "output▁begin", "output▁end"))]
# family -> (template file, specials, eos, bos, pad, generation eos tokens, added plain-text tokens)
REAL = {
    "qwen2_5": ("qwen2_5", QWEN_SPECIALS, "<|im_end|>", None, "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"],
                ["<tool_call>", "</tool_call>"]),
    "qwen3": ("qwen3", QWEN_SPECIALS, "<|im_end|>", None, "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"],
              ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]),
    "llama3_1": ("llama3_1", LLAMA_SPECIALS, "<|eot_id|>", "<|begin_of_text|>", None,
                 ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], []),
    "llama3_2": ("llama3_2", LLAMA_SPECIALS, "<|eot_id|>", "<|begin_of_text|>", None,
                 ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], []),
    "r1distill_hub": ("deepseek_r1_distill", DEEPSEEK_SPECIALS, "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>",
                      "<｜▁pad▁｜>", ["<｜end▁of▁sentence｜>"], []),
    "deepseekv3": ("deepseekv3", DEEPSEEK_SPECIALS, "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>",
                   ["<｜end▁of▁sentence｜>"], []),
}
for _name, (_file, _specials, _eos, _bos, _pad, _gen, _added) in REAL.items():
    STYLES[_name] = (_specials, _eos, _bos, _pad, (TEMPLATES / f"{_file}.jinja").read_text(), _gen, _added)
