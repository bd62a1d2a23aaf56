"""Open model families: Llama, Qwen2 (also DeepSeek-R1-Distill-Qwen) and Qwen3, as r1lab policies.

One decoder serves all three; the differences are switches read from the checkpoint's config.json:

    family  architectures[0]    q/k/v bias          o_proj bias         per-head q/k RMSNorm  head_dim
    llama   LlamaForCausalLM    attention_bias      attention_bias      no                    config or H/nh
    qwen2   Qwen2ForCausalLM    always              never               no                    H/nh
    qwen3   Qwen3ForCausalLM    attention_bias      attention_bias      yes                   config

Grouped-query attention (num_key_value_heads <= num_attention_heads), RoPE on the whole head with the
halves layout (rotate_half), optionally scaled (`linear`, `llama3`), SwiGLU MLP, pre-norm RMSNorm, optional
tied embeddings. RMSNorm, RoPE and SwiGLU are the DeepSeek path's own modules. Module names are Hugging
Face's (`model.layers.0.self_attn.q_proj.bias`, …), so a state dict is a checkpoint and back.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import RMSNorm, apply_rope
from .config import ModelConfig
from .moe import MLP
from .transformer import Transformer

FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SUPPORTED = ["DeepseekV3ForCausalLM", *FAMILIES.values()]
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class FamilyConfig:
    model_type: str = "qwen2"
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    hf: dict = field(default_factory=dict, repr=False)  # config.json as read: unknown keys are written back
    generation: dict = field(default_factory=dict, repr=False)  # generation_config.json as read
    # what the trainer and engine ask every model config
    attention: str = "gqa"
    mlp: str = "dense"
    num_nextn_predict_layers: int = 0
    mtp_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.model_type not in FAMILIES:
            raise ValueError(f"unknown family {self.model_type!r}; supported: {', '.join(FAMILIES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        rope_type = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")

    @property
    def qkv_bias(self) -> bool:
        return True if self.model_type == "qwen2" else self.attention_bias

    @property
    def o_bias(self) -> bool:
        return False if self.model_type == "qwen2" else self.attention_bias

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.generation.get("eos_token_id", self.eos_token_id)
        eos = eos if isinstance(eos, list) else [eos]
        return [e for e in eos if e is not None]

    # ---- Hugging Face config.json ----
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], generation: dict | None = None) -> "FamilyConfig":
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            arch = (hf.get("architectures") or [None])[0]
            model_type = {v: k for k, v in FAMILIES.items()}.get(arch, model_type)
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=true is not supported (no released Llama uses it)")
        if hf.get("use_sliding_window") and model_type != "llama":
            raise ValueError("use_sliding_window=true is not supported; r1lab attends over the whole context")
        names = {f.name for f in dataclasses.fields(cls)} - {"hf", "generation", "attention", "mlp"}
        kwargs = {k: v for k, v in hf.items() if k in names and v is not None}
        kwargs["model_type"] = model_type
        kwargs.setdefault("num_key_value_heads", hf["num_attention_heads"])
        kwargs["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        kwargs["torch_dtype"] = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
        rp = hf.get("rope_parameters")  # transformers v5 keeps rope_theta and the scaling together
        if rp:
            kwargs["rope_theta"] = rp.get("rope_theta", kwargs.get("rope_theta", 10000.0))
            kwargs["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else dict(rp)
        kwargs["num_nextn_predict_layers"] = 0
        return cls(**kwargs, hf=dict(hf), generation=dict(generation or {}))

    def to_hf_dict(self) -> dict[str, Any]:
        hf = {k: v for k, v in self.hf.items() if k not in ("rope_parameters", "dtype", "transformers_version")}
        hf.update({
            "architectures": [FAMILIES[self.model_type]], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling, "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "initializer_range": self.initializer_range, "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
        })
        hf["dtype" if "dtype" in self.hf else "torch_dtype"] = self.torch_dtype  # transformers v5 / v4 spelling
        if self.model_type != "qwen2":
            hf["attention_bias"] = self.attention_bias
        return hf


def config_from_hf(hf: dict[str, Any], generation: dict | None = None) -> ModelConfig | FamilyConfig:
    """The config a config.json describes: DeepSeek-V3 (r1lab's own) or one of the open families."""
    arch = (hf.get("architectures") or [None])[0]
    model_type = hf.get("model_type")
    if model_type in FAMILIES or arch in FAMILIES.values():
        return FamilyConfig.from_hf_dict(hf, generation)
    if model_type in ("deepseek_v3", None) and arch in ("DeepseekV3ForCausalLM", None):
        return ModelConfig.from_hf_dict(hf)
    raise ValueError(f"unsupported model {arch or model_type!r}; supported architectures: {', '.join(SUPPORTED)}")


# ---------------------------------------------------------------- rotary embeddings

def family_inv_freq(cfg: FamilyConfig) -> torch.Tensor:
    """RoPE inverse frequencies over the whole head (transformers' default, linear and llama3 inits)."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling or {}
    rope_type = rs.get("rope_type", rs.get("type", "default"))
    if rope_type == "linear":
        return inv_freq / rs["factor"]
    if rope_type == "llama3":
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_len = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


# ---------------------------------------------------------------- modules

class GQAttention(nn.Module):
    """Grouped-query attention; names match transformers' LlamaAttention / Qwen2Attention / Qwen3Attention."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.cfg = cfg
        H, nh, kvh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(H, nh * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(H, kvh * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(H, kvh * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(nh * hd, H, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.softmax_scale = hd ** -0.5

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, H) -> q (B, nh, T, hd), k and v (B, kvh, T, hd), RoPE applied to q and k."""
        cfg, (B, T, _) = self.cfg, x.shape
        q = self.q_proj(x).view(B, T, -1, cfg.head_dim)
        k = self.k_proj(x).view(B, T, -1, cfg.head_dim)
        v = self.v_proj(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin, interleave=False)
        k = apply_rope(k.transpose(1, 2), cos, sin, interleave=False)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.softmax_scale, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class FamilyBlock(nn.Module):
    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = GQAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, attn_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class FamilyDecoder(nn.Module):
    """What Hugging Face calls `model.*`: embed_tokens, layers, norm."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(FamilyBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class FamilyLM(nn.Module):
    """LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM with r1lab's Transformer interface
    (forward with attn_mask and select, loss, hidden_states, rope, param_count, flops_per_token)."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.config = cfg
        self.model = FamilyDecoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = nn.ModuleList()  # no multi-token prediction in these families
        self.register_buffer("inv_freq", family_inv_freq(cfg), persistent=False)
        self.rope_scale = 1.0
        self.reset_parameters()

    def init_buffers(self) -> None:
        """Real tensors for the buffers a checkpoint does not hold (after building on the meta device)."""
        self.inv_freq = family_inv_freq(self.config)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)

    def rope(self, positions: torch.Tensor):
        angles = positions.float()[..., None] * self.inv_freq
        return angles.cos() * self.rope_scale, angles.sin() * self.rope_scale

    # the same embedding -> layers -> final norm -> head pass as DeepSeek-V3's (no MTP here)
    hidden_states = Transformer.hidden_states
    forward = Transformer.forward

    def loss(self, input_ids, labels, position_ids=None, attn_mask=None) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.forward(input_ids, position_ids, attn_mask)
        main = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return main, {"lm_loss": main.item()}

    def param_count(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "activated": total, "embedding": self.model.embed_tokens.weight.numel()}

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        cfg, counts = self.config, self.param_count()
        n = counts["activated"] - counts["embedding"]
        attn = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * 2 * cfg.head_dim * seq_len
        return (3 if training else 1) * (2 * n + attn)


def generation_defaults(model: nn.Module | None) -> dict[str, float]:
    """temperature and top_p from the checkpoint's generation_config.json (open models only: r1lab's own
    checkpoints keep the commands' documented defaults), for generate, serve and eval to use unless told."""
    gen = getattr(getattr(model, "config", None), "generation", None) or {}
    if gen.get("do_sample") is False:
        return {"temperature": 0.0}
    return {k: float(gen[k]) for k in ("temperature", "top_p") if gen.get(k) is not None}
