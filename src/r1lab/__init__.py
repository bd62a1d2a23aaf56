"""r1lab: build your own DeepSeek-R1-style reasoning model."""
__version__ = "0.1.0"


def load(path, dtype=None):
    """(model, tokenizer) from a checkpoint folder or Hugging Face hub id: r1lab's DeepSeek-V3, or a Llama,
    Qwen2 or Qwen3 checkpoint (ours or saved by transformers), or a LoRA adapter folder (PEFT's format): its
    base model with the adapters on it. dtype: the weights' dtype (default float32)."""
    from .model.adapter import load_any

    return load_any(path) if dtype is None else load_any(path, dtype=dtype)
