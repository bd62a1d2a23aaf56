"""r1lab: build your own DeepSeek-R1-style reasoning model."""
__version__ = "0.1.0"


def load(path):
    """(model, tokenizer) from a checkpoint folder, ours or one saved by transformers."""
    from .model.checkpoint import load as _load

    return _load(path)
