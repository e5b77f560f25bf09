"""``bsoc fleet worker / gateway / up / status``: SOC for many cells through NATS JetStream.

Heavy imports (nats, uvicorn, the model's torch) happen inside the commands.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer

from bsoc.commands.serve import KEY_OPTION_HELP, api_key_from_options, load_served_model
from bsoc.console import emit_json, err_console, out_console
from bsoc.errors import ConfigError

fleet_app = typer.Typer(
    help="Fleet scale: workers that own partitions of a NATS JetStream log, a gateway with "
    "the 'bsoc serve' API in front of it, and a local cluster for tests and demos.",
    no_args_is_help=True,
)

NATS_HELP = "NATS server URL(s), comma-separated for a cluster."
USER_HELP = "NATS user name (its password from --nats-password-file or $BSOC_NATS_PASSWORD)."
PASSWORD_FILE_HELP = "File holding the NATS user's password."
STREAM_RATE_HELP = ("Most samples per second one stream may send, by the log's clock; "
                    "beyond it messages are refused (429 rate_limited, to the dead-letter subject).")
STREAM_BURST_HELP = "Samples one stream may send at once within --max-stream-rate."


def _target(nats: str, user: str | None, password_file: Path | None):
    from bsoc.fleet.connection import nats_target

    return nats_target(nats, user, password_file)


def _run_until_signal(main, stop) -> None:
    """Run ``main()`` (a coroutine function); SIGTERM / Ctrl-C call ``stop()`` for a clean end."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await main()

    asyncio.run(runner())


@fleet_app.command("worker")
def worker(
    model: Path = typer.Option(..., "--model", help="Model folder (any kind: lstm, ekf, ...)."),
    nats: str = typer.Option("nats://127.0.0.1:4222", "--nats", help=NATS_HELP),
    partitions: int = typer.Option(
        8, min=1, max=1024, help="Partitions of the log (fixed when the log is made)."
    ),
    replicas: int = typer.Option(
        1, min=1, max=5, help="JetStream replicas of the log and state (3 on a 3-node cluster)."
    ),
    lease_seconds: float = typer.Option(
        3.0, min=0.3, help="A silent owner's partitions are taken over after this long."
    ),
    checkpoint_interval: float = typer.Option(
        10.0, min=0.0, help="Seconds between partition checkpoints (0: only when handing back)."
    ),
    max_in_flight: int = typer.Option(
        2048, min=1, help="Messages per partition delivered but not yet applied (back-pressure)."
    ),
    max_worker_in_flight: int = typer.Option(
        8192, min=1, help="Messages this worker applies at once over all its partitions; "
        "beyond that its consumers wait and the log holds the rest (back-pressure).",
    ),
    gap_limit: float = typer.Option(300.0, min=0.0, help="As 'bsoc serve --gap-limit'."),
    gap_policy: str = typer.Option("reset", help="As 'bsoc serve --gap-policy'."),
    max_streams_per_partition: int = typer.Option(
        20_000, min=1, help="Most streams one partition holds (the stream limit, per partition)."
    ),
    max_stream_rate: float = typer.Option(
        0.0, min=0.0, help=STREAM_RATE_HELP, show_default="0: no limit"
    ),
    stream_burst: int = typer.Option(60, min=1, help=STREAM_BURST_HELP),
    batch_wait_ms: float = typer.Option(3.0, min=0.0, max=100.0, help="As 'bsoc serve'."),
    retention_hours: float = typer.Option(
        24.0, min=0.01, help="How long the log keeps samples (when it is made)."
    ),
    model_threads: int = typer.Option(1, min=1, help="Threads for the model's maths."),
    nats_user: str | None = typer.Option(None, "--nats-user", help=USER_HELP),
    nats_password_file: Path | None = typer.Option(
        None, "--nats-password-file", help=PASSWORD_FILE_HELP
    ),
    worker_id: str = typer.Option("", "--id", help="Worker name (default: host-pid-random)."),
    log_level: str = typer.Option("warning", help="Logging level."),
) -> None:
    """Own partitions of the log, step their streams, checkpoint them, take over dead peers'."""
    import logging

    from bsoc.fleet.context import WorkerConfig
    from bsoc.fleet.worker import Worker
    from bsoc.serve.service import describe_model

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    target = _target(nats, nats_user, nats_password_file)
    estimator = load_served_model(model, gap_policy, model_threads)
    config = WorkerConfig(
        target=target,
        partitions=partitions,
        replicas=replicas,
        lease_s=lease_seconds,
        checkpoint_interval_s=checkpoint_interval,
        max_in_flight=max_in_flight,
        max_worker_in_flight=max_worker_in_flight,
        gap_limit_s=gap_limit,
        gap_policy=gap_policy,
        max_streams_per_partition=max_streams_per_partition,
        max_stream_rate_hz=max_stream_rate,
        stream_burst=stream_burst,
        batch_wait_s=batch_wait_ms / 1e3,
        retention_s=retention_hours * 3600.0,
        worker_id=worker_id,
    )
    fleet_worker = Worker(estimator, describe_model(estimator, model), config)

    async def work() -> None:
        ready = asyncio.Event()
        running = asyncio.create_task(fleet_worker.run(ready))
        await asyncio.wait([running, asyncio.create_task(ready.wait())],
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if ready.is_set():
            err_console.print(f"worker {fleet_worker.id}: {fleet_worker.model['name']} on "
                              f"{nats}, {partitions} partitions", highlight=False)  # fmt: skip
        await running

    _run_until_signal(work, fleet_worker.request_stop)


@fleet_app.command("gateway")
def gateway(
    nats: str = typer.Option("nats://127.0.0.1:4222", "--nats", help=NATS_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; non-loopback needs a key."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    api_key_file: Path | None = typer.Option(
        None, "--api-key-file", help="As 'bsoc serve --api-key-file'.", show_default=False
    ),
    api_key: str | None = typer.Option(None, "--api-key", help=KEY_OPTION_HELP, show_default=False),
    timeout: float = typer.Option(
        10.0, min=0.1, help="Seconds to wait for a worker's answer before 504."
    ),
    max_body_bytes: int = typer.Option(1 << 20, min=1024, help="As 'bsoc serve'."),
    nats_user: str | None = typer.Option(None, "--nats-user", help=USER_HELP),
    nats_password_file: Path | None = typer.Option(
        None, "--nats-password-file", help=PASSWORD_FILE_HELP
    ),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """The 'bsoc serve' HTTP/WebSocket API (and dashboard) in front of the fleet's log."""
    import uvicorn

    from bsoc.fleet.gateway import FleetGateway, GatewayConfig
    from bsoc.serve.app import build_app
    from bsoc.serve.auth import check_bind

    key = api_key_from_options(api_key, api_key_file)
    check_bind(host, key)
    target = _target(nats, nats_user, nats_password_file)
    config = GatewayConfig(target=target, api_key=key, max_body_bytes=max_body_bytes,
                           timeout_s=timeout)  # fmt: skip
    asyncio.run(_probe(config))
    service = FleetGateway(config)
    app = build_app(service, description="Served by a bsoc fleet: samples go through its log.")
    err_console.print(f"gateway on http://{host}:{port} in front of {nats}", highlight=False)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level,
                       ws_max_size=max_body_bytes, timeout_graceful_shutdown=10)  # fmt: skip
    )
    server.run()
    if not server.started:
        raise ConfigError(
            f"the gateway on {host}:{port} did not start (see the log above)",
            remedy="check the port is free",
        )


async def _probe(config) -> None:
    """Refuse to start (one line) when no fleet answers: no NATS, or no worker ever started."""
    from bsoc.fleet.gateway import FleetGateway

    probe = FleetGateway(config)
    await probe.start()
    await probe.nc.close()


@fleet_app.command("up")
def up(
    model: Path = typer.Option(..., "--model", help="Model folder the workers serve."),
    workers: int = typer.Option(2, min=1, max=64, help="Worker processes."),
    nats_nodes: int = typer.Option(
        1, min=1, max=5, help="nats-server processes (3: a JetStream cluster, replicas 3)."
    ),
    partitions: int = typer.Option(8, min=1, max=1024, help="Partitions of the log."),
    gateway_port: int = typer.Option(8000, min=1, max=65535, help="Port of the gateway."),
    no_gateway: bool = typer.Option(False, "--no-gateway", help="Start no gateway."),
    folder: Path = typer.Option(
        Path("fleet-state"), "--dir", help="Folder for the NATS stores, credentials and logs."
    ),
    auth: bool = typer.Option(
        False, "--auth", help="Passwords for workers, gateway and clients (files in DIR/credentials)."
    ),
    max_stream_rate: float = typer.Option(
        0.0, min=0.0, help=STREAM_RATE_HELP, show_default="0: no limit"
    ),
    stream_burst: int = typer.Option(60, min=1, help=STREAM_BURST_HELP),
) -> None:
    """A local fleet on loopback (NATS nodes, workers, gateway) until Ctrl-C or SIGTERM."""
    import threading

    from bsoc.fleet.cluster import LocalFleet

    fleet = LocalFleet(
        model=model,
        root=folder,
        workers=workers,
        nats_nodes=nats_nodes,
        partitions=partitions,
        gateway_port=None if no_gateway else gateway_port,
        auth=auth,
        worker_options=["--max-stream-rate", f"{max_stream_rate:g}",
                        "--stream-burst", str(stream_burst)],  # fmt: skip
    )
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        fleet.start()
        login = f"  (user 'client', password in {folder / 'credentials' / 'client'})" if auth else ""
        # one unwrapped line each, printed literally: the URLs and paths are to be copied
        plain = {"highlight": False, "markup": False, "soft_wrap": True}
        err_console.print(f"fleet up: NATS {fleet.nats.url}{login}", **plain)
        if fleet.gateway_url:
            err_console.print(f"gateway {fleet.gateway_url}  dashboard /  docs /docs", **plain)
        err_console.print(f"{workers} workers, logs in {folder}; Ctrl-C stops", **plain)
        while not stopped.wait(1.0):
            fleet.check_children()
    finally:
        fleet.stop()


@fleet_app.command("status")
def status(
    nats: str = typer.Option("nats://127.0.0.1:4222", "--nats", help=NATS_HELP),
    nats_user: str | None = typer.Option(None, "--nats-user", help=USER_HELP),
    nats_password_file: Path | None = typer.Option(
        None, "--nats-password-file", help=PASSWORD_FILE_HELP
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the status as JSON on stdout."),
) -> None:
    """Workers, the partitions each owns, streams, lag and checkpoint age."""
    report = asyncio.run(_status(_target(nats, nats_user, nats_password_file)))
    if json_output:
        emit_json(report)
        return
    from rich.table import Table

    table = Table(title=f"fleet at {nats}: {report['partitions']} partitions")
    for column in ("worker", "partition", "streams", "applied seq", "lag", "checkpoint age"):
        table.add_column(column)
    for worker_report in report["workers"]:
        for p, v in worker_report["partitions"].items():
            table.add_row(worker_report["worker"], p, str(v["streams"]), str(v["applied_seq"]),
                          str(v["lag"]), f"{v['checkpoint_age_s']:.1f} s")  # fmt: skip
    out_console.print(table)
    if report["without_owner"]:
        err_console.print(f"[yellow]partitions without a live worker:[/] {report['without_owner']}")


async def _status(target) -> dict:
    from bsoc.fleet.connection import connect
    from bsoc.fleet.queries import ask_fleet
    from bsoc.fleet.log import read_settings

    nc = await connect(target, "bsoc-fleet-status")
    try:
        settings = await read_settings(nc.jetstream(), target.url)
    finally:
        await nc.close()
    answers, missing = await ask_fleet(target, settings.partitions)
    return {
        "partitions": settings.partitions,
        "model": settings.model,
        "workers": sorted(answers, key=lambda a: a["worker"]),
        "without_owner": missing,
    }


def register(app: typer.Typer) -> None:
    """Add the ``fleet`` group to the root CLI."""
    app.add_typer(fleet_app, name="fleet")
