"""``Deadlines``: many attempts' deadlines on one loop timer, each cut when due and never after it is forgotten."""

from __future__ import annotations

import asyncio

from gateway.providers.deadlines import Deadlines

U = 0.05  # the time unit: deadlines and checks sit a unit or more apart, so a busy host's late wake-up does not reorder them


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
    deadlines.watch(late, now + 6 * U)
    deadlines.watch(gone, now + U)
    deadlines.watch(early, now + 3 * U)  # later than the armed one (gone's): no new timer
    deadlines.forget(gone)
    await asyncio.sleep(4.5 * U)
    assert fired == ["early"]
    await asyncio.sleep(3 * U)
    assert fired == ["early", "late"] and not deadlines.watched


async def test_a_deadline_earlier_than_the_armed_one_re_arms_and_a_moved_one_follows() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    now = loop.time()
    a, b = Item(fired, "a"), Item(fired, "b")
    deadlines.watch(a, now + 5.0)
    deadlines.watch(b, now + U)
    deadlines.watch(a, now + 3 * U)  # moved earlier than it was, later than b's
    await asyncio.sleep(2 * U)
    assert fired == ["b"]
    await asyncio.sleep(2 * U)
    assert fired == ["b", "a"]


async def test_attempts_ending_before_their_deadlines_share_one_loop_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    first = Item(fired, "first")
    deadlines.watch(first, loop.time() + U)
    handle = deadlines._handle
    for n in range(100):  # each later than the armed one: no new timer
        item = Item(fired, str(n))
        deadlines.watch(item, loop.time() + U)
        deadlines.forget(item)
    assert deadlines._handle is handle
    deadlines.forget(first)
    await asyncio.sleep(3 * U)  # the timer fires, finds nobody due, and is not armed again
    assert fired == [] and deadlines._handle is None


async def test_a_deadline_already_passed_is_cut_at_the_next_turn() -> None:
    loop = asyncio.get_running_loop()
    deadlines, fired = Deadlines(loop), []
    deadlines.watch(Item(fired, "now"), loop.time() - 1.0)
    assert fired == []
    await asyncio.sleep(0)
    assert fired == ["now"]
