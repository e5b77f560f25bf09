"""``bsoc fleet up``: a whole fleet on this machine (NATS nodes, workers, a gateway).

For tests and the demo: every piece is the same program a multi-machine deployment runs
(``docs/fleet.md``), started here as child processes on loopback ports. Workers and the
gateway are run by the same ``bsoc`` this command runs, so they load the same code.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.log import FleetError, read_settings
from bsoc.fleet.nats_server import NatsCluster, wait_for_ok

USERS = ("worker", "gateway", "client")


def bsoc_command() -> list[str]:
    """How to run the ``bsoc`` that is running now (console script, module or test wrapper)."""
    return [sys.executable, sys.argv[0]]


@dataclass
class LocalFleet:
    model: Path
    root: Path
    workers: int = 2
    nats_nodes: int = 1
    partitions: int = 8
    gateway_port: int | None = None  # None: no gateway
    auth: bool = False
    worker_options: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.passwords = {u: secrets.token_urlsafe(18) for u in USERS} if self.auth else None
        self.nats = NatsCluster(self.root / "nats", self.nats_nodes, users=self.passwords)
        self.gateway_url = (
            f"http://127.0.0.1:{self.gateway_port}" if self.gateway_port is not None else None
        )

    def credentials(self, user: str) -> list[str]:
        """The options that log ``user`` in (the password in a 0600 file, never on argv)."""
        if self.passwords is None:
            return []
        folder = self.root / "credentials"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / user
        path.touch(mode=0o600)
        path.write_text(self.passwords[user] + "\n")
        return ["--nats-user", user, "--nats-password-file", str(path)]

    def start(self) -> LocalFleet:
        self.root.mkdir(parents=True, exist_ok=True)
        self.credentials("client")  # written now: 'bsoc fleet up' tells clients where it is
        self.nats.start()
        replicas = str(min(3, self.nats_nodes))
        for k in range(self.workers):
            self.start_worker(k, replicas)
        self.wait_for_fleet()
        if self.gateway_port is not None:
            self._spawn("gateway", ["fleet", "gateway", "--nats", self.nats.url,
                                    "--port", str(self.gateway_port), *self.credentials("gateway")])  # fmt: skip
            self.wait_for_gateway()
        return self

    def start_worker(self, k: int, replicas: str = "1") -> subprocess.Popen:
        command = ["fleet", "worker", "--model", str(self.model), "--nats", self.nats.url,
                   "--partitions", str(self.partitions), "--replicas", replicas,
                   *self.credentials("worker"), *self.worker_options]  # fmt: skip
        return self._spawn(f"worker-{k + 1}", command)

    def _spawn(self, name: str, arguments: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        with log:
            process = subprocess.Popen(
                [*bsoc_command(), *arguments], stdout=log, stderr=log, env=os.environ.copy()
            )
        self.processes.append(process)
        return process

    def wait_for_fleet(self, timeout_s: float = 120.0) -> None:
        """Until the first worker has set the log up (so a gateway or client can join)."""
        target = NatsTarget(self.nats.url.split(",")[0], *self._client_login())

        async def settled() -> bool:
            nc = await connect(target, "bsoc-fleet-up")
            try:
                await read_settings(nc.jetstream(), target.url)
                return True
            except FleetError:
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_children()
            if asyncio.run(settled()):
                return
            time.sleep(0.5)
        raise FleetError(f"no worker set the fleet up within {timeout_s:.0f} s",
                         remedy=f"see the logs in {self.root}")  # fmt: skip

    def wait_for_gateway(self, timeout_s: float = 60.0) -> None:
        if not wait_for_ok(f"{self.gateway_url}/healthz", timeout_s, self.check_children):
            raise FleetError(f"the gateway did not answer within {timeout_s:.0f} s",
                             remedy=f"see {self.root / 'gateway.log'}")  # fmt: skip

    def _client_login(self) -> tuple[str | None, str | None]:
        if self.passwords is None:
            return None, None
        return "client", self.passwords["client"]

    def check_children(self) -> None:
        for process in self.processes:
            if process.poll() is not None and process.returncode not in (0, -signal.SIGKILL):
                raise FleetError(f"{' '.join(process.args[2:4])} exited with {process.returncode}",
                                 remedy=f"see the logs in {self.root}")  # fmt: skip

    def stop(self) -> None:
        """SIGTERM everything (workers checkpoint and hand back), then the NATS nodes."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.nats.stop()

