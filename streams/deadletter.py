"""Dead letters: the ``<topic>.dlq`` envelope of a rejected input record, and its delivery.

Why one module: the member path (``kagoflow.worker.processor``) and the catalog agent both park bad records,
and a dead letter must never become the next poison. A rejected record can be as large as the broker allows
(~1 MB); a copy in base64 plus text is ~2.3× that and used to exceed the producer's request size, so the
``MessageSizeTooLargeError`` killed the worker — on every replay. The envelope built here is bounded by
construction (``MAX_ENVELOPE_BYTES``): the copy of the value is cut at ``MAX_COPY_BYTES`` (the largest record
the contract accepts, so any record rejected for another reason is kept whole), the key at ``MAX_KEY_BYTES``,
the reason at ``MAX_REASON_CHARS``; ``size`` and ``sha256`` always describe the whole original value.

``deliver`` produces an envelope and waits until Kafka has it, retrying (never dropping) on errors: the
caller acks the original record only afterwards, so a record is never acknowledged before its copy is in
the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from kagoflow.streams.contract import CONTRACT_VERSION, MAX_RECORD_BYTES
from kagoflow.streams.topics import dlq

log = logging.getLogger(__name__)

MAX_COPY_BYTES: Final = MAX_RECORD_BYTES
"""Bytes of the rejected value kept in the envelope."""
MAX_KEY_BYTES: Final = 1024
MAX_REASON_CHARS: Final = 1024
MAX_ENVELOPE_BYTES: Final = 512 * 1024
"""Bound of an envelope: half the producer's default request size (1 MiB) and the broker's message size."""
RETRY_FIRST_S: Final = 0.2
RETRY_MAX_S: Final = 5.0


def _copy(data: bytes, limit: int, prefix: str) -> dict[str, Any]:
    """Base64 and (when it is UTF-8) text of the first ``limit`` bytes of ``data``, and whether it was cut."""
    cut = data[:limit]
    try:
        text: str | None = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a cut inside a multi-byte character still leaves the text before it readable
        text = cut[:exc.start].decode("utf-8") if len(cut) < len(data) and exc.start >= len(cut) - 3 else None
    return {f"{prefix}_base64": base64.b64encode(cut).decode("ascii"), f"{prefix}_text": text,
            f"{prefix}_truncated": len(cut) < len(data)}


def envelope(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str, *,
             at_ms: int | None = None, copy: bool = True) -> bytes:
    """The value produced to ``<topic>.dlq`` (at most ``MAX_ENVELOPE_BYTES``).

    Fields: where the record came from (``topic``, ``partition``, ``offset``), ``reason``, ``at`` (when it was
    parked), the original value's ``size`` and ``sha256`` (null for a tombstone), a copy of its first
    ``MAX_COPY_BYTES`` (``raw_base64``, ``raw_text`` when UTF-8, ``raw_truncated``), and the same for the Kafka
    key (``key_*``, null when the record had none). ``copy=False`` leaves the copies out (the fallback when
    even a bounded envelope cannot be produced).
    """
    at = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS - 3] + "..."
    raw = None if value is None else bytes(value)
    doc: dict[str, Any] = {
        "contract": CONTRACT_VERSION,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "reason": reason,
        "at": datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds"),
        "size": None if raw is None else len(raw),
        "sha256": None if raw is None else hashlib.sha256(raw).hexdigest(),
        "raw_base64": None, "raw_text": None, "raw_truncated": False,
        "key_base64": None, "key_text": None, "key_truncated": False,
    }
    if copy and raw is not None:
        doc.update(_copy(raw, MAX_COPY_BYTES, "raw"))
    if copy and key is not None:
        doc.update(_copy(bytes(key), MAX_KEY_BYTES, "key"))
    out = orjson.dumps(doc)
    if len(out) > MAX_ENVELOPE_BYTES:
        # only a text copy full of escaped characters (``\u0001`` is 6 bytes per input byte) gets here:
        # the base64 copy alone is within bounds, so drop the texts
        doc["raw_text"] = doc["key_text"] = None
        out = orjson.dumps(doc)
    return out


class Producer(Protocol):
    """What ``deliver`` needs of an outbox (``kagoflow.adapters.kafka_outbox.KafkaOutbox``)."""

    async def send(self, topic: str, *, key: bytes | None, value: bytes,
                   partition: int | None = None) -> Awaitable[Any]: ...


_REFUSED: Final = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, ValueError)
"""Errors that are about the record itself: retrying the same bytes cannot help (``ValueError``: an outbox
that cannot fit it into a batch)."""


async def deliver(producer: Producer, topic: str, value: bytes, *, fallback: Callable[[], bytes],
                  on_retry: Callable[[BaseException], None] = lambda exc: None) -> None:
    """Produce ``value`` to ``topic`` and wait until Kafka has it; never raises (except cancellation).

    Any error is retried with backoff, for as long as it takes (the caller's record stays unacked meanwhile,
    so nothing is lost if the worker stops). When the error is about the record (a broker configured with a
    smaller message size refuses it), the retries send ``fallback()`` — the envelope without the copies.
    """
    delay = RETRY_FIRST_S
    degraded = False
    while True:
        try:
            future = await producer.send(topic, key=None, value=value)
            await future
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_retry(exc)
            if not degraded and isinstance(exc, _REFUSED):
                log.error("dead letter to %s refused (%s: %s); producing it without the copy of the record",
                          topic, type(exc).__name__, exc)
                value, degraded = fallback(), True
                continue
            log.warning("dead letter to %s failed (%s: %s); retrying in %.1fs", topic, type(exc).__name__, exc,
                        delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def park(producer: Producer, topic: str, partition: int, offset: int, key: bytes | None,
               value: bytes | None, reason: str, *,
               on_retry: Callable[[BaseException], None] = lambda exc: None) -> None:
    """Put one rejected record of input ``topic`` into ``<topic>.dlq``; returns once Kafka has it."""
    at = time.time_ns() // 1_000_000
    full = envelope(topic, partition, offset, key, value, reason, at_ms=at)
    await deliver(producer, dlq(topic), full, on_retry=on_retry,
                  fallback=lambda: envelope(topic, partition, offset, key, value, reason, at_ms=at, copy=False))
