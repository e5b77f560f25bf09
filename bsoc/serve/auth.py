"""API keys for writes, and the rule that an open service stays on the loopback interface.

A key is sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` and compared in
constant time (``hmac.compare_digest``), so response timing does not leak how much of a
guess was right. Without a configured key every write is accepted, which is only safe when
nobody else can connect: :func:`check_bind` refuses any non-loopback address then.

The key reaches the service from a file or the environment: a command-line argument is
readable by every user of the machine (``ps``, ``/proc/PID/cmdline``).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from bsoc.errors import ConfigError

API_KEY_ENV = "BSOC_API_KEY"
MIN_KEY_LENGTH = 16


def read_key_file(path: Path) -> str:
    """The key in ``path``: its text without surrounding whitespace (an editor's final newline)."""
    try:
        key = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"cannot read the API key file {path} ({getattr(error, 'strerror', None) or error})",
            remedy="give a readable text file holding only the key",
        ) from None
    if not key:
        raise ConfigError(f"the API key file {path} is empty", remedy="write the key into it")
    return key


def resolve_api_key(option: str | None, key_file: Path | None = None) -> str | None:
    """The key from ``--api-key``, ``--api-key-file`` or else ``BSOC_API_KEY``.

    Refuses two explicit sources at once (which one would win is a guess) and keys too
    short to be secret.
    """
    if option and key_file is not None:
        raise ConfigError(
            "both --api-key and --api-key-file are given", remedy="pass only --api-key-file"
        )
    if key_file is not None:
        key: str | None = read_key_file(key_file)
    else:
        key = option or os.environ.get(API_KEY_ENV) or None
    if key is not None and len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"the API key is {len(key)} characters; at least {MIN_KEY_LENGTH} are required",
            remedy="generate one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'",
        )
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose an unauthenticated service beyond this machine."""
    if api_key is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could "
            "write to every stream",
            remedy=f"pass --api-key-file FILE (or set {API_KEY_ENV}), or bind to 127.0.0.1",
        )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent, from either accepted header."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


def key_matches(expected: str | None, headers: Mapping[str, str]) -> bool:
    """True when no key is configured, or the presented key equals it (constant time)."""
    if expected is None:
        return True
    presented = presented_key(headers)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
