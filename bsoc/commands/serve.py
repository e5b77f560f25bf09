"""``bsoc serve`` (the live SOC service) and ``bsoc replay`` (its demo and load client).

Heavy imports (uvicorn, the model's torch) happen inside the commands, so ``bsoc --help``
stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from bsoc.console import emit_json, err_console, out_console, progress
from bsoc.errors import ConfigError

DEFAULT_SNAPSHOT_DIR = Path("serve-state")
KEY_OPTION_HELP = (
    "The API key itself. Avoid: any user of this machine can read it with 'ps'; "
    "prefer --api-key-file or $BSOC_API_KEY."
)


def api_key_from_options(api_key: str | None, api_key_file: Path | None) -> str | None:
    """The key from --api-key, --api-key-file or $BSOC_API_KEY, warning about the first."""
    from bsoc.serve.auth import resolve_api_key

    if api_key:
        err_console.print(
            "[yellow]warning:[/] --api-key is visible to every user of this machine (ps, "
            "shell history); pass --api-key-file FILE or set BSOC_API_KEY instead",
            highlight=False,
            soft_wrap=True,
        )
    return resolve_api_key(api_key, api_key_file)


def load_served_model(model: Path, gap_policy: str, model_threads: int):
    """The estimator ``bsoc serve`` and ``bsoc fleet worker`` step, after checking the options
    they share (the gap policy) and pinning the model's maths to ``model_threads``."""
    from bsoc.estimator import load_estimator
    from bsoc.serve.streams import GAP_POLICIES

    if gap_policy not in GAP_POLICIES:
        raise ConfigError(
            f"unknown --gap-policy {gap_policy!r}", remedy=f"use one of {GAP_POLICIES}"
        )
    estimator = load_estimator(model)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(model_threads)
    return estimator


def serve(
    model: Path = typer.Option(..., "--model", help="Model folder (any kind: lstm, ekf, ...)."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on; non-loopback needs an API key."
    ),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    api_key_file: Path | None = typer.Option(
        None,
        "--api-key-file",
        help="File holding the key that writes and stream reads need (the safe way to pass "
        "it; or set $BSOC_API_KEY). Clients send 'Authorization: Bearer KEY' or "
        "'X-API-Key: KEY'. Without a key writes are open and only loopback binds are allowed.",
        show_default=False,
    ),
    api_key: str | None = typer.Option(None, "--api-key", help=KEY_OPTION_HELP, show_default=False),
    snapshot: Path | None = typer.Option(
        None,
        help="Stream-state snapshot file, restored on start, written periodically and on "
        "shutdown (default: serve-state/<model folder name>.npz). A failed write is retried "
        "at the next period and shown in /healthz and /metrics.",
        show_default=False,
    ),
    discard_bad_snapshot: bool = typer.Option(
        False,
        "--discard-bad-snapshot",
        help="If the snapshot is damaged, rename it to <name>.damaged-<time> and start with "
        "no streams (without this flag a damaged snapshot stops the start-up).",
    ),
    no_snapshot: bool = typer.Option(
        False, "--no-snapshot", help="Keep stream states in memory only (lost on restart)."
    ),
    snapshot_interval: float = typer.Option(
        30.0, min=0.0, help="Seconds between periodic snapshots (0 = only on shutdown)."
    ),
    gap_limit: float = typer.Option(
        300.0, min=0.0, help="Seconds between samples beyond which a stream has a gap."
    ),
    gap_policy: str = typer.Option(
        "reset",
        help="On a gap: 'reset' restarts the stream from the model's initial state, 'flag' "
        "keeps its state; both mark the estimate gap=true.",
    ),
    max_body_bytes: int = typer.Option(
        1 << 20, min=1024, help="Largest HTTP body or WebSocket message accepted (bytes)."
    ),
    max_streams: int = typer.Option(20_000, min=1, help="Most streams held at once."),
    batch_wait_ms: float = typer.Option(
        3.0, min=0.0, max=100.0, help="Longest a sample waits for others to share its model step."
    ),
    model_threads: int = typer.Option(
        1, min=1, help="Threads for the model's maths (torch models)."
    ),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Serve live SOC estimates over HTTP and WebSocket, with a dashboard at /."""
    import uvicorn

    from bsoc.serve.app import create_app
    from bsoc.serve.auth import check_bind
    from bsoc.serve.service import ServeConfig, describe_model

    key = api_key_from_options(api_key, api_key_file)
    check_bind(host, key)
    estimator = load_served_model(model, gap_policy, model_threads)
    if no_snapshot:
        snapshot = None
    elif snapshot is None:
        snapshot = DEFAULT_SNAPSHOT_DIR / f"{model.resolve().name}.npz"
    config = ServeConfig(
        api_key=key,
        snapshot_path=snapshot,
        snapshot_interval_s=snapshot_interval,
        discard_bad_snapshot=discard_bad_snapshot,
        gap_limit_s=gap_limit,
        gap_policy=gap_policy,
        max_body_bytes=max_body_bytes,
        max_streams=max_streams,
        batch_wait_s=batch_wait_ms / 1e3,
    )
    info = describe_model(estimator, model)
    app = create_app(estimator, config, info)
    service = app.state.service
    if service.set_aside_to is not None:
        err_console.print(
            f"[yellow]warning:[/] the damaged snapshot was renamed to {service.set_aside_to}",
            highlight=False,
            soft_wrap=True,
        )
    err_console.print(
        f"serving [bold]{info['name']}[/] ({info['kind']}) on http://{host}:{port}  "
        f"dashboard /  docs /docs  writes {'need the API key' if key else 'are open (loopback)'}"
        + (f"  snapshot {snapshot} ({service.restored} streams restored)" if snapshot else ""),
        highlight=False,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            ws_max_size=max_body_bytes,
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    if not server.started:
        raise ConfigError(
            f"the service on {host}:{port} did not start (see the log above)",
            remedy="check the port is free and the model loads",
        )


def replay(
    dataset: Path = typer.Argument(..., help="Dataset folder (from 'bsoc data ...')."),
    url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of a running 'bsoc serve'."),
    streams: int = typer.Option(1, min=1, max=100_000, help="Concurrent streams (cells)."),
    rate: float = typer.Option(
        1.0, min=0.0, help="Requests per second per stream; 0 = as fast as answers come."
    ),
    split: str = typer.Option("test", help="Which cycles to replay: train, val or test."),
    max_seconds: float | None = typer.Option(
        None, min=0.1, help="Stop after this many seconds (default: when the cycles end)."
    ),
    batch: int = typer.Option(1, min=1, max=3600, help="Samples per request."),
    transport: str = typer.Option("ws", help="'ws' (one WebSocket per stream) or 'http'."),
    prefix: str = typer.Option(
        "", help="Stream id prefix (default: replay-<random>, so runs never collide)."
    ),
    api_key_file: Path | None = typer.Option(
        None,
        "--api-key-file",
        help="File holding the service's key (the safe way to pass it; or set $BSOC_API_KEY).",
        show_default=False,
    ),
    api_key: str | None = typer.Option(None, "--api-key", help=KEY_OPTION_HELP, show_default=False),
    nats: str | None = typer.Option(
        None,
        "--nats",
        help="Publish straight into a bsoc fleet's log at this NATS URL instead of --url "
        "(see 'bsoc fleet').",
        show_default=False,
    ),
    nats_user: str | None = typer.Option(None, "--nats-user", help="NATS user name."),
    nats_password_file: Path | None = typer.Option(
        None, "--nats-password-file", help="File holding the NATS user's password."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Stream a dataset's cycles to a running service (or a fleet's log); report SOC error
    and latency."""
    from bsoc.replay import ReplayConfig, load_cycles, replay_failure
    from bsoc.replay import replay as run_replay

    cycles = load_cycles(dataset, split)
    login = None
    if nats is not None:
        from bsoc.fleet.connection import nats_target

        login = nats_target(nats, nats_user, nats_password_file)
    config = ReplayConfig(
        url=nats or url,
        streams=streams,
        rate_hz=rate,
        batch=batch,
        max_seconds=max_seconds,
        api_key=api_key_from_options(api_key, api_key_file),
        prefix=prefix,
        transport="nats" if nats else transport,
        nats_user=login.user if login else None,
        nats_password=login.password if login else None,
    )
    bar = progress(transient=json_output)
    task = bar.add_task(f"replaying {streams} streams", total=None, info="")

    def on_progress(sent: int, planned: int) -> None:
        bar.start()  # on the first report, so an up-front refusal prints only its one line
        bar.update(task, completed=sent, total=planned, info=f"{sent} samples sent")

    try:
        report = run_replay(cycles, config, on_progress)
    finally:
        if bar.live.is_started:
            bar.stop()
    report["dataset"] = str(dataset)
    report["split"] = split
    if json_output:
        emit_json(report)
    else:
        _print_report(report)
    failure = replay_failure(report)
    if failure is not None:
        raise failure


def _print_report(report: dict) -> None:
    from rich.table import Table

    latency, error = report["latency_ms"], report["soc_error_pct"]
    table = Table(title=f"replay of {report['dataset']} ({report['split']}) to {report['url']}")
    table.add_column("measure")
    table.add_column("value", justify="right")

    def fmt(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.3f}{unit}"

    rows = [
        ("streams x rate", f"{report['streams']} x {report['rate_hz']} Hz x {report['batch']}"),
        ("samples ok / sent", f"{report['samples_ok']} / {report['samples_sent']}"),
        ("errors", f"{report['error_count']} {report['errors'] or ''}"),
        ("sustained samples/s", f"{report['samples_per_s']:.1f}"),
        ("latency p50 / p99 / max", " / ".join(fmt(latency[k], " ms") for k in ("p50", "p99", "max"))),
        ("served SOC RMSE / MAE / max", " / ".join(fmt(error[k], " %") for k in ("rmse", "mae", "max_abs"))),
        ("elapsed", f"{report['elapsed_s']:.1f} s"),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    out_console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``replay`` to the root CLI."""
    app.command("serve")(serve)
    app.command("replay")(replay)
