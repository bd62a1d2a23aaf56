"""r1lab: build your own DeepSeek-R1-style reasoning model."""
__version__ = "0.1.0"


def load(path):
    """(model, tokenizer) from a checkpoint folder, ours or one saved by transformers, or from a LoRA
    adapter folder (PEFT's format): its base model with the adapters on it."""
    from .model.adapter import load_any

    return load_any(path)
