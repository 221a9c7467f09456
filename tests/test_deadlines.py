"""``Deadlines``: many attempts' deadlines on one loop timer, each cut when due and never after it is forgotten."""

from __future__ import annotations

import asyncio

from gateway.providers.deadlines import Deadlines


class Item:
    def __init__(self, fired: list[str], name: str) -> None:
        self.when: float | None = None
        self.fired, self.name = fired, name

    def _fire(self) -> None:
        self.fired.append(self.name)


async def test_each_is_cut_at_its_own_deadline_in_order_whatever_the_order_watched() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    now = loop.time()
    late, early, gone = Item(fired, "late"), Item(fired, "early"), Item(fired, "gone")
    deadlines.watch(late, now + 0.12)
    deadlines.watch(gone, now + 0.02)
    deadlines.watch(early, now + 0.05)  # later than the armed one (gone's): no new timer
    deadlines.forget(gone)
    await asyncio.sleep(0.08)
    assert fired == ["early"]
    await asyncio.sleep(0.08)
    assert fired == ["early", "late"] and not deadlines.watched


async def test_a_deadline_earlier_than_the_armed_one_re_arms_and_a_moved_one_follows() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    now = loop.time()
    a, b = Item(fired, "a"), Item(fired, "b")
    deadlines.watch(a, now + 5.0)
    deadlines.watch(b, now + 0.03)
    deadlines.watch(a, now + 0.06)  # moved earlier than it was, later than b's
    await asyncio.sleep(0.045)
    assert fired == ["b"]
    await asyncio.sleep(0.04)
    assert fired == ["b", "a"]


async def test_attempts_ending_before_their_deadlines_share_one_loop_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    first = Item(fired, "first")
    deadlines.watch(first, loop.time() + 0.05)
    handle = deadlines._handle
    for n in range(100):  # each later than the armed one: no new timer
        item = Item(fired, str(n))
        deadlines.watch(item, loop.time() + 0.05)
        deadlines.forget(item)
    assert deadlines._handle is handle
    deadlines.forget(first)
    await asyncio.sleep(0.08)  # the timer fires, finds nobody due, and is not armed again
    assert fired == [] and deadlines._handle is None


async def test_a_deadline_already_passed_is_cut_at_the_next_turn() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    deadlines.watch(Item(fired, "now"), loop.time() - 1.0)
    assert fired == []
    await asyncio.sleep(0)
    assert fired == ["now"]
