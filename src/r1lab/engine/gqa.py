"""The engine's pass for grouped-query attention models (Llama, Qwen2, Qwen3: r1lab.model.families).

The cache holds, per layer and token, the rotated keys and the values of the num_key_value_heads KV
heads only (a Qwen2.5-0.5B caches 2 heads where its queries have 14). Queries of the heads that share a
KV head attend together: (B, kvh, group * T, hd) against (B, kvh, L, hd), one batched matmul per layer.
Like the MLA runner, it reads the model's live parameters (the fused gate/up projection is re-derived
when an optimizer step or load_state_dict changed them in place), so GRPO samples with the weights it
trains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.families import FamilyLM
from .cache import KVCache
from ..model.lora import merged_view
from .forward import Layer, LiveWeights, Norm, Runner, attend_heads, derive_layer, swiglu


class GQACache(KVCache):
    """Keys and values of the KV heads: two tensors (layers, slots, length, kvh, head_dim)."""

    def _row_shapes(self) -> list[tuple[int, ...]]:
        cfg = self.cfg
        return [(cfg.num_key_value_heads, cfg.head_dim), (cfg.num_key_value_heads, cfg.head_dim)]


class GQARunner(LiveWeights):
    """Runner's interface (forward, refresh, maybe_refresh) for FamilyLM models."""

    def __init__(self, model: FamilyLM, max_len: int):
        self.model, self.cfg = model, model.config
        param = next(model.parameters())
        with torch.inference_mode():
            cos, sin = model.rope(torch.arange(max_len, device=param.device))  # (max_len, hd / 2)
        self.cos, self.sin = cos.to(param.dtype), sin.to(param.dtype)
        self.layers: list[Layer] = []
        self._versions: list[tuple[int, int]] = []
        self.refresh()

    @torch.inference_mode()
    def refresh(self) -> None:
        model = self.model
        with merged_view(model):  # LoRA: o_proj and the MLP decode with W + scaling * B @ A (q/k/v adapt live)
            self.layers = [derive_layer(block, self.cfg) for block in model.model.layers]
            self.embed, self.lm_head = model.model.embed_tokens.weight, model.lm_head.weight
            self.final_norm = Norm.of(model.model.norm)
        self._remember_versions()

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, start: torch.Tensor, slot0: int, last: torch.Tensor | None,
                cache: KVCache, kv_len: int, all_positions: bool = False) -> torch.Tensor:
        """As Runner.forward: new tokens ids (B, T) of slots slot0.., first at position start[b]; returns the
        logits (B, V) at position last[b] of each row (the last one if None), or with all_positions those of
        every new token (B, T, V)."""
        B, T = ids.shape
        device = ids.device
        positions = start[:, None] + torch.arange(T, device=device) if T > 1 else start[:, None]
        bias = torch.zeros(B, 1, T, kv_len, dtype=cache.dtype, device=device)
        bias.masked_fill_(torch.arange(kv_len, device=device) > positions[:, None, :, None], float("-inf"))
        where = ((torch.arange(slot0, slot0 + B, device=device) * cache.length)[:, None] + positions).view(-1)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, hd / 2)
        x = F.embedding(ids, self.embed)
        for i, layer in enumerate(self.layers):
            x = x + self._attend(layer, layer.attn_norm(x), cos, sin, cache.tensors[0][i], cache.tensors[1][i],
                                 where, bias, slot0, kv_len)
            x = x + swiglu(layer.mlp_norm(x), layer.gate_up, layer.down)
        if all_positions:
            return F.linear(self.final_norm(x), self.lm_head)
        x = x.view(B, -1) if T == 1 else x[torch.arange(B, device=device), last]
        return F.linear(self.final_norm(x), self.lm_head)

    def _attend(self, layer: Layer, h, cos, sin, k_cache, v_cache, where, bias, slot0, kv_len):
        attn = layer.attn
        q, k, v = attn.qkv(h, cos, sin)  # the module's own projections, q/k norms and RoPE
        out = attend_heads(q, k, v, k_cache, v_cache, slot0, where, bias, attn.softmax_scale, kv_len)
        return F.linear(out, layer.o_proj, attn.o_proj.bias)


def runner_and_cache(model, max_running: int, max_model_len: int, dtype: torch.dtype, device) -> tuple:
    """The engine's runner and KV cache for `model`: grouped-query for Llama / Qwen2 / Qwen3
    (r1lab.model.families), MLA for DeepSeek-V3."""
    if model.config.attention == "gqa":
        return GQARunner(model, max_model_len), GQACache(model.config, max_running, max_model_len, dtype, device)
    return Runner(model, max_model_len), KVCache(model.config, max_running, max_model_len, dtype, device)


def eos_ids(model, tokenizer) -> tuple[int | None, frozenset[int]]:
    """(the EOS id, every id that ends a turn: Qwen's chat models stop on <|im_end|> and <|endoftext|>)."""
    config_eos = model.config.eos_token_id  # a list in some Hugging Face configs
    config_eos = config_eos[0] if isinstance(config_eos, list) else config_eos
    eos = tokenizer.eos_token_id if tokenizer is not None else config_eos
    return eos, frozenset(getattr(tokenizer, "eos_token_ids", None) or getattr(model.config, "eos_token_ids", None) or [eos])
