"""The settle journal: charges that could not reach Redis survive on disk, in order, across restarts.

Unit tests of ``gateway.budget.journal`` (a small in-memory buffer, the rest read back from the file;
a replica killed with SIGKILL is taken over by the next one), then two gateways on a real
redis-server that goes away for longer than the in-memory buffer holds, one of them restarted in the
middle: every charge reaches the ledger once, and past ``state.journal_max`` new work is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
import redis

from gateway.budget import journal as journal_mod
from gateway.budget.journal import SettleJournal
from gateway.budget.ledger import Charge
from tests.support.budget import PRICES, budget_policy
from tests.support.harness import eventually
from tests.support.mock_openai import answer_for, usage_for
from tests.support.redis_server import RedisServer, redis_binary

ROOT = Path(__file__).resolve().parent.parent
MSG = [{"role": "user", "content": "please summarise the quarterly report for the board in plain words"}]


def charge(i: int) -> Charge:
    return Charge(f"r{i}", i, ("gw:{t}:bud:t:d",), (1000,), "gw:{t}:spend:day", 5000, (("small:usd", i),))


def drain(j: SettleJournal) -> list[int]:
    out = []
    while len(j):
        batch = j.head(3)
        out += [c.cost for c in batch]
        j.done(len(batch))
    return out


def test_more_charges_than_the_buffer_come_back_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "BUFFER_MAX", 4)
    j = SettleJournal(str(tmp_path), max_len=100)
    j.open()
    for i in range(10):
        assert j.append(charge(i), 1000.0 + i)
    assert len(j) == 10 and j.oldest() == 1000.0
    first = j.head(2)
    j.done(2)
    assert [c.cost for c in first] == [0, 1] and j.head(1)[0] == charge(2)  # read back whole from disk
    assert drain(j) == list(range(2, 10))
    assert j.path.stat().st_size == 0  # all applied: truncated
    j.close()
    assert not j.path.exists()


def test_the_bound_refuses_new_charges(tmp_path):
    j = SettleJournal(str(tmp_path), max_len=3)
    j.open()
    assert [j.append(charge(i), 0.0) for i in range(4)] == [True, True, True, False]
    assert j.full
    j.close()


def test_a_restarted_replica_takes_over_what_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "BUFFER_MAX", 4)
    first = SettleJournal(str(tmp_path), max_len=100)
    first.open()
    for i in range(9):
        first.append(charge(i), float(i))
    first.done(3)  # 0..2 reached Redis before the restart
    first.close()
    second = SettleJournal(str(tmp_path), max_len=100)
    second.open()
    assert second.adopted == 6 and [p.name for p in tmp_path.iterdir()] == [second.path.name]
    assert drain(second) == [3, 4, 5, 6, 7, 8]
    second.close()


def test_a_killed_replica_is_taken_over_and_a_live_one_is_not(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from gateway.budget.journal import SettleJournal
        from tests.test_settle_journal import charge
        j = SettleJournal({str(tmp_path)!r}, 100)
        j.open()
        for i in range(5):
            j.append(charge(i), float(i))
        os.fsync(j._fd)
        print("ready", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        live = SettleJournal(str(tmp_path), max_len=100)
        live.open()
        assert live.adopted == 0  # its owner still holds it
        live.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        after = SettleJournal(str(tmp_path), max_len=100)
        after.open()
        assert after.adopted == 5 and drain(after) == [0, 1, 2, 3, 4]
        after.close()
    finally:
        proc.kill()
        proc.wait(10)


# -- two gateways, Redis away, one restarted --------------------------------------------------------
@pytest.fixture
def durable_redis():
    if redis_binary() is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))  # survives a kill
    server.start()
    yield server
    server.cleanup()


def pico_cost(body: dict) -> int:
    usage = usage_for(body, answer_for(body))
    inp, out = PRICES["small"]
    return int(usage["prompt_tokens"] * inp * 10**6 + usage["completion_tokens"] * out * 10**6)


def policy(upstream: str, url: str, extra: str = "", mode: str = "local") -> str:
    state = f"backend: redis\n  redis_url: {url}\n  on_backend_error: {mode}\n  replicas: 2{extra}"
    return budget_policy(upstream, budget="{usd: 1000}", state=state).replace("timeout_ms: 5000",
                                                                                "timeout_ms: 250")


def send(gw, n: int) -> None:
    """``n`` requests one after the other, each one's ``complete`` (its settle) done before the next."""
    client = gw.client("sk-acme")
    for _ in range(n):
        try:
            client.chat.completions.create(model="small", messages=MSG, max_tokens=5)
        finally:
            gw.idle(10)


def test_an_outage_with_a_restart_loses_and_doubles_nothing(make_gateway, upstream, durable_redis, monkeypatch):
    monkeypatch.setattr(journal_mod, "BUFFER_MAX", 16)  # "in memory" holds 16; the outage makes 80 per replica
    text = policy(upstream.url, durable_redis.url)
    a, b = make_gateway(text), make_gateway(text)
    send(a, 1), send(b, 1)
    durable_redis.stop()
    send(a, 50), send(b, 50)
    files = sorted((Path(a.path).parent / "gateway-journal").iterdir())
    depth_a = len(a.services.budget.pending)
    a.stop()  # a replica restarted in the middle of the outage
    a = make_gateway(text)
    adopted = a.services.budget.counts["settle_adopted"]
    send(a, 30), send(b, 30)
    depths = (len(a.services.budget.pending), len(b.services.budget.pending))
    durable_redis.start()
    drained = eventually(lambda: not len(a.services.budget.pending) and not len(b.services.budget.pending), 30)
    r = redis.Redis.from_url(durable_redis.url)
    [key] = [k for k in r.keys("*:bud:t:*") if not k.endswith(b":exp")]
    spent = int(r.hget(key, "spent"))
    day = {k.decode(): int(v) for k, v in r.hgetall(next(iter(r.keys("*:spend:*")))).items()}
    expected = sum(pico_cost(body) for body in upstream.requests)
    left = [p.stat().st_size for p in (Path(a.path).parent / "gateway-journal").iterdir()]
    print(f"\njournal files during the outage={len(files)} depth of A before its restart={depth_a} adopted by "
          f"the new A={adopted} depths before recovery (A, B)={depths} drained={drained} bytes left={left}\n"
          f"upstream calls={upstream.calls} ledger n={day.get('small:n')} ledger_pico={spent} "
          f"independent_pico={expected}\nA counts={dict(a.services.budget.counts)}\n"
          f"B counts={dict(b.services.budget.counts)}")
    assert drained and len(files) == 2 and depth_a == 50 and adopted == 50 and depths == (80, 80)
    assert upstream.calls == 162 and day["small:n"] == 162
    assert spent == expected and day["small:usd"] == expected
    assert left == [0, 0]


def test_past_journal_max_new_work_is_refused_unless_allow(make_gateway, upstream, redis_server):
    deny = make_gateway(policy(upstream.url, redis_server.url, "\n  journal_max: 3"), name="local.yaml")
    allow = make_gateway(policy(upstream.url, redis_server.url, "\n  journal_max: 3\n  journal_dir: allow-j",
                                mode="allow"), name="allow.yaml")
    redis_server.stop()
    send(deny, 3)
    with pytest.raises(openai.APIStatusError) as info:
        send(deny, 1)
    err = info.value
    print(f"\nrefused: {err.status_code} {err.code} retry-after={err.response.headers.get('retry-after')}")
    assert err.status_code == 503 and err.code == "budget_unavailable" and err.response.headers["retry-after"]
    assert upstream.calls == 3 and deny.services.budget.counts["journal_full_refused"] == 1
    send(allow, 4)  # fail open: served, the charge that does not fit is dropped and counted
    assert upstream.calls == 7 and allow.services.budget.counts["settle_dropped"] == 1
    redis_server.start()  # Redis is back: the replayer drains the journal and work resumes
    assert eventually(lambda: not len(deny.services.budget.pending), 10)
    send(deny, 1)


def test_an_unusable_journal_dir_still_serves(make_gateway, upstream, redis_server, tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    gw = make_gateway(policy(upstream.url, redis_server.url, f"\n  journal_dir: {tmp_path / 'not-a-dir'}"))
    send(gw, 1)
    assert gw.services.budget.counts["journal_unavailable"] == 1 and gw.services.budget.journal is None
