"""Which serving engines take a checkpoint of a given ModelConfig, and why not.

r1lab's checkpoints are Hugging Face DeepseekV3 folders, so transformers loads every one of them. The
serving engines are narrower: vLLM's MLA kernels are written for the latent and RoPE widths of the real
DeepSeek models, and all of them assume MLA, DeepSeek's interleaved RoPE and untied embeddings.
`serving_problems(cfg)` names what stands in the way, engine by engine; `save_checkpoint` prints the
vLLM line once per process, so a user learns it when the model is made, not when it is served.
"""
from __future__ import annotations

import sys

from .config import ModelConfig

# vLLM's MLA attention backends take the key width kv_lora_rank + qk_rope_head_dim of DeepSeek-V2/V3
# (512 + 64 = 576); on CPU it refuses others with "Head dimension N is not supported by MLA"
VLLM_MLA_WIDTHS = (512, 64)
ENGINES = ("transformers", "vllm", "sglang", "llama.cpp")


def serving_problems(cfg: ModelConfig) -> dict[str, list[str]]:
    """engine -> the reasons it cannot serve this model correctly (empty list: it can). Llama/Qwen folders
    (model/families.py) keep their own Hugging Face format, which every engine reads: no reasons."""
    if not isinstance(cfg, ModelConfig):
        return {engine: [] for engine in ENGINES}
    common = []
    if cfg.attention != "mla":
        common.append("attention=mha is an r1lab ablation; DeepseekV3 loaders expect MLA weights")
    if not cfg.rope_interleave:
        common.append("rope_interleave=false; the engines apply DeepSeek's interleaved RoPE")
    out: dict[str, list[str]] = {"transformers": list(common[:1])}
    vllm = list(common)
    if (cfg.kv_lora_rank, cfg.qk_rope_head_dim) != VLLM_MLA_WIDTHS:
        vllm.append(f"kv_lora_rank + qk_rope_head_dim = {cfg.kv_lora_rank} + {cfg.qk_rope_head_dim}; vLLM's MLA kernels "
                    f"take {VLLM_MLA_WIDTHS[0]} + {VLLM_MLA_WIDTHS[1]} (preset cpu-vllm or gpu-small)")
    if cfg.tie_word_embeddings:
        vllm.append("tie_word_embeddings=true; vLLM's DeepSeek model has its own lm_head")
    out["vllm"] = vllm
    out["sglang"] = list(common) + (["tie_word_embeddings=true"] if cfg.tie_word_embeddings else [])
    out["llama.cpp"] = list(common)
    return out


_warned: set[tuple] = set()


def warn_if_unservable(cfg: ModelConfig, folder) -> None:
    """One line on stderr, once per process and model shape, when vLLM will not serve this checkpoint."""
    problems = serving_problems(cfg)["vllm"]
    if not problems:
        return
    key = (cfg.attention, cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.rope_interleave, cfg.tie_word_embeddings)
    if problems and key not in _warned:
        _warned.add(key)
        print(f"r1lab: note: vLLM will not serve {folder}: {problems[0]}", file=sys.stderr)
