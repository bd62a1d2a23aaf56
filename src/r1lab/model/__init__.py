"""The network: DeepSeek-V3 architecture at any size, and its Hugging Face-compatible checkpoints."""
from .checkpoint import CheckpointError, load, load_model, save_checkpoint
from .config import PRESETS, ModelConfig, preset
from .moe import expert_load, update_router_bias
from .transformer import Transformer

__all__ = ["CheckpointError", "ModelConfig", "PRESETS", "Transformer", "expert_load", "load", "load_model",
           "preset", "save_checkpoint", "update_router_bias"]
