"""GRPO health monitor: per step, the signs of the pathologies RL users hit most, as warnings.

Pure functions over the per-step metrics records (metrics.jsonl rows) and the step's samples; the trainer
adds the result to each record as `health` ({"signs": {name: message}, "repetition": share,
"zero_signal": share}), shows the sign names in the progress line, and stops when a sign named in
`grpo.stop_on` appears (checkpoint saved first). The signs:

    truncation               >= 25% of completions cut at max_new_tokens (they score 0 and teach nothing)
    repetition               >= 20% of completions stuck in an n-gram loop (half their 4-grams repeats)
    format_without_accuracy  format reward up >= 0.2 over the last 10 steps while accuracy moved < 0.02
    length_blowup            mean length >= 3x its mean over the first 5 steps
    length_collapse          mean length <= 0.4x its mean over the first 5 steps
    entropy_collapse         policy entropy <= 0.1x its mean over the first 5 steps (or below 0.02 nats)
    kl_spike                 KL to the reference >= 5x its median over the last 10 steps, and >= 0.05
    zero_signal              >= 90% of groups have all-equal rewards (no advantage, no gradient)
    off_policy               the rollout correction masked or truncated >= 10% of the trained tokens (the
                             sampler drifted from the trainer: grpo.rollout_correction)

Thresholds are module constants; they are warnings to look at, not verdicts (R1's thinking grew with RL).
"""
from __future__ import annotations

import statistics
from typing import Any, Sequence

TRUNCATION = 0.25
REPETITION = 0.20
LOOP_SHARE = 0.5  # a completion whose 4-grams are at least this share repeats is looping
NGRAM = 4
FORMAT_RISE, ACCURACY_FLAT, WINDOW = 0.2, 0.02, 10
BASELINE_STEPS = 5
BLOWUP, COLLAPSE = 3.0, 0.4
ENTROPY_FLOOR_SHARE, ENTROPY_FLOOR = 0.1, 0.02
KL_SPIKE, KL_MIN = 5.0, 0.05
ZERO_SIGNAL = 0.9
OFF_POLICY = 0.1
SIGNS = ("truncation", "repetition", "format_without_accuracy", "length_blowup", "length_collapse", "entropy_collapse",
         "kl_spike", "zero_signal", "off_policy")


def check_stop_on(stop_on: str) -> list[str]:
    """The sign names of a `grpo.stop_on` value ("" none, "any" all); a clear error for an unknown one."""
    names = [name.strip() for name in stop_on.split(",") if name.strip()]
    if names == ["any"]:
        return list(SIGNS)
    unknown = [name for name in names if name not in SIGNS]
    if unknown:
        raise ValueError(f"grpo.stop_on: unknown sign {unknown[0]!r}; valid: any, {', '.join(SIGNS)}")
    return names


def repetition(token_ids: Sequence[int], n: int = NGRAM) -> float:
    """Share of a completion's n-grams that repeat an earlier one (0 for fewer than 2n tokens)."""
    if len(token_ids) < 2 * n:
        return 0.0
    grams = [tuple(token_ids[i:i + n]) for i in range(len(token_ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def looping_share(repetitions: Sequence[float]) -> float:
    """Share of completions stuck in a loop, from their repetition() values."""
    return sum(r >= LOOP_SHARE for r in repetitions) / len(repetitions) if repetitions else 0.0


# rewards closer than this are equal: a group of them carries no signal (dynamic sampling drops it, its
# advantages are exactly 0, and it counts here)
REWARD_TIE = 1e-9


def zero_signal_share(rewards: Sequence[float], group_size: int) -> float:
    """Share of groups (consecutive group_size rewards) whose rewards are all equal."""
    groups = [rewards[i:i + group_size] for i in range(0, len(rewards) - group_size + 1, group_size)]
    return sum(max(g) - min(g) < REWARD_TIE for g in groups) / len(groups) if groups else 0.0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _series(history: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in history if isinstance(r.get(key), (int, float))]


def signs(history: list[dict], repetition_share: float = 0.0, zero_signal: float = 0.0) -> dict[str, str]:
    """The signs present at the last record of `history` (all records so far, oldest first)."""
    found: dict[str, str] = {}
    now = history[-1]
    if now.get("truncated", 0.0) >= TRUNCATION:
        found["truncation"] = f"{now['truncated']:.0%} of completions cut at max_new_tokens"
    if repetition_share >= REPETITION:
        found["repetition"] = f"{repetition_share:.0%} of completions loop (repeated {NGRAM}-grams)"
    fmt_key = "reward_format" if "reward_format" in now else "reward_tag_count"
    fmt, acc = _series(history, fmt_key)[-WINDOW:], _series(history, "accuracy")[-WINDOW:]
    if len(fmt) == WINDOW and len(acc) == WINDOW and fmt[-1] - fmt[0] >= FORMAT_RISE and abs(acc[-1] - acc[0]) < ACCURACY_FLAT:
        found["format_without_accuracy"] = (f"{fmt_key[7:]} {fmt[0]:.2f} -> {fmt[-1]:.2f} over {WINDOW} steps, "
                                            f"accuracy {acc[0]:.2f} -> {acc[-1]:.2f}")
    lengths = _series(history, "response_length")
    base = _mean(lengths[:BASELINE_STEPS])
    if base and len(lengths) > BASELINE_STEPS:
        ratio = f"mean length {lengths[-1]:.0f} tokens, {lengths[-1] / base:.2f}x the first steps' {base:.0f}"
        if lengths[-1] >= BLOWUP * base:
            found["length_blowup"] = ratio
        elif lengths[-1] <= COLLAPSE * base:
            found["length_collapse"] = ratio
    entropy = _series(history, "entropy")
    start = _mean(entropy[:BASELINE_STEPS])
    if entropy and len(entropy) > BASELINE_STEPS and start and (
            entropy[-1] <= ENTROPY_FLOOR_SHARE * start or entropy[-1] < ENTROPY_FLOOR):
        found["entropy_collapse"] = f"entropy {entropy[-1]:.3f} nats, from {start:.3f} at the start"
    kl = _series(history, "kl")
    if len(kl) > BASELINE_STEPS:
        typical = statistics.median(kl[-WINDOW - 1:-1])
        if kl[-1] >= KL_MIN and kl[-1] >= KL_SPIKE * max(typical, 1e-12):
            found["kl_spike"] = f"KL {kl[-1]:.3f}, {kl[-1] / max(typical, 1e-12):.0f}x its recent median {typical:.4f}"
    if zero_signal >= ZERO_SIGNAL:
        found["zero_signal"] = f"{zero_signal:.0%} of groups have all-equal rewards"
    cut = now.get("correction_masked", 0.0) + now.get("correction_truncated", 0.0)
    if cut >= OFF_POLICY:
        how = "masked" if now.get("correction_masked", 0.0) else "truncated"
        found["off_policy"] = f"the rollout correction {how} {cut:.0%} of trained tokens (sampler != trainer)"
    return found


class Monitor:
    """Keeps the history and gives each step's `health` entry; `stop` says whether a stop_on sign appeared."""

    def __init__(self, stop_on: str = "", history: list[dict] | None = None):
        self.stop_on = set(check_stop_on(stop_on))
        self.history: list[dict] = list(history or [])

    def check(self, record: dict[str, Any], rewards: Sequence[float], repetitions: Sequence[float],
              group_size: int) -> dict[str, Any]:
        self.history.append(record)
        share, zero = looping_share(repetitions), zero_signal_share(rewards, group_size)
        return {"signs": signs(self.history, share, zero), "repetition": round(share, 4), "zero_signal": round(zero, 4)}

    def stop(self, health: dict[str, Any]) -> list[str]:
        """The stop_on signs present in a step's health entry."""
        return [name for name in health["signs"] if name in self.stop_on]
