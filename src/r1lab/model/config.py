"""ModelConfig: the DeepSeek-V3 architecture at any size, and its Hugging Face config.json form.

Field names follow Hugging Face's `DeepseekV3Config` so that a checkpoint's config.json maps onto this
dataclass one to one. The few fields of our own (`attention`, `mlp`, balancing and MTP knobs) are saved
under the `r1lab` key of config.json, which `transformers` ignores.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384  # dense MLP width (first_k_dense_replace layers, or every layer if mlp=dense)
    moe_intermediate_size: int = 96  # width of one routed / shared expert
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    # Multi-head Latent Attention
    q_lora_rank: int = 0  # 0 = plain query projection
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    # DeepSeekMoE
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 1
    # multi-token prediction
    num_nextn_predict_layers: int = 0
    # positions and norms
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # YaRN: {"type": "yarn", "factor", "original_max_position_embeddings", ...}
    rope_interleave: bool = True
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int | None = None
    # r1lab's own switches (ablations are one flag)
    attention: str = "mla"  # mla | mha
    mlp: str = "moe"  # moe | dense
    bias_update_speed: float = 1e-3  # gamma of aux-loss-free balancing
    seq_aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight (0 = off)
    mtp_loss_weight: float = 0.3  # lambda for the multi-token prediction loss

    def __post_init__(self) -> None:
        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "qk_rope_head_dim",
                    "v_head_dim", "max_position_embeddings", "intermediate_size"]
        if self.attention == "mla":
            positive.append("kv_lora_rank")
        if self.mlp == "moe":
            positive += ["moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group"]
        for name in positive + ["q_lora_rank", "qk_nope_head_dim", "n_shared_experts", "first_k_dense_replace",
                                "num_nextn_predict_layers"]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in positive else 0):
                kind = "a positive" if name in positive else "a non-negative"
                raise ValueError(f"model.{name} must be {kind} integer, got {value!r}")
        for name in ("rope_theta", "rms_norm_eps", "routed_scaling_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"model.{name} must be a positive number, got {value!r}")
        if self.attention not in ("mla", "mha"):
            raise ValueError(f"attention must be 'mla' or 'mha', got {self.attention!r}")
        if self.mlp not in ("moe", "dense"):
            raise ValueError(f"mlp must be 'moe' or 'dense', got {self.mlp!r}")
        if self.mlp == "moe":
            if self.n_routed_experts % self.n_group:
                raise ValueError("n_routed_experts must be divisible by n_group")
            if self.topk_group > self.n_group:
                raise ValueError("topk_group must be <= n_group")
            if self.num_experts_per_tok > self.n_routed_experts:
                raise ValueError("num_experts_per_tok must be <= n_routed_experts")
            if self.n_group > 1 and self.n_routed_experts // self.n_group < 2:
                raise ValueError("group-limited routing needs at least 2 experts per group")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.mlp == "moe" and layer >= self.first_k_dense_replace

    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling or {}
        if rs.get("type", rs.get("rope_type")) == "yarn" and rs.get("mscale_all_dim"):
            m = yarn_mscale(rs["factor"], rs["mscale_all_dim"])
            scale *= m * m
        return scale

    # ---- Hugging Face config.json ----
    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that `transformers` reads as a DeepseekV3Config."""
        hf = {
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "q_lora_rank": self.q_lora_rank or None,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            # how DeepSeek-V3 routes: sigmoid scores, top-k on score + e_score_correction_bias. vLLM and SGLang
            # read these two; without them they build DeepSeek-V2's softmax router (and no bias)
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "moe_layer_freq": 1,
            "norm_topk_prob": self.norm_topk_prob,
            "routed_scaling_factor": self.routed_scaling_factor,
            # a dense model is a DeepseekV3 whose every layer is "first k dense"
            "first_k_dense_replace": self.first_k_dense_replace if self.mlp == "moe" else self.num_hidden_layers,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rope_interleave": self.rope_interleave,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            # the dtype to serve in (the weights on disk are fp32; vLLM's CPU MoE kernels take bf16 only)
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "r1lab": {
                "attention": self.attention,
                "mlp": self.mlp,
                "bias_update_speed": self.bias_update_speed,
                "seq_aux_loss_alpha": self.seq_aux_loss_alpha,
                "mtp_loss_weight": self.mtp_loss_weight,
            },
        }
        return hf

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Read a DeepseekV3 config.json, ours or one written by `transformers` (v4 or v5 field names)."""
        if hf.get("model_type") not in ("deepseek_v3", None):
            raise ValueError(f"not a DeepSeek-V3 config (model_type={hf.get('model_type')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names}
        ours = hf.get("r1lab") or {}
        kwargs.update({k: v for k, v in ours.items() if k in names})
        kwargs["q_lora_rank"] = hf.get("q_lora_rank") or 0
        if "num_mtp_layers" in hf and "num_nextn_predict_layers" not in hf:
            kwargs["num_nextn_predict_layers"] = hf["num_mtp_layers"]
        kwargs["num_nextn_predict_layers"] = kwargs.get("num_nextn_predict_layers") or 0
        # transformers v5 writes rope_parameters instead of rope_theta / rope_scaling
        rp = hf.get("rope_parameters")
        if rp:
            kwargs["rope_theta"] = rp.get("rope_theta", kwargs.get("rope_theta", 10000.0))
            if rp.get("rope_type", "default") != "default":
                kwargs["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        if kwargs.get("rope_scaling") and "type" not in kwargs["rope_scaling"]:
            kwargs["rope_scaling"] = dict(kwargs["rope_scaling"], type=kwargs["rope_scaling"].get("rope_type"))
        kvh = hf.get("num_key_value_heads")
        if kvh not in (None, hf.get("num_attention_heads")):
            raise ValueError("grouped key/value heads are not part of DeepSeek-V3; "
                             "num_key_value_heads must equal num_attention_heads")
        if hf.get("scoring_func", "sigmoid") != "sigmoid":
            raise ValueError(f"scoring_func {hf['scoring_func']!r}: r1lab's router is DeepSeek-V3's (sigmoid)")
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if "mlp" not in ours and hf.get("first_k_dense_replace", 0) >= hf.get("num_hidden_layers", 0):
            kwargs["mlp"] = "dense"
        if kwargs.get("mlp") == "dense":
            kwargs["first_k_dense_replace"] = hf.get("first_k_dense_replace", 0)
        if kwargs.get("n_group") is None:
            kwargs["n_group"] = 1
        if kwargs.get("topk_group") is None:
            kwargs["topk_group"] = 1
        return cls(**kwargs)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# ---- presets ----
CPU_TINY: dict[str, Any] = dict(
    vocab_size=512, hidden_size=128, intermediate_size=384, moe_intermediate_size=96,
    num_hidden_layers=4, num_attention_heads=4, q_lora_rank=0, kv_lora_rank=64,
    qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
    max_position_embeddings=512,
)
PRESETS: dict[str, dict[str, Any]] = {
    # ~2M parameters, trains in minutes on a 2-core laptop
    "cpu-tiny": CPU_TINY,
    # smaller student for distillation (about 3x fewer parameters than cpu-tiny)
    "cpu-micro": dict(CPU_TINY, hidden_size=96, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=3, kv_lora_rank=48, qk_nope_head_dim=24, v_head_dim=24, n_routed_experts=4),
    # cpu-tiny with the MLA widths of the real DeepSeek models (latent 512, RoPE key 64), which vLLM's MLA
    # kernels require: 2.4M parameters, the model of the vLLM / llama.cpp interop tests
    "cpu-vllm": dict(CPU_TINY, kv_lora_rank=512, qk_rope_head_dim=64),
    # ~20M parameters: the mid-size benchmark model
    "cpu-20m": dict(
        vocab_size=4096, hidden_size=256, intermediate_size=768, moe_intermediate_size=192,
        num_hidden_layers=8, num_attention_heads=8, q_lora_rank=128, kv_lora_rank=128,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
        first_k_dense_replace=1, max_position_embeddings=2048,
    ),
    # ~200M-parameter MoE for one GPU; MLA widths as DeepSeek-V3's (512 + 64), so vLLM and SGLang serve it
    "gpu-small": dict(
        vocab_size=32768, hidden_size=768, intermediate_size=2048, moe_intermediate_size=384,
        num_hidden_layers=12, num_attention_heads=12, q_lora_rank=384, kv_lora_rank=512,
        qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, first_k_dense_replace=1, num_nextn_predict_layers=1,
        max_position_embeddings=4096,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
