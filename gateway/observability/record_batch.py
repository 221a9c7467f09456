"""Small records written to the shared state backend in batches: a fraction of a state call per request.

``BatchWriter.add`` buffers a record (no I/O); the records of one group (a tenant: their keys share
its ``{hash tag}``, so one Redis Cluster slot) go out together as one ``set_many`` call, one round
trip, every ``FLUSH_INTERVAL_S`` or as soon as a group holds ``FLUSH_RECORDS``. Past ``MAX_PENDING``
records buffered or being written (a stalled backend), new ones are dropped and counted, as is a
batch the backend refused. ``get`` finds a record still buffered or in flight, so a reader on this
process never waits for the write; ``drain`` (shutdown) writes what is buffered and waits for it.
A record another call writes (a request's own ``complete`` state call) is found from ``sending``
to ``sent``, and counted in ``dropped`` if that call fails, as a failed batch's are; at most ``cap``
are kept so (a call cancelled with its request never reports: the oldest go first).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from gateway.state.base import StateBackend, StateError

log = logging.getLogger("gateway.observability.feedback")

FLUSH_INTERVAL_S = 0.05  # a record waits at most this long for its batch
FLUSH_RECORDS = 256  # records of one group that make a batch at once
MAX_PENDING = 10_000  # records buffered or in flight before new ones are dropped (a stalled backend)

Batch = dict[str, tuple[bytes, float]]  # key -> (value, ttl in seconds)


class BatchWriter:
    """Buffers ``(group, key, value, ttl)`` records and writes each group's as one ``set_many``."""

    def __init__(self, backend: StateBackend, interval_s: float = FLUSH_INTERVAL_S,
                 batch: int = FLUSH_RECORDS, cap: int = MAX_PENDING) -> None:
        self.backend = backend
        self.interval_s = interval_s
        self.batch = batch
        self.cap = cap
        self.dropped = 0  # refused for room or lost with a failed batch
        self._buffer: dict[str, Batch] = {}  # group -> its records not sent yet
        self._buffered = 0
        self._inflight: dict[str, bytes] = {}  # key -> value, of batches being written
        self._riding: dict[str, bytes] = {}  # key -> value, of records other calls are writing (oldest first)
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Records buffered or in flight."""
        return self._buffered + len(self._inflight)

    def add(self, group: str, key: str, value: bytes, ttl_s: float) -> None:
        if self._buffered + len(self._inflight) >= self.cap:
            self.dropped += 1
            return
        records = self._buffer.get(group)
        if records is None:
            records = self._buffer[group] = {}
        if key not in records:
            self._buffered += 1
        records[key] = (value, ttl_s)
        if len(records) >= self.batch:
            del self._buffer[group]
            self._buffered -= len(records)
            self._send(records)
        elif self._timer is None:
            # a context of its own: the batch is no request's work (nor in its trace)
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.flush,
                                                                context=contextvars.Context())

    def get(self, group: str, key: str) -> bytes | None:
        """The value of a record not yet written (buffered or in flight), else ``None``."""
        records = self._buffer.get(group)
        found = records.get(key) if records is not None else None
        return found[0] if found is not None else self._inflight.get(key) or self._riding.get(key)

    def sending(self, key: str, value: bytes) -> None:
        """``value`` is being written by another call: ``get`` finds it until ``sent``."""
        riding = self._riding
        riding.pop(key, None)
        riding[key] = value
        if len(riding) > self.cap:  # calls that never reported (cancelled with their request)
            del riding[next(iter(riding))]

    def sent(self, key: str, value: bytes, error: StateError | None) -> None:
        """The call writing ``value`` answered; if it failed, the record is lost and counted (not
        logged: one line per request in an outage; ``state_errors_total{op="fused"}`` shows the call)."""
        if self._riding.get(key) is value:  # not a newer record of the same key
            del self._riding[key]
        if error is not None:
            self.dropped += 1

    def flush(self) -> None:
        """Send every group's buffered records now, one call each."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buffer, self._buffer, self._buffered = self._buffer, {}, 0
        for records in buffer.values():
            self._send(records)

    async def drain(self) -> None:
        """Flush, then wait until every batch is written or failed (shutdown)."""
        self.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _send(self, records: Batch) -> None:
        self._inflight.update((key, value) for key, (value, _) in records.items())
        task = asyncio.get_running_loop().create_task(self._write(records), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, records: Batch) -> None:
        try:
            await self.backend.set_many([(key, value, ttl) for key, (value, ttl) in records.items()])
        except StateError as exc:
            self.dropped += len(records)
            log.warning("%d request records not stored: %s", len(records), exc)
        finally:
            inflight = self._inflight
            for key, (value, _) in records.items():
                if inflight.get(key) is value:  # not a newer record of the same key
                    del inflight[key]
