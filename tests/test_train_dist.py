"""torch.distributed on CPU (gloo): two ranks give the loss curve of one process with the same global batch."""
import json
import shutil
import subprocess
import sys

import pytest

from test_train import ENV, TINY, _cli, tok_dir  # noqa: F401 (a fixture)

ARGS = [*TINY, "data.tasks=addition,linear", "seq_len=32", "batch_size=8", "seed=3", "save_every=4"]


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "r1lab.cli",
            *map(str, args)]


def _single(out, tok_dir, *extra) -> list[float]:
    """One process, the global batch of 8 rows in two micro-batches of 4 (as the two ranks split it)."""
    subprocess.run(_cli("pretrain", "--tokenizer", tok_dir, *ARGS, "max_steps=8", *extra, "micro_batch_size=4", "--out", out),
                   check=True, capture_output=True, env=ENV)
    return _losses(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tok_dir):
    return _single(tmp_path_factory.mktemp("single") / "run", tok_dir)


def _check_same_curve(single: list[float], out, steps: int) -> None:
    losses = _losses(out)
    assert len(losses) == steps  # one line per step: only rank 0 writes
    diffs = [abs(a - b) for a, b in zip(single, losses)]
    print("max |loss difference| per step:", max(diffs))
    assert max(diffs) <= 1e-5
    assert (out / "final" / "model.safetensors").exists() and not list(out.glob("*rank*"))


def test_ddp_two_ranks_match_one_process(tmp_path, tok_dir, single):
    out = tmp_path / "ddp"
    done = subprocess.run(_torchrun("pretrain", "--tokenizer", tok_dir, *ARGS, "max_steps=8", "--out", out),
                          capture_output=True, text=True, env=ENV)
    # DDP warns on every rank that it found no unused parameter; leave that out so a failure shows its cause
    stderr = "\n".join(line for line in done.stderr.splitlines() if "find_unused_parameters=True was specified" not in line)
    assert done.returncode == 0, stderr[-6000:]
    assert "2 rank(s)" in done.stderr
    _check_same_curve(single, out, 8)


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_and_resume(tmp_path, tok_dir):
    # Muon needs whole matrices, so FSDP (sharded parameters) trains with AdamW, and so does its reference
    single = _single(tmp_path / "single", tok_dir, "optimizer=adamw")
    out = tmp_path / "fsdp"
    cmd = _torchrun("pretrain", "--tokenizer", tok_dir, *ARGS, "max_steps=8", "optimizer=adamw", "train.fsdp=true", "--out", out)
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    _check_same_curve(single, out, 8)
    # resume the sharded run from step 4: gathered weights and optimizer state go back to their shards
    shutil.rmtree(out / "checkpoints" / "step_8")
    shutil.rmtree(out / "final")
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0 and "(step 4)" in done.stderr, done.stderr[-3000:]
    _check_same_curve(single, out, 8)
