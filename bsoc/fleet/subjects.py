"""Names in the log, and the partition every stream belongs to.

Cells publish to ``bsoc.samples.<token>``; the samples stream stores each message as
``bsoc.part.<p>.<token>`` where ``p = partition(N, token)`` is computed by the NATS server
itself (a subject transform on the stream), so every publisher, whatever its language,
lands a stream's samples in the same partition, and each partition has one owner at a time.
:func:`partition_of` is the same function (FNV-1a of the token, modulo N) for the workers
and the gateway, which need to know where a stream lives without asking the server.

A stream id may hold dots (``pack1.cell3``), which would split a NATS subject token, so the
token is the id with each ``.`` written as ``~`` (a character ids never contain).
"""

from __future__ import annotations

SAMPLES_STREAM = "BSOC_SAMPLES"
DEAD_STREAM = "BSOC_DEAD"
LEASES_BUCKET = "bsoc_leases"
CHECKPOINTS_BUCKET = "bsoc_checkpoints"

SAMPLES_PREFIX = "bsoc.samples"
SAMPLES_IN = f"{SAMPLES_PREFIX}.*"
SOC_OUT = "bsoc.soc"
DEAD_LETTER = "bsoc.dead"
QUERY = "bsoc.query"

# Headers a sample message may carry.
REPLY_HEADER = "Bsoc-Reply"  # subject the worker also sends its answer to (gateway, replay)
OP_HEADER = "Bsoc-Op"  # "delete" forgets the stream, in log order
DELETE_OP = "delete"

_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619


def token(stream_id: str) -> str:
    """The subject token of a stream id."""
    return stream_id.replace(".", "~")


def stream_id_of(subject_token: str) -> str:
    return subject_token.replace("~", ".")


def samples_subject(stream_id: str) -> str:
    return f"{SAMPLES_PREFIX}.{token(stream_id)}"


def partition_subjects(partition: int) -> str:
    """The stored subjects of one partition (a consumer's filter)."""
    return f"bsoc.part.{partition}.*"


def soc_subject(stream_id: str) -> str:
    return f"{SOC_OUT}.{token(stream_id)}"


def dead_subject(stream_id: str) -> str:
    return f"{DEAD_LETTER}.{token(stream_id)}"


def partition_transform(partitions: int) -> tuple[str, str]:
    """(source, destination) of the stream's subject transform for ``partitions``."""
    return SAMPLES_IN, f"bsoc.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition NATS's ``partition(N, 1)`` puts a stream in: FNV-1a (32 bit) of its token."""
    value = _FNV_OFFSET
    for byte in token(stream_id).encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value % partitions


def stream_of_stored(subject: str) -> tuple[int, str]:
    """(partition, stream id) of a stored subject ``bsoc.part.<p>.<token>``."""
    _, _, partition, subject_token = subject.split(".", 3)
    return int(partition), stream_id_of(subject_token)
