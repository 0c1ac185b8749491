"""The Faust worker's side of the member engine process (``kagoflow.worker.engine``).

The member agent hands every record to ``submit`` (no parsing here), which batches them into frames;
``apply`` — called while a record of partition ``p`` is current, as Faust requires for table writes —
stores the bucket values the engine handed back for ``p`` and acks the records they cover. Records of a
partition are acked in order and only after their effects are stored, so a crash of either process
replays them (the engine drops replays by event id, as in-process).

Rebalances: results the engine made before it saw the latest assignment of a partition are dropped
(``epoch``); on assignment the partition's stored buckets are sent to the engine before its records.
If the engine process dies the worker exits (code 70): its unacked records are replayed after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from kagoflow.worker import buckets, frames

log = logging.getLogger(__name__)

BATCH_EVENTS = 256
"""Records per events frame; a partial frame goes out after ``BATCH_SECONDS``."""
BATCH_SECONDS = 0.002
BUCKET_FRAME_BYTES = 8 << 20
ENGINE_DIED_EXIT = 70
REVOKE_ACK_SECONDS = 30.0


class Ackable(Protocol):
    def ack(self) -> bool: ...


class WritableTable(Protocol):
    def __setitem__(self, key: bytes, value: bytes) -> None: ...

    def items(self) -> Iterable[tuple[bytes, bytes | None]]: ...


@dataclass
class _Ready:
    writes: list[tuple[bytes, bytes]] = field(default_factory=list)
    ack_through: int = -1


class EngineLink:
    def __init__(self, *, topics: list[str], env: dict[str, str] | None = None) -> None:
        self._topic_index = {topic: index for index, topic in enumerate(topics)}
        self._env = env
        self._parts: list[bytes] = []
        self._batched = 0
        self._seq = 0
        self._unacked: dict[int, deque[tuple[int, Ackable]]] = {}
        self._ready: dict[int, _Ready] = {}
        self._owned: set[int] = set()
        self._assign_epoch: dict[int, int] = {}
        self._epoch = 0
        self._to_dump: set[int] = set()
        self._replies: dict[int, asyncio.Future[bytes]] = {}
        self._request_id = 0
        self._stopping = False
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._control: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = self._ready
        """Partitions with results waiting for ``apply`` (``if p in link.ready``)."""
        self.started = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        to_engine_r, to_engine_w = os.pipe()
        from_engine_r, from_engine_w = os.pipe()
        control_r, control_w = os.pipe()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kagoflow.worker.engine", "--in-fd", str(to_engine_r), "--out-fd",
            str(from_engine_w), "--control-fd", str(control_r), pass_fds=(to_engine_r, from_engine_w, control_r),
            env=self._env,
        )
        for fd in (to_engine_r, from_engine_w, control_r):
            os.close(fd)
        reader = asyncio.StreamReader(limit=1 << 26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_engine_r, "rb", 0))
        writers = []
        for fd in (to_engine_w, control_w):
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(fd, "wb", 0))
            transport.set_write_buffer_limits(high=4 << 20)
            writers.append(asyncio.StreamWriter(transport, protocol, None, loop))
        self.attach(reader, *writers)
        log.info("member engine process started (pid %d)", self._proc.pid)

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               control: asyncio.StreamWriter) -> None:
        """Talk to an engine over these streams (``start`` passes its pipes; tests an in-process engine):
        records, buckets and assignments on ``writer``; revocations and queries on ``control``, which the
        engine reads beside the records, so it answers while a record waits."""
        self._writer = writer
        self._control = control
        self._tasks = [asyncio.ensure_future(self._read(reader)), asyncio.ensure_future(self._send_partial())]
        self.started.set()

    async def stop(self, *, timeout_s: float = 15.0) -> None:
        """Close the pipe (the engine exits at its end) and wait for the process; kill it after the timeout."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for writer in (self._writer, self._control):
            if writer is not None:
                writer.close()
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), timeout_s)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError("member engine stopped"))

    # -- records -----------------------------------------------------------------------------------
    def submit(self, event: Ackable, topic: str, partition: int, offset: int, timestamp_ms: int,
               value: bytes | None, key: bytes | None) -> None:
        """Queue one record for the engine (sent in the next frame); null keys and values (tombstones)
        pass as they are: the engine dead-letters what breaks the contract."""
        self._parts += frames.encode_event(self._topic_index[topic], partition, offset, timestamp_ms, key, value)
        queue = self._unacked.get(partition)
        if queue is None:
            queue = self._unacked[partition] = deque()
        queue.append((self._seq, event))
        self._seq += 1
        self._batched += 1

    @property
    def batched(self) -> int:
        return self._batched

    async def send_batch(self, *, drain: bool = True) -> None:
        if not self._batched:
            return
        payload = b"".join(self._parts)
        self._parts, self._batched = [], 0
        if drain:
            await self._write(frames.frame(frames.EVENTS, payload))
        else:
            assert self._writer is not None, "member engine not started"
            self._writer.write(frames.frame(frames.EVENTS, payload))

    def apply(self, partition: int, table: WritableTable) -> None:
        """Store the engine's bucket values of ``partition`` and ack the records they cover (call while a
        record of ``partition`` is current)."""
        ready = self._ready.pop(partition, None)
        if ready is None:
            return
        for key, value in ready.writes:
            table[key] = value
        queue = self._unacked.get(partition)
        through = ready.ack_through
        while queue and queue[0][0] <= through:
            queue.popleft()[1].ack()

    # -- rebalance ---------------------------------------------------------------------------------
    def assign(self, partitions: set[int]) -> None:
        """New partitions: their stored buckets go to the engine at ``dump_pending`` (after recovery)."""
        self._to_dump |= partitions

    @property
    def dump_pending(self) -> bool:
        return bool(self._to_dump)

    async def dump(self, table: WritableTable) -> None:
        """Send the stored buckets of newly assigned partitions, then the assignment itself."""
        partitions, self._to_dump = self._to_dump, set()
        chunk: list[tuple[bytes, bytes]] = []
        size = 0
        count = 0
        for key, value in table.items():
            parsed = buckets.parse_key(key)
            if parsed is None or value is None or parsed[0] not in partitions:
                continue
            chunk.append((key, value))
            size += len(key) + len(value)
            count += 1
            if size >= BUCKET_FRAME_BYTES:
                await self._write(frames.frame(frames.BUCKETS, frames.encode_items(chunk)))
                chunk, size = [], 0
        if chunk:
            await self._write(frames.frame(frames.BUCKETS, frames.encode_items(chunk)))
        await self.send_batch()  # records queued before the assignment belong to the old epoch's view
        self._epoch += 1
        for partition in partitions:
            self._assign_epoch[partition] = self._epoch
            self._owned.add(partition)
        await self._write(frames.frame(frames.ASSIGN, frames.encode_assign(self._epoch, partitions)))
        log.info("sent %d stored buckets of partitions %s to the member engine", count, sorted(partitions))

    async def revoke(self, partitions: set[int]) -> None:
        """Forget revoked partitions: their unacked records are replayed by the next owner."""
        for partition in partitions:
            self._unacked.pop(partition, None)
            self._ready.pop(partition, None)
            self._owned.discard(partition)
        self._to_dump -= partitions
        if not self.started.is_set():
            return  # the engine starts empty
        self._epoch += 1
        # Every record sent so far is numbered below ``self._seq`` (queued, not drained: a busy engine
        # would make the revocation wait for it).
        await self.send_batch(drain=False)
        revocation = frames.encode_revoke(self._seq, self._epoch, partitions)
        await self._write(frames.frame(frames.REVOKE, revocation), control=True)
        # Revocations and queries share the control pipe, which the engine reads beside the records: its answer
        # to a query sent after the revocation means it dropped the partitions' records not handled yet (the
        # next owner replays them) and forgot the partitions (or will right after the one record it is
        # handling, whose decisions pass the decision gate like the next owner's). The rebalance (this
        # handler) only completes then, so the engine does not go on deciding beside the partitions' next
        # owner; it answers at once even while a flush waits for Kafka.
        started = time.monotonic()
        try:
            await self.query("s", b"", timeout_s=REVOKE_ACK_SECONDS)
            log.info("the member engine confirmed the revocation of %s in %.2f s", sorted(partitions),
                     time.monotonic() - started)
        except (TimeoutError, ConnectionError):
            log.warning("the member engine did not confirm the revocation of %s within %.0f s",
                        sorted(partitions), REVOKE_ACK_SECONDS)

    # -- queries -----------------------------------------------------------------------------------
    async def query(self, what: str, argument: bytes = b"", *, timeout_s: float = 10.0) -> bytes:
        """Ask the engine (``s``: a member's state bytes, ``m``: metrics JSON); b"" = none."""
        await asyncio.wait_for(self.started.wait(), timeout_s)
        self._request_id += 1
        request_id = self._request_id
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        try:
            await self._write(frames.frame(frames.QUERY_T, frames.QUERY.pack(request_id, ord(what)) + argument),
                              control=True)
            return await asyncio.wait_for(reply, timeout_s)
        finally:
            self._replies.pop(request_id, None)

    # -- internals ---------------------------------------------------------------------------------
    async def _write(self, data: bytes, *, control: bool = False) -> None:
        writer = self._control if control else self._writer
        assert writer is not None, "member engine not started"
        writer.write(data)
        await writer.drain()

    async def _send_partial(self) -> None:
        while True:
            await asyncio.sleep(BATCH_SECONDS)
            if self._batched:
                await self.send_batch()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (item := await frames.read_frame(reader)) is not None:
                kind, payload = item
                if kind == frames.RESULTS:
                    self._results(payload)
                elif kind == frames.REPLY_T:
                    (request_id,) = frames.REPLY.unpack_from(payload, 0)
                    reply = self._replies.get(request_id)
                    if reply is not None and not reply.done():
                        reply.set_result(bytes(payload[frames.REPLY.size:]))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading from the member engine failed")
        if not self._stopping and self._proc is not None:
            code = await self._proc.wait()
            log.critical("member engine process exited (code %s); the worker exits too, its unacked records "
                         "are replayed after a restart", code)
            os._exit(ENGINE_DIED_EXIT)

    def _results(self, payload: memoryview) -> None:
        epoch, writes, acks = frames.decode_results(payload)
        ready = self._ready
        for key, value in writes:
            parsed = buckets.parse_key(key)
            if parsed is None or not self._current(parsed[0], epoch):
                continue
            entry = ready.get(parsed[0])
            if entry is None:
                entry = ready[parsed[0]] = _Ready()
            entry.writes.append((key, value))
        for partition, seq in acks.items():
            if not self._current(partition, epoch):
                continue
            entry = ready.get(partition)
            if entry is None:
                entry = ready[partition] = _Ready()
            entry.ack_through = max(entry.ack_through, seq)

    def _current(self, partition: int, epoch: int) -> bool:
        """Results for ``partition`` made after the engine saw its latest assignment."""
        return partition in self._owned and epoch >= self._assign_epoch.get(partition, 1 << 62)

