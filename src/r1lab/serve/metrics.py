"""Server metrics in the Prometheus text format (version 0.0.4), written by hand: a few counters and
histograms do not need a client library.

All updates happen on the event loop thread, so plain ints and floats suffice. `MetricsMiddleware` also
writes the one log line per request.
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

log = logging.getLogger("r1lab.serve")
KNOWN_PATHS = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return out


@dataclass
class Metrics:
    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.latency.observe(seconds)

    def render(self, engine_stats: dict) -> str:
        lines = ["# HELP r1lab_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE r1lab_requests_total counter"]
        for (endpoint, status), count in sorted(self.requests.items()):
            lines.append(f'r1lab_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
        lines += ["# HELP r1lab_prompt_tokens_total Prompt tokens of admitted requests.",
                  "# TYPE r1lab_prompt_tokens_total counter", f"r1lab_prompt_tokens_total {self.prompt_tokens}",
                  "# HELP r1lab_generated_tokens_total Tokens generated.",
                  "# TYPE r1lab_generated_tokens_total counter", f"r1lab_generated_tokens_total {self.generated_tokens}",
                  "# HELP r1lab_request_latency_seconds Time from request to the last byte of the response.",
                  "# TYPE r1lab_request_latency_seconds histogram", *self.latency.lines("r1lab_request_latency_seconds"),
                  "# HELP r1lab_time_to_first_token_seconds Time from request to the first generated token.",
                  "# TYPE r1lab_time_to_first_token_seconds histogram", *self.ttft.lines("r1lab_time_to_first_token_seconds")]
        gauges = {"waiting": ("r1lab_queue_depth", "Requests waiting for a batch slot."),
                  "running": ("r1lab_running_requests", "Sequences in the running batch."),
                  "cached_tokens": ("r1lab_cached_tokens", "Tokens held in the KV cache.")}
        for key, (name, help_) in gauges.items():
            if key in engine_stats:
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {engine_stats[key]}"]
        counters = {"spec_drafted_tokens": ("r1lab_spec_drafted_tokens_total", "Speculative drafts verified."),
                    "spec_accepted_tokens": ("r1lab_spec_accepted_tokens_total", "Speculative drafts kept.")}
        for key, (name, help_) in counters.items():
            if engine_stats.get("spec_drafted_tokens"):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {engine_stats[key]}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts requests by endpoint and status, times them to their last byte, and logs one line each."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [499]  # 499: the client left before a response began

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status[0] = 500  # the outermost handler answers it, outside this middleware
            raise
        finally:
            path = scope.get("path", "")
            endpoint = path if path in KNOWN_PATHS else "other"
            seconds = time.perf_counter() - started
            self.metrics.request_done(endpoint, status[0], seconds)
            usage = scope.get("state", {}).get("usage")
            tokens = f" prompt={usage[0]} completion={usage[1]}" if usage else ""
            log.info("%s %s %d %.3fs%s", scope.get("method"), path, status[0], seconds, tokens)
