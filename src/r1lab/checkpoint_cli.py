"""`r1lab checkpoint rehash CKPT`: accept a deliberate edit of a checkpoint's files (e.g. config.json).

A checkpoint's r1lab_manifest.json records the size and sha256 of every file, so a file changed behind
r1lab's back is refused on load ("truncated or altered"). After editing a file on purpose, `rehash` checks
that config.json still describes a model and that the weights still match it, then rewrites the manifest
(atomically) with the files as they are now.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .model.checkpoint import MANIFEST, CheckpointError, _sha256, load_model


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["rehash"], help="rehash: rewrite the manifest after a deliberate edit")
    p.add_argument("folder", help="checkpoint folder")


def rehash(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"not a checkpoint folder (no config.json): {folder}")
    load_model(folder, verify=False)  # the edited config must still describe these weights
    manifest_path = folder / MANIFEST
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)} for name in names}
    tmp = manifest_path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    return files


def run_checkpoint(args) -> int:
    files = rehash(args.folder)
    print(f"rewrote {Path(args.folder) / MANIFEST}: {len(files)} files")
    return 0
