"""Logs never block the event loop (``gateway.observability.logqueue``).

Was (issue 14): a gateway whose stdout or stderr is a pipe nobody reads (a stuck log shipper) stops
answering once the pipe's 64 KB fill: every access-log flush and app-log record blocked the loop in
``write``. Now lines wait in a bounded queue a thread writes; past ``logging.queue_lines`` they are
dropped and counted in ``llm_gateway_log_records_dropped_total{log}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
import time
from pathlib import Path

import openai

from gateway.observability.applog import StderrHandler
from gateway.observability.logqueue import DROPPED, LogQueue
from tests.support.process import GatewayProcess
from tests.support.prom import scrape

POLICY = textwrap.dedent("""\
    version: 1
    state: {{backend: memory, dlq_path: {tmp}/dlq.jsonl}}
    providers:
      mock: {{type: mock, failure_rate: 1.0}}
    models:
      m:
        deployments: [{{provider: mock, model: mock-small}}]
    retry: {{attempts: 1}}
    circuit_breaker: {{failures: 1000000, cooldown_s: 1}}
    logging: {{access_log: stdout, audit_path: {tmp}/audit.jsonl, queue_lines: 20}}
    tenants:
      t:
        api_keys: [sk-t]
        models: "*"
""")
REQUESTS = 500


def test_a_gateway_whose_stdout_and_stderr_nobody_reads_keeps_answering_and_counts_what_it_drops(tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(tmp=tmp_path))
    gw = GatewayProcess(policy, tmp_path, pipes=True).start()  # both pipes fill after ~64 KB each
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-t", max_retries=0, timeout=10)
        statuses = []
        start = time.monotonic()
        for i in range(REQUESTS):  # each: an access-log line and a warning (every upstream call fails)
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"hi {i}"}])
                statuses.append(200)
            except openai.APIStatusError as err:
                statuses.append(err.status_code)
        took = time.monotonic() - start
        metrics = scrape(gw.url)
        access = metrics.value("llm_gateway_log_records_dropped_total", log="access")
        app = metrics.value("llm_gateway_log_records_dropped_total", log="app")
        print(f"\n{REQUESTS} requests, stdout and stderr unread: answered {len(statuses)} in {took:.1f} s "
              f"({set(statuses)}); dropped log records: access {access:g}, app {app:g}")
        assert statuses == [503] * REQUESTS  # every one answered (the injected failure), none hung
        assert access > 0 and app > 0
    finally:
        gw.stop(timeout=15)
        for pipe in (gw.proc.stdout, gw.proc.stderr):
            pipe.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking_and_close_is_bounded():
    read_end, write_end = os.pipe()  # a pipe nobody reads, already full: the writer thread blocks at once
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    out = os.fdopen(write_end, "wb", buffering=0)
    queue = LogQueue("test", out.write, max_lines=5)
    line = b"x" * 1023 + b"\n"
    before = DROPPED["test"]
    accepted = sum(queue.put(line) for _ in range(200))
    assert accepted == 5  # the queue's bound (the batch the blocked writer holds included)
    assert DROPPED["test"] - before == 195
    assert queue.close(timeout=0.2) is False  # still blocked: gives up; lines not yet taken are counted dropped
    assert not queue.put(line) and DROPPED["test"] - before >= 196  # closed
    os.close(read_end)  # the blocked write fails (EPIPE); the thread ends
    out.close()


def test_the_app_log_handler_writes_in_order_from_its_thread(tmp_path: Path):
    path = tmp_path / "stderr.txt"
    with path.open("w") as stream:
        handler = StderrHandler(stream=lambda: stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger = logging.getLogger("test.applog.queue")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            for i in range(100):
                logger.warning("record %d", i)
            handler.flush()
        finally:
            logger.removeHandler(handler)
            handler.close()
    assert path.read_text().splitlines() == [f"WARNING record {i}" for i in range(100)]
