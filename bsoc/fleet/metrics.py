"""Each worker's metrics: counted in the worker, rendered as Prometheus text by the gateway.

A worker has no HTTP port of its own (it only speaks NATS), so it reports its figures in its
answer to ``bsoc.query.fleet`` and the gateway's ``/metrics`` renders every worker's, each
labelled by worker (and by partition for lag, in-flight messages and checkpoint age).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from typing import Any

from bsoc.serve.metrics import LATENCY_BUCKETS_S, Histogram

RATE_WINDOW_S = 10.0
CHECKPOINT_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """What one worker has done since it started."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.samples_total = 0
        self.messages_total = 0
        self.refused: Counter[str] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.checkpoints_total = 0
        self.checkpoint_seconds = Histogram(CHECKPOINT_BUCKETS_S)
        self.checkpoint_bytes = 0
        self.redeliveries = 0
        self.answers_resent = 0
        self.recent: deque[tuple[float, int]] = deque(maxlen=4096)

    def observe(self, answer: dict[str, Any], latency_s: float) -> None:
        self.messages_total += 1
        self.latency.observe(latency_s)
        if "error" in answer:
            self.refused[answer["error"]] += 1
        elif "estimates" in answer:
            n = len(answer["estimates"])
            self.samples_total += n
            now = time.monotonic()
            if self.recent and now - self.recent[-1][0] < 0.25:
                self.recent[-1] = (self.recent[-1][0], self.recent[-1][1] + n)
            else:
                self.recent.append((now, n))

    def observe_checkpoint(self, seconds: float, size: int) -> None:
        self.checkpoints_total += 1
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_bytes = size

    def samples_per_s(self, window_s: float = RATE_WINDOW_S) -> float:
        now = time.monotonic()
        recent = sum(n for t, n in self.recent if t > now - window_s)
        return recent / min(window_s, max(now - self.started, 1.0))

    def to_json(self) -> dict[str, Any]:
        """The figures as the worker sends them in its fleet answer."""
        return {
            "samples_total": self.samples_total,
            "messages_total": self.messages_total,
            "refused": dict(self.refused),
            "samples_per_s": self.samples_per_s(),
            "latency": {"buckets": list(self.latency.buckets),
                        "counts": self.latency.counts.tolist(), "sum": self.latency.total},  # fmt: skip
            "checkpoints_total": self.checkpoints_total,
            "checkpoint_bytes": self.checkpoint_bytes,
            "redeliveries": self.redeliveries,
            "answers_resent": self.answers_resent,
        }


def render_worker_metrics(answers: list[dict], missing: list[int]) -> str:
    """Prometheus text for the workers' answers (one family at a time, as the format needs)."""
    families: list[tuple[str, str, str, list[str]]] = [
        ("bsoc_fleet_partitions_without_owner", "gauge", "Partitions no live worker owns.",
         [f"bsoc_fleet_partitions_without_owner {len(missing)}"]),
    ]  # fmt: skip

    def per_worker(name: str, kind: str, help_text: str, value: Any) -> None:
        lines = [f'{name}{{worker="{a["worker"]}"}} {value(a)}' for a in answers]
        families.append((name, kind, help_text, lines))

    def per_partition(name: str, help_text: str, field: str) -> None:
        lines = [
            f'{name}{{worker="{a["worker"]}",partition="{p}"}} {round(v[field], 3)}'
            for a in answers
            for p, v in a["partitions"].items()
        ]
        families.append((name, "gauge", help_text, lines))

    per_worker("bsoc_fleet_samples_total", "counter", "Samples applied by the worker.",
               lambda a: a["metrics"]["samples_total"])  # fmt: skip
    per_worker("bsoc_fleet_messages_total", "counter", "Log messages the worker answered.",
               lambda a: a["metrics"]["messages_total"])  # fmt: skip
    per_worker("bsoc_fleet_samples_per_second", "gauge", "Samples applied per second (10 s).",
               lambda a: round(a["metrics"]["samples_per_s"], 3))  # fmt: skip
    per_worker("bsoc_fleet_worker_in_flight_messages", "gauge",
               "Messages being applied now, all partitions (at most the limit).",
               lambda a: a["metrics"]["in_flight"])  # fmt: skip
    per_worker("bsoc_fleet_worker_in_flight_limit", "gauge",
               "The worker's bound on messages applied at once (--max-worker-in-flight).",
               lambda a: a["metrics"]["in_flight_limit"])  # fmt: skip
    per_worker("bsoc_fleet_checkpoints_total", "counter", "Partition checkpoints stored.",
               lambda a: a["metrics"]["checkpoints_total"])  # fmt: skip
    per_worker("bsoc_fleet_consumer_restarts_total", "counter",
               "Consumers started again after a missing delivery.",
               lambda a: a["metrics"]["redeliveries"])  # fmt: skip
    per_worker("bsoc_fleet_answers_resent_total", "counter",
               "Answers sent again after the worker's NATS connection dropped.",
               lambda a: a["metrics"].get("answers_resent", 0))  # fmt: skip
    refused = [
        f'bsoc_fleet_refused_total{{worker="{a["worker"]}",kind="{kind}"}} {n}'
        for a in answers
        for kind, n in sorted(a["metrics"]["refused"].items())
    ]
    families.append(("bsoc_fleet_refused_total", "counter",
                     "Messages refused (also sent to the dead-letter subject), by kind.", refused))  # fmt: skip
    per_partition("bsoc_fleet_lag_messages", "Messages of the partition stored but not yet delivered.", "lag")  # fmt: skip
    per_partition("bsoc_fleet_in_flight_messages", "Messages delivered but not yet applied.", "in_flight")  # fmt: skip
    per_partition("bsoc_fleet_checkpoint_age_seconds", "Seconds since the partition's last checkpoint.", "checkpoint_age_s")  # fmt: skip
    per_partition("bsoc_fleet_partition_streams", "Streams of the partition.", "streams")
    latency = []
    for a in answers:
        h, label = a["metrics"]["latency"], f'worker="{a["worker"]}"'
        cumulative = list(itertools.accumulate(h["counts"]))
        latency += [f'bsoc_fleet_step_latency_seconds_bucket{{{label},le="{edge}"}} {n}'
                    for edge, n in zip(h["buckets"], cumulative)]  # fmt: skip
        latency += [
            f'bsoc_fleet_step_latency_seconds_bucket{{{label},le="+Inf"}} {cumulative[-1]}',
            f"bsoc_fleet_step_latency_seconds_sum{{{label}}} {h['sum']}",
            f"bsoc_fleet_step_latency_seconds_count{{{label}}} {cumulative[-1]}",
        ]
    families.append(("bsoc_fleet_step_latency_seconds", "histogram",
                     "From a delivered message to its answer, in the worker.", latency))  # fmt: skip
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"
