"""One guard for every command that writes a run or checkpoint folder (init, tokenizer, pretrain, sft, grpo,
distill, the speedrun's stages): a folder that holds a trained checkpoint or a run's metrics is never
replaced without an explicit `--overwrite` (or continued without `--resume` where that applies).

    check_output(args.out, overwrite=args.overwrite)                  # init, tokenizer
    check_output(out_dir, overwrite=overwrite, resume=resume)         # training runs (setup_run)

The refusal is a ConfigError (one line, exit 2) that names the folder, what it holds and the flag.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .config import ConfigError

# what makes a folder worth keeping: a trained model (a run's final/ or checkpoints/, or a checkpoint folder
# itself), a tokenizer, or a run's metrics
PRECIOUS = ("final", "checkpoints", "model.safetensors", "tokenizer.json", "metrics.jsonl")


def precious_contents(folder: str | Path, names: tuple[str, ...] = PRECIOUS) -> list[str]:
    """The names in `names` that `folder` holds (a `checkpoints/` with no step_N in it does not count)."""
    folder = Path(folder)
    found = []
    for name in names:
        path = folder / name
        if name == "checkpoints":
            if path.is_dir() and any(p.name.startswith("step_") for p in path.iterdir()):
                found.append(name + "/")
        elif path.exists():
            found.append(name + ("/" if path.is_dir() else ""))
    return found


def check_output(folder: str | Path, *, overwrite: bool = False, resume: bool | None = None,
                 names: tuple[str, ...] = PRECIOUS, discard: tuple[str, ...] = ()) -> None:
    """Refuse to write into `folder` when it holds any of `names`, unless `overwrite` (then the paths in
    `discard` are deleted first, so an old run's checkpoints cannot mix with the new one's) or `resume`.

    resume=None: the command has no --resume. resume=True: continuing is allowed, but a folder with a trained
    model and no checkpoints/ to continue from (a finished run whose checkpoints were pruned, a speedrun's
    top folder) would be trained again from step 0, so it is refused too."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder; choose a folder path")
    if not folder.is_dir():
        return
    found = precious_contents(folder, names)
    if not found:
        return
    if overwrite:
        for name in discard:
            _remove(folder / name)
        return
    if resume:
        if "checkpoints/" in found or not any(n in found for n in ("final/", "model.safetensors")):
            return
        raise ConfigError(f"{folder} holds {', '.join(found)} but no checkpoints/ to resume from; --resume would train "
                          "it again from step 0: pass --overwrite to replace it, or choose another --out")
    hint = "--resume to continue that run or --overwrite to replace it" if resume is not None else "--overwrite to replace it"
    raise ConfigError(f"{folder} already holds {', '.join(found)}; pass {hint} (or choose another --out)")


def _remove(path: Path) -> None:
    if path.is_dir():
        trash = path.with_name(f".{path.name}.deleting-{os.getpid()}")
        os.rename(path, trash)  # a kill mid-delete must not leave a half folder under the real name
        shutil.rmtree(trash, ignore_errors=True)
    elif path.exists():
        path.unlink()
