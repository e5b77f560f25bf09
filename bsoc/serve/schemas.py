"""The service's wire format: pydantic models for requests, responses and errors.

Validation lives here, at the boundary, so the model never sees a sample that the
canonical schema (:mod:`bsoc.data.schema`) would reject: finite numbers only, no extra or
missing fields, no strings or booleans passed off as numbers, and values inside the same
physical ranges the dataset validator uses (volts of one cell, amperes, degrees Celsius).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bsoc.data.schema import MAX_CURRENT_C_RATE, TEMPERATURE_RANGE_C, VOLTAGE_RANGE_V
from bsoc.serve.errors import InvalidStreamId

# The dataset validator's default current limit (40 C of a 5 Ah cell): beyond it the
# number is almost surely milliamperes. The service knows no capacity, so it uses the default.
MAX_ABS_CURRENT_A = MAX_CURRENT_C_RATE * 5.0
# One hour of 1 Hz samples in one request; larger uploads must be split.
MAX_SAMPLES_PER_REQUEST = 3600
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


class Sample(BaseModel):
    """One measurement of one cell (discharge current negative)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    time_s: float = Field(
        allow_inf_nan=False, ge=0.0, description="Seconds; strictly increasing per stream."
    )
    voltage_v: float = Field(
        allow_inf_nan=False,
        ge=VOLTAGE_RANGE_V[0],
        le=VOLTAGE_RANGE_V[1],
        description="Terminal voltage of one cell, volts.",
    )
    current_a: float = Field(
        allow_inf_nan=False,
        ge=-MAX_ABS_CURRENT_A,
        le=MAX_ABS_CURRENT_A,
        description="Amperes, discharge negative.",
    )
    temperature_c: float = Field(
        allow_inf_nan=False,
        ge=TEMPERATURE_RANGE_C[0],
        le=TEMPERATURE_RANGE_C[1],
        description="Cell temperature, degrees Celsius.",
    )

    def row(self) -> tuple[float, float, float, float]:
        return (self.time_s, self.voltage_v, self.current_a, self.temperature_c)


SampleList = Annotated[list[Sample], Field(min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)]


class Estimate(BaseModel):
    """SOC for one accepted sample."""

    time_s: float
    soc: float = Field(description="State of charge as a fraction 0..1.")
    soc_std: float | None = Field(
        None, description="The estimate's standard deviation (fraction) for a model that has "
        "one (EKF, fusion); null for the others.")
    gap: bool = Field(
        False,
        description="True when the time since the stream's previous sample exceeded the gap "
        "limit; with gap policy 'reset' the stream restarted from the model's initial state "
        "at this sample, with 'flag' it carried on and only marks the estimate.",
    )


class SamplesResponse(BaseModel):
    stream_id: str
    estimates: list[Estimate]


class History(BaseModel):
    """The stream's most recent accepted samples and estimates (oldest first)."""

    time_s: list[float]
    soc: list[float]
    voltage_v: list[float]
    current_a: list[float]
    temperature_c: list[float]
    soc_std: list[float] | None = Field(
        None, description="Standard deviation of each estimate; null for a model without one.")


class StreamStatus(BaseModel):
    stream_id: str
    samples: int = Field(description="Samples accepted since the stream was created.")
    gaps: int = Field(description="Gaps longer than the limit seen so far.")
    last_time_s: float
    soc: float
    soc_std: float | None = Field(None, description="The latest estimate's standard deviation, "
                                  "for a model that has one.")
    last_sample: Sample
    updated_unix_s: float
    history: History | None = None


class StreamSummary(BaseModel):
    stream_id: str
    samples: int
    last_time_s: float
    soc: float
    soc_std: float | None = None


class StreamList(BaseModel):
    count: int
    streams: list[StreamSummary]


class ModelInfo(BaseModel):
    name: str
    kind: str
    state_size: int
    fingerprint: str


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        "ok", description="'degraded' while the service answers but cannot keep a promise."
    )
    reason: str | None = Field(
        None, description="Why it is degraded, e.g. the last snapshot write failed."
    )
    version: str
    model: ModelInfo
    streams: int
    uptime_s: float
    gap_limit_s: float
    gap_policy: str


class ErrorResponse(BaseModel):
    """Every rejection: a machine-readable kind and a sentence saying what to change."""

    error: str = Field(description="Kind: validation, out_of_order, payload_too_large, ...")
    reason: str
    details: list[dict] | None = None


def check_stream_id(stream_id: str) -> str:
    """The id itself, if the whole of it is valid (``match`` would accept a trailing newline)."""
    if not _STREAM_ID.fullmatch(stream_id):
        raise InvalidStreamId(
            f"stream id {stream_id[:140]!r} is invalid: use 1-128 characters "
            "from letters, digits and . _ : - (starting with a letter or digit)",
        )
    return stream_id


def describe_validation_errors(errors: list[dict]) -> str:
    """One sentence from pydantic's error list: where (e.g. ``samples[3].voltage_v``) and what."""
    parts = []
    for error in errors[:3]:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        where = "samples" if location and location[0].isdigit() else ""
        for part in location:
            where += f"[{part}]" if part.isdigit() else (f".{part}" if where else part)
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
