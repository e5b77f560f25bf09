"""Connecting to NATS: one place for the URL, credentials and the one-line failures.

Credentials are a user name and a password read from a file (``--nats-password-file``, or
``$BSOC_NATS_PASSWORD``): a password in the URL or on the command line is readable by every
user of the machine (``ps``), as ``bsoc serve`` says of API keys.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsoc.fleet.log import FleetError

PASSWORD_ENV = "BSOC_NATS_PASSWORD"
CONNECT_TIMEOUT_S = 5.0
FIRST_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NatsTarget:
    """Where the fleet's NATS is and who this process is there."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


def nats_target(url: str, user: str | None, password_file: Path | None) -> NatsTarget:
    """The target from command-line options (the password from the file or the environment)."""
    password = None
    if password_file is not None:
        try:
            password = Path(password_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise FleetError(
                f"cannot read the NATS password file {password_file} "
                f"({getattr(error, 'strerror', None) or error})",
                remedy="give a readable text file holding only the password",
            ) from None
    elif user is not None:
        password = os.environ.get(PASSWORD_ENV)
    if user is not None and not password:
        raise FleetError(
            f"no password for NATS user {user!r}",
            remedy=f"pass --nats-password-file FILE or set {PASSWORD_ENV}",
        )
    if not url.startswith(("nats://", "tls://")):
        raise FleetError(f"--nats {url!r} must start with nats:// or tls://",
                         remedy="e.g. --nats nats://127.0.0.1:4222")  # fmt: skip
    return NatsTarget(url=url, user=user, password=password)


async def connect(target: NatsTarget, name: str, **options: Any) -> Any:
    """A connected nats-py client that reconnects by itself; FleetError if none answers now.

    Once connected it reconnects for ever; the first connection is bounded (nats-py's own
    retry of it never ends when reconnects are unlimited) and a refused login ends it at once.
    """
    from nats.aio.client import Client

    refused = asyncio.get_running_loop().create_future()
    unreachable = asyncio.get_running_loop().create_future()
    failures: list[Exception] = []

    async def on_error(error: Exception) -> None:  # reconnects are expected and retried
        if unreachable.done() or refused.done():
            return
        if "authorization" in str(error).lower():
            refused.set_result(error)
        failures.append(error)
        if len(failures) >= 3 * len(target.servers()):
            unreachable.set_result(error)

    client = Client()
    connecting = asyncio.ensure_future(
        client.connect(
            servers=target.servers(),
            user=target.user,
            password=target.password,
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            **options,
        )
    )
    await asyncio.wait([connecting, refused, unreachable], timeout=FIRST_CONNECT_TIMEOUT_S,
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    if connecting.done() and connecting.exception() is None:
        failures.clear()  # from now on failures are reconnects, retried for ever
        return client
    connecting.cancel()
    await asyncio.wait([connecting])
    await client.close()
    if refused.done():
        raise FleetError(
            f"the NATS server at {target.url} refused the login of {target.user or 'an anonymous client'}",
            remedy="check --nats-user and the password file",
        )
    failure = failures[-1] if failures else None
    why = f"{type(failure).__name__}: {failure}" if failure else (
        f"no answer within {FIRST_CONNECT_TIMEOUT_S:g} s")  # fmt: skip
    raise FleetError(
        f"no NATS server answers at {target.url} ({why})",
        remedy="start one (e.g. 'bsoc fleet up') or give its address with --nats",
    )
