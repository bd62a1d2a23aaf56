"""Where weights live: a local folder, or a Hugging Face hub id ("Qwen/Qwen2.5-0.5B-Instruct") fetched with
`huggingface_hub` into its usual cache when the machine is online."""
from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt"]


class HubError(ValueError):
    """A hub id that cannot be fetched (offline, unknown repository, no huggingface_hub)."""


def resolve_folder(path: str | Path) -> Path:
    """`path` itself when it exists (or does not look like a hub id), else the hub snapshot's folder."""
    folder = Path(path)
    if folder.exists() or not HUB_ID.fullmatch(str(path)):
        return folder
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise HubError(f"{path} is not a local folder, and fetching it from the hub needs huggingface_hub "
                       "(pip install huggingface_hub)") from e
    try:
        return Path(snapshot_download(str(path), allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - offline, gated, unknown: all end in one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{path} is not a local folder and could not be fetched from the Hugging Face hub "
                       f"(offline? set HF_HUB_OFFLINE=0 and check the id): {type(e).__name__}: {reason}") from e
