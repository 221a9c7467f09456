"""How the idle-streams scenarios spread their sockets over processes so each stays under the open-file limit.

A gateway worker holds two sockets per stream (its client's and its upstream's), a holding client and a
mock process one. ``setrlimit`` can't go past the hard limit (``ulimit -Hn``), so past it the gateway runs
more ``--workers`` (SO_REUSEPORT spreads the connections), the streams are opened by several client
processes and the mock runs several processes on its port.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FD_OVERHEAD = 1000  # descriptors a process keeps besides the held sockets: listeners, pools, logs, Python's own
# SO_REUSEPORT hashes each connection to a worker (or mock process), so shares are uneven: the even share
# is at most 1/SHARE_HEADROOM of what a process can hold, and a worker's caps allow twice its even share.
SHARE_HEADROOM = 1.25
CAP_SLACK = 100  # added to the per-worker caps, so a small run is not capped at its exact share


class DoesNotFit(Exception):
    """The open-file limit can't hold even one stream per process; the message says why."""


@dataclass(frozen=True, slots=True)
class IdleSplit:
    """The processes an idle-streams run uses, and each gateway worker's connection caps."""

    streams: int
    fd_limit: int | None  # None: no limit
    workers: int  # gateway worker processes (``--workers``)
    worker_cap: int  # per worker: server.max_connections and the upstream pool's max_connections
    holders: tuple[int, ...]  # streams opened and held by each client process
    mocks: int  # mock upstream processes sharing its port

    def note(self) -> str:
        """What ran, and why, for the table's notes."""
        ran = (f"{_count(self.workers, 'gateway worker', 'gateway workers')}, "
               f"{_count(len(self.holders), 'client process', 'client processes')}, "
               f"{_count(self.mocks, 'mock process', 'mock processes')}")
        if self.fd_limit is None:
            return f"{ran}: no open-file limit"
        return (f"{ran}: the open-file limit is {self.fd_limit:,} a process and a worker holds 2 sockets a stream "
                f"(<= {per_worker(self.fd_limit):,} streams a worker, its even share <= "
                f"{1 / SHARE_HEADROOM:.0%} of that)")


def per_worker(fd_limit: int) -> int:
    """Streams one gateway worker can hold: two sockets each, besides ``FD_OVERHEAD``."""
    return (fd_limit - FD_OVERHEAD) // 2


def per_process(fd_limit: int) -> int:
    """Streams one client or mock process can hold: one socket each, besides ``FD_OVERHEAD``."""
    return fd_limit - FD_OVERHEAD


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _spread(total: int, parts: int) -> tuple[int, ...]:
    """``total`` in ``parts`` shares differing by at most one."""
    base, extra = divmod(total, parts)
    return tuple(base + (i < extra) for i in range(parts))


def split_idle(streams: int, fd_limit: int | None, min_workers: int = 1) -> IdleSplit:
    """The fewest processes (at least ``min_workers`` gateway workers) that hold ``streams`` under ``fd_limit``.

    Raises ``DoesNotFit`` when the limit leaves no room for a stream after ``FD_OVERHEAD``.
    """
    if streams < 1:
        raise ValueError(f"streams must be positive, got {streams}")
    if fd_limit is None:
        workers, holders, mocks = max(1, min_workers), 1, 1
        room = math.inf
    else:
        if per_worker(fd_limit) < 1:
            raise DoesNotFit(f"open-file limit {fd_limit} leaves no room for streams besides {FD_OVERHEAD} "
                             "kept per process; raise the hard limit (ulimit -Hn)")
        room = per_worker(fd_limit)
        workers = max(min_workers, math.ceil(streams * SHARE_HEADROOM / room))
        holders = math.ceil(streams / per_process(fd_limit))
        mocks = math.ceil(streams * SHARE_HEADROOM / per_process(fd_limit))  # shared by hash, as workers
    cap = min(room, 2 * math.ceil(streams / workers) + CAP_SLACK)
    return IdleSplit(streams, fd_limit, workers, int(cap), _spread(streams, holders), mocks)

