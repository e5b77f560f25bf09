"""One exception type per kind of failure.

The CLI and the service catch :class:`BsocError` at their edge and show
``str(error)`` as a one-line message; every message says what is wrong *and*
what to do about it, so no user ever needs a stack trace.
"""

from __future__ import annotations


class BsocError(Exception):
    """Base class: a failure we expected and can explain to the user."""

    exit_code = 1

    def __init__(self, message: str, remedy: str | None = None) -> None:
        self.message = message
        self.remedy = remedy
        super().__init__(message if remedy is None else f"{message} -> {remedy}")


class DataValidationError(BsocError):
    """Input data breaks the canonical schema (missing column, NaN, units, ...)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        remedy: str | None = None,
    ) -> None:
        self.file, self.row, self.column = file, row, column
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"column '{column}'" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message, remedy)
        self.message = message  # without the location, so it can be re-pointed at the source


class SocReferenceError(DataValidationError):
    """A cycle holds no point where its SOC is known (no full charge), so its charge count
    cannot become SOC. A folder ingest leaves such files out (each named) unless strict."""


class DatasetNotFoundError(BsocError):
    """A dataset folder or its manifest is missing."""

    exit_code = 2


class ModelFileError(BsocError):
    """A model folder is missing, incomplete or of an unknown kind."""

    exit_code = 2


class OverwriteRefusedError(BsocError):
    """Writing would replace a user's data or model and ``--force`` was not given."""

    exit_code = 2


class UnsafeOutputError(BsocError):
    """Writing the output would bury an input or replace a file bsoc did not write."""

    exit_code = 2


class OutputNotWritableError(BsocError):
    """The output folder cannot be written (permissions, read-only disk, no space)."""

    exit_code = 2


class ConfigError(BsocError):
    """A command-line option or configuration value is out of range or inconsistent."""

    exit_code = 2


class SimulationError(BsocError):
    """The physics simulation failed to produce a usable cycle."""
