"""One peak FLOP/s behind every MFU figure: measured one way, cached per machine and thread count, never
drawing from the global RNG."""
import json

import torch

from r1lab.train.metrics import Progress, device_peak, peak_cache


def test_peak_is_cached_and_leaves_the_global_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("R1LAB_PEAK_FLOPS", raising=False)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = device_peak(torch.device("cpu"), repeats=2)
    assert torch.equal(torch.get_rng_state(), state)  # measuring drew nothing from the global generator
    assert first.flops > 1e8 and "2048" in first.label() and "threads" in first.label()
    cache = json.loads(peak_cache().read_text())
    assert peak_cache().parent == tmp_path / "r1lab" and list(cache.values()) == [first.flops]
    # a later run reads the cached figure, without measuring again
    key = next(iter(cache))
    peak_cache().write_text(json.dumps({key: 123e9}))
    assert device_peak(torch.device("cpu")).flops == 123e9
    # refresh measures again and keeps the best seen
    assert device_peak(torch.device("cpu"), refresh=True, repeats=1).flops >= 123e9


def test_peak_override_and_progress_line_names_it(monkeypatch, capsys):
    monkeypatch.setenv("R1LAB_PEAK_FLOPS", "5e11")
    peak = device_peak(torch.device("cpu"))
    assert peak.flops == 5e11 and "R1LAB_PEAK_FLOPS" in peak.label()
    progress = Progress(2, 0, "pretrain", True, 1)
    progress.bar = None
    progress.peak = peak.label()
    progress.update(1, {"loss": 1.0, "tokens_per_s": 100.0, "mfu": 0.25, "lr": 1e-3})
    assert "MFU 25.0% of 500 GFLOP/s (R1LAB_PEAK_FLOPS)" in capsys.readouterr().err


def test_bf16_peak_is_cached_apart_from_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("R1LAB_PEAK_FLOPS", raising=False)
    fp32 = device_peak(torch.device("cpu"), repeats=1)
    bf16 = device_peak(torch.device("cpu"), repeats=1, dtype=torch.bfloat16)
    assert "fp32" in fp32.label() and "bf16" in bf16.label()
    cache = json.loads((tmp_path / "r1lab" / "peak.json").read_text())
    assert len(cache) == 2 and sum(k.endswith("|bf16") for k in cache) == 1


def test_more_threads_never_peak_below_fewer(tmp_path, monkeypatch):
    """A 2-thread figure taken while another job held a core came out below the 1-thread one (74 against 90
    GFLOP/s); the peak with more threads is at least the best seen with fewer, of the same dtype."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("R1LAB_PEAK_FLOPS", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        device_peak(torch.device("cpu"), repeats=1)
        key1 = next(iter(json.loads(peak_cache().read_text())))
        key2, key3 = key1.replace("|1 threads", "|2 threads"), key1.replace("|1 threads", "|3 threads")
        peak_cache().write_text(json.dumps({key1: 90e9, key2: 74e9, key3: 50e9, key1 + "|bf16": 900e9}))
        torch.set_num_threads(2)
        assert device_peak(torch.device("cpu")).flops == 90e9  # not 74, nor the bf16 figure
        torch.set_num_threads(1)
        assert device_peak(torch.device("cpu")).flops == 90e9  # fewer threads: unchanged
    finally:
        torch.set_num_threads(threads)
