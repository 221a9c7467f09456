"""Single-flight: identical requests in flight at once share one upstream call.

The first request for a key leads a ``Flight``; identical ones that arrive while it runs join it as
followers instead of calling the upstream. A streamed answer is read by a pump task that belongs to
the flight, not to any one client, into a chunk list every participant replays at its own pace, so
followers receive chunks as they arrive and a leader whose client leaves does not cut the others
off. The pump is cancelled (and the upstream released) only when every participant has left.

A flight that fails before answering (an upstream error, a limit, the leader cancelled) releases
its followers to proceed on their own; it never hands them the leader's error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from gateway.cache.entry import Entry
from gateway.errors import UpstreamError

State = Literal["pending", "streaming", "done", "failed"]


class Flight:
    """One answer in the making. ``participants`` counts the requests still interested in it."""

    def __init__(self, key: str, endpoint: str) -> None:
        self.key = key
        self.endpoint = endpoint
        self.state: State = "pending"
        self.chunks: list[bytes] = []  # stream payloads so far, as the upstream sent them
        self.entry: Entry | None = None  # the complete answer, once done (None: not a whole answer)
        self.error: BaseException | None = None  # why a started stream broke
        self.participants = 0
        self.pump: asyncio.Task[None] | None = None
        self._event = asyncio.Event()
        self._on_fail: Callable[[Flight], None] | None = None

    @property
    def settled(self) -> bool:
        return self.state in ("done", "failed")

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def join(self) -> bool:
        """Count one more participant; False if the flight already failed (proceed alone)."""
        if self.state == "failed":
            return False
        self.participants += 1
        return True

    def leave(self) -> None:
        """A participant is gone; the last one out stops a stream nobody reads any more."""
        self.participants -= 1
        if self.participants <= 0 and self.state == "streaming" and self.pump is not None:
            self.fail(UpstreamError("stream_cut", "every client of this stream left"))
            self.pump.cancel()

    def finish(self, entry: Entry | None) -> None:
        """The answer is complete; ``entry`` is None when it can't be reused as a whole answer."""
        if not self.settled:
            self.state, self.entry = "done", entry
            self._notify()

    def fail(self, error: BaseException | None = None) -> None:
        if self.settled:
            return
        self.state, self.error = "failed", error
        self._notify()
        if self._on_fail is not None:
            self._on_fail(self)

    async def wait(self, ready: Callable[[Flight], bool], timeout_s: float) -> bool:
        """Wait (bounded) until ``ready(flight)`` or the flight settles; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while not (ready(self) or self.settled):
                    await self._event.wait()
        except TimeoutError:
            return False
        return True

    def start_stream(self, events: AsyncIterator[bytes], release: Callable[[], Awaitable[None]] | None,
                     entry_of: Callable[[Flight], Entry | None],
                     then: Callable[[Flight], Awaitable[None]]) -> None:
        """Read ``events`` in a task of the flight's own.

        At a clean end (the iterator finished without raising) the flight is done with
        ``entry_of(flight)``, else failed; the upstream is released in every case, then ``then`` runs
        (unless the pump was cancelled).
        """
        self.state = "streaming"
        self._notify()
        self.pump = asyncio.get_running_loop().create_task(self._pump(events, release, entry_of, then))

    async def _pump(self, events: AsyncIterator[bytes], release: Callable[[], Awaitable[None]] | None,
                    entry_of: Callable[[Flight], Entry | None],
                    then: Callable[[Flight], Awaitable[None]]) -> None:
        try:
            async for payload in events:
                self.chunks.append(payload)
                self._notify()
            self.finish(entry_of(self))
        except asyncio.CancelledError:
            self.fail(UpstreamError("stream_cut", "the stream was abandoned"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every reader, who raises it
            self.fail(exc)
        finally:
            if release is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(release())
        await then(self)  # not after a cancellation: that one propagates from the except above

    async def follow(self) -> AsyncIterator[bytes]:
        """The stream from its first chunk, as fast as it arrives; raises what broke it."""
        i = 0
        while True:
            if i < len(self.chunks):
                i += 1
                yield self.chunks[i - 1]
            elif self.state == "done":
                return
            elif self.state == "failed":
                raise self.error or UpstreamError("stream_cut", "the shared stream failed")
            else:
                await self._event.wait()


class FlightTable:
    """The flights in progress in this process, by cache key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def lead(self, key: str, endpoint: str) -> Flight:
        """A new flight for ``key`` with its leader joined; others find it until it is dropped."""
        flight = self.private(key, endpoint)
        flight._on_fail = self.drop
        self._flights[key] = flight
        return flight

    @staticmethod
    def private(key: str, endpoint: str) -> Flight:
        """A flight nobody can join: the same store path for requests that don't coalesce."""
        flight = Flight(key, endpoint)
        flight.join()
        return flight

    def drop(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
