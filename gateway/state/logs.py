"""Reading a whole append-only log (DLQ, review, feedback) page by page, with an optional filter."""

from __future__ import annotations

from collections.abc import Callable

from gateway.state.base import StateBackend

Row = tuple[str, dict]


async def read_log(backend: StateBackend, key: str, *, page: int = 500, limit: int = 0,
                   where: Callable[[dict], bool] | None = None) -> list[Row]:
    """Every record of ``key`` in order (at most ``limit`` when it is set) that ``where`` accepts."""
    out: list[Row] = []
    after: str | None = None
    while batch := await backend.log_range(key, page, after):
        after = batch[-1][0]
        out.extend(row for row in batch if where is None or where(row[1]))
        if limit and len(out) >= limit:
            return out[:limit]
    return out
