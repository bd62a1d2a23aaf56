"""GGUF files for llama.cpp and Ollama, written with `gguf`, llama.cpp's own writer library.

A model family is a class that turns a checkpoint folder into GGUF metadata and tensors; FAMILIES maps a
config.json `model_type` to its family, so another family (Qwen, Llama) is one more class and one more
entry. The tokenizer (byte-level BPE from tokenizer.json) and the chat template are shared by all.

DeepSeek-V3 is llama.cpp's `deepseek2` architecture with MLA: the latent is stored as one key/value head
(key width kv_lora_rank + qk_rope_head_dim, value width kv_lora_rank), and kv_b_proj is split per head
into k_b (transposed) and v_b so that llama.cpp can absorb them into the query and the output. The
routed experts are stacked into one 3-D tensor per projection.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import CheckpointError, load_model
from ..model.config import ModelConfig

# the pre-tokenizer llama.cpp must run before BPE: r1lab splits every digit off, then applies GPT-2's
# regex, which is llama.cpp's "refact" pre-tokenizer (\p{N}, then the GPT-2 expression)
R1LAB_PRETOKENIZER = "refact"
TYPES = ("f32", "f16")


def _gguf():
    try:
        import gguf
    except ImportError as e:  # optional: pip install 'r1lab[export]'
        raise CheckpointError("GGUF export needs the gguf package: pip install gguf") from e
    return gguf


def _tensor_name(gguf, kind: str, layer: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)]
    return (base.format(bid=layer) if layer is not None else base) + f".{suffix}"


class DeepSeekV3:
    """r1lab's own model (and any DeepseekV3 checkpoint r1lab loads) as llama.cpp's deepseek2."""

    arch = "deepseek2"

    def __init__(self, folder: Path):
        self.model = load_model(folder)
        self.cfg: ModelConfig = self.model.config
        if self.cfg.attention != "mla":
            raise CheckpointError(f"{folder}: attention=mha models have no llama.cpp architecture; export an MLA model")
        if not self.cfg.rope_interleave:
            raise CheckpointError(f"{folder}: rope_interleave=false is not what llama.cpp's deepseek2 computes")

    def write_hparams(self, writer, gguf) -> None:
        cfg = self.cfg
        dense = cfg.num_hidden_layers if cfg.mlp == "dense" else cfg.first_k_dense_replace
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(1)  # MLA: one latent "head" shared by all query heads
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.qk_rope_head_dim)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_leading_dense_block_count(dense)
        writer.add_q_lora_rank(cfg.q_lora_rank)  # 0: a plain query projection (attn_q)
        writer.add_kv_lora_rank(cfg.kv_lora_rank)
        writer.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        writer.add_value_length(cfg.kv_lora_rank)
        writer.add_key_length_mla(cfg.qk_head_dim)
        writer.add_value_length_mla(cfg.v_head_dim)
        writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        writer.add_expert_count(cfg.n_routed_experts if cfg.mlp == "moe" else 0)
        writer.add_expert_used_count(cfg.num_experts_per_tok if cfg.mlp == "moe" else 0)
        writer.add_expert_shared_count(cfg.n_shared_experts)
        writer.add_expert_weights_scale(cfg.routed_scaling_factor)
        writer.add_expert_weights_norm(cfg.norm_topk_prob)
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        if cfg.mlp == "moe" and cfg.n_group > 1:
            writer.add_expert_group_count(cfg.n_group)
            writer.add_expert_group_used_count(cfg.topk_group)
        rs = cfg.rope_scaling or {}
        if rs.get("type", rs.get("rope_type")) == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(rs["factor"])
            writer.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
            if rs.get("mscale_all_dim"):  # llama.cpp divides this key by 0.1 again when it loads deepseek2
                writer.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])

    def tensors(self, gguf) -> Iterator[tuple[str, torch.Tensor]]:
        cfg, sd = self.cfg, self.model.state_dict()
        name = lambda kind, layer=None, suffix="weight": _tensor_name(gguf, kind, layer, suffix)  # noqa: E731
        yield name("TOKEN_EMBD"), sd["model.embed_tokens.weight"]
        yield name("OUTPUT_NORM"), sd["model.norm.weight"]
        if not cfg.tie_word_embeddings:
            yield name("OUTPUT"), sd["lm_head.weight"]
        nh, nope, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            yield name("ATTN_NORM", i), sd[p + "input_layernorm.weight"]
            yield name("FFN_NORM", i), sd[p + "post_attention_layernorm.weight"]
            a = p + "self_attn."
            if cfg.q_lora_rank:
                yield name("ATTN_Q_A", i), sd[a + "q_a_proj.weight"]
                yield name("ATTN_Q_A_NORM", i), sd[a + "q_a_layernorm.weight"]
                yield name("ATTN_Q_B", i), sd[a + "q_b_proj.weight"]
            else:
                yield name("ATTN_Q", i), sd[a + "q_proj.weight"]
            yield name("ATTN_KV_A_MQA", i), sd[a + "kv_a_proj_with_mqa.weight"]
            yield name("ATTN_KV_A_NORM", i), sd[a + "kv_a_layernorm.weight"]
            kv_b = sd[a + "kv_b_proj.weight"].view(nh, nope + v, cfg.kv_lora_rank)
            k_b, v_b = kv_b.split([nope, v], dim=1)
            yield name("ATTN_K_B", i), k_b.transpose(1, 2)  # (heads, latent, nope): absorbed into the query
            yield name("ATTN_V_B", i), v_b  # (heads, v, latent)
            yield name("ATTN_OUT", i), sd[a + "o_proj.weight"]
            m = p + "mlp."
            if not cfg.is_moe_layer(i):
                for proj, kind in (("gate_proj", "FFN_GATE"), ("up_proj", "FFN_UP"), ("down_proj", "FFN_DOWN")):
                    yield name(kind, i), sd[m + proj + ".weight"]
                continue
            yield name("FFN_GATE_INP", i), sd[m + "gate.weight"]
            yield name("FFN_EXP_PROBS_B", i, "bias"), sd[m + "gate.e_score_correction_bias"]
            for proj, kind in (("gate_proj", "FFN_GATE_EXP"), ("up_proj", "FFN_UP_EXP"), ("down_proj", "FFN_DOWN_EXP")):
                yield name(kind, i), torch.stack([sd[f"{m}experts.{e}.{proj}.weight"] for e in range(cfg.n_routed_experts)])
            if cfg.n_shared_experts:
                for proj, kind in (("gate_proj", "FFN_GATE_SHEXP"), ("up_proj", "FFN_UP_SHEXP"), ("down_proj", "FFN_DOWN_SHEXP")):
                    yield name(kind, i), sd[f"{m}shared_experts.{proj}.weight"]
        # multi-token-prediction layers are a training aid: llama.cpp decodes without them


# config.json model_type -> family
FAMILIES: dict[str, type] = {"deepseek_v3": DeepSeekV3}


def write_tokenizer(writer, gguf, folder: Path, n_vocab: int) -> int:
    """Byte-level BPE vocabulary, merges, special ids and chat template from tokenizer.json and
    tokenizer_config.json. Returns the number of real tokens (the list is padded to n_vocab)."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise CheckpointError(f"GGUF export needs the tokenizer: no {path}")
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"{path}: only byte-level BPE tokenizers export to GGUF (model type {model.get('type')!r})")
    vocab = dict(model["vocab"])
    special = set()
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    added_ids = {a["id"] for a in tok.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(max(n_vocab, len(by_id))):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else
                         gguf.TokenType.USER_DEFINED if i in added_ids else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(R1LAB_PRETOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    config_path = folder / "tokenizer_config.json"
    tcfg = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        if isinstance(tcfg.get(key), str) and tcfg[key] in vocab:
            add(vocab[tcfg[key]])
    writer.add_add_bos_token(bool(tcfg.get("add_bos_token", False)))  # r1lab's chat template writes BOS itself
    writer.add_add_eos_token(False)
    if tcfg.get("chat_template"):
        writer.add_chat_template(tcfg["chat_template"])
    return len(by_id)


def write_gguf(folder: str | Path, out: str | Path, dtype: str = "f32") -> dict:
    """Write checkpoint `folder` as one GGUF file `out`. dtype: f32 (exact) or f16 (matrices only; norms,
    router bias and embeddings of 1-D shape stay f32). Returns a summary (architecture, tensors, bytes)."""
    gguf = _gguf()
    folder, out = Path(folder), Path(out)
    if dtype not in TYPES:
        raise ValueError(f"--gguf-type must be one of {', '.join(TYPES)}, got {dtype!r}")
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"not a checkpoint folder (no config.json): {folder}")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{config_path}: no GGUF exporter for model_type {model_type!r} "
                              f"(have: {', '.join(FAMILIES)})")
    family = FAMILIES[model_type](folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), family.arch)
    writer.add_name(folder.resolve().name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    family.write_hparams(writer, gguf)
    write_tokenizer(writer, gguf, folder, family.cfg.vocab_size)
    n_tensors = 0
    for name, tensor in family.tensors(gguf):
        array = tensor.detach().float().contiguous().numpy()
        if dtype == "f16" and array.ndim > 1:
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
        n_tensors += 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(out)
    return {"architecture": family.arch, "tensors": n_tensors, "bytes": out.stat().st_size, "path": str(out)}
