"""Fleet load and recovery, side by side with ``bsoc serve`` in one run, on loopback.

For each stream count N, one ``bsoc replay`` of N streams at 1 Hz against ``bsoc serve``
(WebSocket, as ``load_test.py``) and one against a fleet (``bsoc replay --nats``: straight
into the log, answered by the owning worker, so the latency is end to end through JetStream),
alternating, so both see the same machine. Then recovery: with the fleet under a 1 Hz load,
one worker is killed with SIGKILL; the report gives the time until its partitions are owned
again, the time until every sample sent meanwhile has its estimate, and the loss (samples
sent but never answered; the replay's errors). Every run is bounded by --seconds.

    python benchmarks/fleet_load.py --model models/<name> --dataset data/<set> \\
        --streams 1000,2000 --workers 2 --seconds 60 --out reports/fleet_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from load_test import free_port, run_replay, start_server, verdict

from bsoc.fleet.connection import NatsTarget
from bsoc.fleet.queries import ask_fleet
from bsoc.fleet.nats_server import NatsCluster


def start_workers(bsoc: list[str], args: argparse.Namespace, url: str, folder: Path) -> list:
    workers = []
    for k in range(args.workers):
        log = open(folder / f"worker-{k + 1}.log", "ab")
        with log:
            workers.append(subprocess.Popen(
                [*bsoc, "fleet", "worker", "--model", args.model, "--nats", url,
                 "--partitions", str(args.partitions), "--lease-seconds", str(args.lease_seconds),
                 "--checkpoint-interval", str(args.checkpoint_interval)],
                stdout=log, stderr=log))  # fmt: skip
    return workers


def fleet_status(url: str, partitions: int) -> tuple[list[dict], list[int]]:
    return asyncio.run(ask_fleet(NatsTarget(url), partitions))


def wait_owned(url: str, partitions: int, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fleet_status(url, partitions)[1]:
        if time.monotonic() > deadline:
            sys.exit(f"some partitions had no owner after {timeout_s:.0f} s")
        time.sleep(0.2)


def recovery(bsoc: list[str], args: argparse.Namespace, url: str, workers: list) -> dict:
    """Kill -9 one worker in the middle of a 1 Hz run; time the takeover and the catch-up."""
    result: dict = {}
    replay = threading.Thread(target=lambda: result.update(report=run_replay(
        bsoc, args, url, args.recovery_streams, 1.0, args.seconds, "recovery")))  # fmt: skip
    applied = lambda answers: sum(a["metrics"]["samples_total"] for a in answers)  # noqa: E731
    before = applied(fleet_status(url, args.partitions)[0])
    replay.start()
    while True:  # kill once the replay has run for a few seconds (its start-up is not counted)
        answers, _ = fleet_status(url, args.partitions)
        if applied(answers) >= before + 5 * args.recovery_streams:
            break
        time.sleep(0.1)
    victim = max(answers, key=lambda a: len(a["partitions"]))
    victim_pid = next(w for w in workers if f"-{w.pid}-" in victim["worker"])
    orphaned = sorted(int(p) for p in victim["partitions"])
    victim_pid.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    while True:
        answers, missing = fleet_status(url, args.partitions)
        owners = {int(p) for a in answers if a["worker"] != victim["worker"] for p in a["partitions"]}
        if set(orphaned) <= owners:
            break
        time.sleep(0.05)
    taken_over = time.monotonic() - killed
    while True:  # until the new owners have replayed the log and delivered all it holds
        answers, _ = fleet_status(url, args.partitions)
        state = [a["partitions"][str(p)] for a in answers for p in orphaned if str(p) in a["partitions"]]
        if len(state) == len(orphaned) and all(s["lag"] == 0 for s in state):
            break
        time.sleep(0.05)
    caught_up = time.monotonic() - killed
    replay.join()
    report = result["report"]
    return {
        "killed_worker": victim["worker"],
        "orphaned_partitions": orphaned,
        "takeover_s": round(taken_over, 3),
        "caught_up_s": round(caught_up, 3),
        "samples_sent": report.get("samples_sent"),
        "samples_answered": report.get("samples_ok"),
        "samples_lost": (report.get("samples_sent", 0) - report.get("samples_ok", 0)),
        "errors": report.get("errors"),
        "latency_ms": report.get("latency_ms"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--streams", default="1000,2000", help="1 Hz stream counts")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--checkpoint-interval", type=float, default=10.0)
    parser.add_argument("--recovery-streams", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument("--bsoc-cmd", default=f"{sys.executable} -m bsoc.cli")
    parser.add_argument("--out", default="reports/fleet_load.json")
    args = parser.parse_args()

    bsoc = shlex.split(args.bsoc_cmd)
    results: dict = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_start": os.getloadavg()},  # fmt: skip
        "runs": [],
    }
    folder = Path(tempfile.mkdtemp(prefix="bsoc-fleet-load-"))
    port = free_port()
    serve_url = f"http://127.0.0.1:{port}"
    server = start_server(bsoc, args.model, port, [])
    with NatsCluster(folder / "nats") as cluster:
        workers = start_workers(bsoc, args, cluster.url, folder)
        try:
            wait_owned(cluster.url, args.partitions)
            for n in (int(x) for x in args.streams.split(",") if x):
                for name, url in (("serve", serve_url), ("fleet", cluster.url)):
                    report = run_replay(bsoc, args, url, n, 1.0, args.seconds, f"{name}-{n}")
                    report["pass"] = verdict(report, args.p99_ms)
                    report["target"] = name
                    report["load_average"] = os.getloadavg()
                    results["runs"].append(report)
                    _print(f"{name} {n} x 1 Hz", report)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            if args.workers > 1:  # a takeover needs a survivor
                results["recovery"] = recovery(bsoc, args, cluster.url, workers)
                print("recovery:", json.dumps(results["recovery"]), flush=True)
        finally:
            if server.poll() is None:
                server.kill()
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
    results["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _print(label: str, report: dict) -> None:
    if "failed" in report:
        print(f"{label:>18}: replay failed: {report['failed']}", flush=True)
        return
    lat = report["latency_ms"]
    print(f"{label:>18}: {report['samples_per_s']:8.1f} samples/s  p50 {lat['p50']:.1f} ms  "
          f"p99 {lat['p99']:.1f} ms  max {lat['max']:.0f} ms  errors {report['error_count']}  "
          f"load {report['load_average'][0]:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
