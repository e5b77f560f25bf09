"""Service metrics in the Prometheus text exposition format (version 0.0.4).

Cumulative counters and a latency histogram for scrapers, plus a recent-window view
(samples/s and latency quantiles over the last ``window_s`` seconds) that the dashboard
reads from the same page, so there is one source of truth. Everything is updated on the
event loop thread, so no locks are needed.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Histogram:
    """Cumulative-bucket histogram as Prometheus defines it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self.buckets, value, side="left"))] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        cumulative = np.cumsum(self.counts)
        out = [
            f'{name}_bucket{{le="{_fmt(edge)}"}} {count}'
            for edge, count in zip(self.buckets, cumulative[:-1])
        ]
        out.append(f'{name}_bucket{{le="+Inf"}} {cumulative[-1]}')
        out.append(f"{name}_sum {_fmt(self.total)}")
        out.append(f"{name}_count {cumulative[-1]}")
        return out


class RecentWindow:
    """Ring buffer of (time, latency, samples) per request for windowed rates and quantiles."""

    def __init__(self, window_s: float = 10.0, capacity: int = 1 << 18) -> None:
        self.window_s = window_s
        self.times = np.full(capacity, -np.inf)
        self.latencies = np.zeros(capacity)
        self.samples = np.zeros(capacity, dtype=np.int64)
        self.cursor = 0

    def add(self, now: float, latency_s: float, samples: int) -> None:
        i = self.cursor % len(self.times)
        self.times[i], self.latencies[i], self.samples[i] = now, latency_s, samples
        self.cursor += 1

    def summary(self, now: float) -> tuple[float, float, float, int]:
        """samples/s, p50 and p99 latency (s) and request count over the window."""
        recent = self.times > now - self.window_s
        n = int(recent.sum())
        if n == 0:
            return 0.0, 0.0, 0.0, 0
        # a young service has not been up for a whole window yet
        span = min(self.window_s, max(now - float(self.times[recent].min()), 1.0))
        p50, p99 = np.percentile(self.latencies[recent], [50, 99])
        return float(self.samples[recent].sum()) / span, float(p50), float(p99), n


class Metrics:
    """Everything /metrics reports. ``observe_request`` is called once per answered request."""

    def __init__(self, window_s: float = 10.0, *, snapshots: bool = False) -> None:
        self.started = time.time()
        self.snapshots = snapshots  # whether the service writes snapshots at all
        self.requests: Counter[str] = Counter()  # by transport
        self.samples_total = 0
        self.errors: Counter[str] = Counter()  # by kind
        self.gaps_total = 0
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.batch_streams = Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        self.model_steps_total = 0
        self.recent = RecentWindow(window_s)
        self.snapshots_total = 0
        self.last_snapshot_unix_s = 0.0
        self.snapshot_errors_total = 0
        self.snapshot_failure: str | None = None  # why the latest write failed; None once one works

    def observe_request(self, transport: str, latency_s: float, samples: int, gaps: int) -> None:
        self.requests[transport] += 1
        self.samples_total += samples
        self.gaps_total += gaps
        self.latency.observe(latency_s)
        self.recent.add(time.monotonic(), latency_s, samples)

    def observe_error(self, kind: str) -> None:
        self.errors[kind] += 1

    def observe_batch(self, streams: int, steps: int) -> None:
        self.batch_streams.observe(streams)
        self.model_steps_total += steps

    def observe_snapshot(self) -> None:
        self.snapshots_total += 1
        self.last_snapshot_unix_s = time.time()
        self.snapshot_failure = None

    def observe_snapshot_error(self, reason: str) -> None:
        self.snapshot_errors_total += 1
        self.snapshot_failure = reason

    def snapshot_age_s(self) -> float:
        """Seconds since the last good snapshot (since start-up before the first one)."""
        return time.time() - max(self.last_snapshot_unix_s, self.started)

    def render(self, streams: int, model: dict[str, str]) -> str:
        rate, p50, p99, n = self.recent.summary(time.monotonic())
        window = _fmt(self.recent.window_s)
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(model.items()))
        blocks = [
            ("bsoc_model_info", "gauge", "The served model.", [f"bsoc_model_info{{{labels}}} 1"]),
            ("bsoc_streams", "gauge", "Streams with state.", [f"bsoc_streams {streams}"]),
            (
                "bsoc_requests_total",
                "counter",
                "Answered requests (HTTP bodies and WebSocket messages) by transport.",
                [f'bsoc_requests_total{{transport="{t}"}} {n_}' for t, n_ in sorted(self.requests.items())],
            ),
            ("bsoc_samples_total", "counter", "Samples accepted.", [f"bsoc_samples_total {self.samples_total}"]),
            (
                "bsoc_errors_total",
                "counter",
                "Rejected or failed requests by kind.",
                [f'bsoc_errors_total{{kind="{k}"}} {n_}' for k, n_ in sorted(self.errors.items())],
            ),
            ("bsoc_gaps_total", "counter", "Samples that followed a gap longer than the limit.", [f"bsoc_gaps_total {self.gaps_total}"]),
            ("bsoc_request_latency_seconds", "histogram", "Time from a parsed request to its answer.", self.latency.lines("bsoc_request_latency_seconds")),
            ("bsoc_batch_streams", "histogram", "Streams advanced together per micro-batch.", self.batch_streams.lines("bsoc_batch_streams")),
            ("bsoc_model_steps_total", "counter", "Batched model calls.", [f"bsoc_model_steps_total {self.model_steps_total}"]),
            ("bsoc_recent_samples_per_second", "gauge", f"Accepted samples per second over the last {window} s.", [f"bsoc_recent_samples_per_second {_fmt(rate)}"]),
            (
                "bsoc_recent_latency_seconds",
                "gauge",
                f"Request latency quantiles over the last {window} s ({n} requests).",
                [
                    f'bsoc_recent_latency_seconds{{quantile="0.5"}} {_fmt(p50)}',
                    f'bsoc_recent_latency_seconds{{quantile="0.99"}} {_fmt(p99)}',
                ],
            ),
            ("bsoc_snapshots_total", "counter", "State snapshots written.", [f"bsoc_snapshots_total {self.snapshots_total}"]),
            ("bsoc_last_snapshot_unix_seconds", "gauge", "When the last snapshot was written.", [f"bsoc_last_snapshot_unix_seconds {_fmt(self.last_snapshot_unix_s)}"]),
            ("bsoc_snapshot_errors_total", "counter", "Snapshot writes that failed (each is retried at the next period).", [f"bsoc_snapshot_errors_total {self.snapshot_errors_total}"]),
            *(
                [("bsoc_last_snapshot_age_seconds", "gauge", "Seconds since the last good snapshot (since start-up before the first).", [f"bsoc_last_snapshot_age_seconds {_fmt(self.snapshot_age_s())}"])]
                if self.snapshots
                else []
            ),
            ("bsoc_uptime_seconds", "gauge", "Seconds since the service started.", [f"bsoc_uptime_seconds {_fmt(time.time() - self.started)}"]),
        ]  # fmt: skip
        lines: list[str] = []
        for name, kind, help_text, samples in blocks:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
