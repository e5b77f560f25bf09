"""Load test of ``bsoc serve``: many concurrent streams at 1 Hz and at max rate, on loopback.

Starts the service on a free 127.0.0.1 port, then runs ``bsoc replay`` (a separate process,
so client and server do not share one interpreter) for each scenario, and writes one JSON
with every replay report, a pass/fail per 1 Hz run, and the largest stream count that
passed. Everything is bounded: the stream counts are given, each run lasts at most
``--seconds``, and the ramp stops at the first failure or at ``--cap``.

A 1 Hz run passes with zero errors, p99 latency under ``--p99-ms`` and at least 95 % of
the offered samples/s sustained.

    python benchmarks/load_test.py --model models/<name> --dataset data/<set> \\
        --streams 100,500,1000 --seconds 60 --out reports/load_test.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bsoc: list[str], model: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [*bsoc, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--no-snapshot", *extra], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited ({process.returncode}): {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    sys.exit("server did not become healthy within 120 s")


def run_replay(bsoc: list[str], args: argparse.Namespace, url: str, streams: int, rate: float,
               seconds: float, prefix: str) -> dict:  # fmt: skip
    """``bsoc replay`` against ``url`` (a service's http:// URL, or a fleet's nats:// URL)."""
    endpoint = ["--nats", url] if url.startswith("nats://") else ["--url", url]
    command = [
        *bsoc, "replay", args.dataset, *endpoint, "--streams", str(streams),
        "--rate", str(rate), "--max-seconds", str(seconds), "--split", args.split,
        "--batch", str(args.batch), "--prefix", prefix, "--json",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    try:  # a replay with failed samples exits non-zero but still prints its report
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"streams": streams, "rate_hz": rate, "failed": result.stderr.strip()[-500:]}


def verdict(report: dict, p99_ms: float) -> bool:
    if "failed" in report or report["error_count"]:
        return False
    target = report["target_samples_per_s"]
    sustained = target is None or report["samples_per_s"] >= 0.95 * target * _active_share(report)
    return report["latency_ms"]["p99"] < p99_ms and sustained


def _active_share(report: dict) -> float:
    """Streams start spread over one period, so the first second offers fewer samples."""
    return max(0.0, 1.0 - 1.0 / max(report["elapsed_s"], 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model folder to serve")
    parser.add_argument("--dataset", required=True, help="dataset folder to replay")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--streams", default="100,500,1000", help="1 Hz stream counts, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each 1 Hz run")
    parser.add_argument(
        "--ramp", action="store_true", help="after the list, keep doubling until a run fails"
    )
    parser.add_argument("--cap", type=int, default=8000, help="most streams the ramp tries")
    parser.add_argument(
        "--max-rate-streams", default="1,100", help="stream counts for the max-rate runs"
    )
    parser.add_argument("--max-rate-seconds", type=float, default=15.0)
    parser.add_argument("--batch", type=int, default=1, help="samples per request")
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument(
        "--bsoc-cmd",
        default=f"{sys.executable} -m bsoc.cli",
        help="command that runs bsoc (e.g. a wrapper registering a test model)",
    )
    parser.add_argument("--server-args", default="", help="extra 'bsoc serve' options")
    parser.add_argument("--out", default="reports/load_test.json")
    args = parser.parse_args()

    bsoc = shlex.split(args.bsoc_cmd)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(bsoc, args.model, port, shlex.split(args.server_args))
    results: dict = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model": httpx.get(f"{url}/healthz").json()["model"],
        "criteria": {"errors": 0, "p99_ms_below": args.p99_ms, "sustained_share_at_least": 0.95},
        "one_hz": [],
        "max_rate": [],
    }
    try:
        counts = [int(n) for n in args.streams.split(",") if n]
        run = 0
        while counts:
            n = counts.pop(0)
            report = run_replay(bsoc, args, url, n, 1.0, args.seconds, f"hz-{run}")
            report["pass"] = verdict(report, args.p99_ms)
            results["one_hz"].append(report)
            _print(f"1 Hz x {n}", report)
            run += 1
            if args.ramp and not counts and report["pass"] and n * 2 <= args.cap:
                counts.append(n * 2)
        passed = [r["streams"] for r in results["one_hz"] if r["pass"]]
        results["max_streams_at_1hz_passed"] = max(passed) if passed else 0
        for k, n in enumerate(int(n) for n in args.max_rate_streams.split(",") if n):
            report = run_replay(bsoc, args, url, n, 0.0, args.max_rate_seconds, f"max-{k}")
            results["max_rate"].append(report)
            _print(f"max rate x {n}", report)
        results["server_metrics"] = httpx.get(f"{url}/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"wrote {args.out}; largest passing 1 Hz stream count: {results['max_streams_at_1hz_passed']}"
    )


def _print(label: str, report: dict) -> None:
    if "failed" in report:
        print(f"{label:>16}: replay failed: {report['failed']}", flush=True)
        return
    lat = report["latency_ms"]
    print(
        f"{label:>16}: {report['samples_per_s']:9.1f} samples/s  p50 {lat['p50']:.2f} ms  "
        f"p99 {lat['p99']:.2f} ms  max {lat['max']:.1f} ms  errors {report['error_count']}"
        + (f"  pass={report['pass']}" if "pass" in report else ""),
        flush=True,
    )


if __name__ == "__main__":
    main()
