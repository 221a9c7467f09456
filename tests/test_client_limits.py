"""Slow and surplus clients, with raw sockets: the ``server`` block's timeouts and connection caps.

Was (issue 14): partial headers, a silent connection and a body at 1 byte/s all still open after 150 s;
nothing capped the number of connections. Each close or refusal is counted by reason in
``llm_gateway_client_connections_refused_total``, and ``/healthz`` keeps answering.
"""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.support.policies import basic_policy
from tests.support.prom import scrape

LIMITS = """
server:
  header_timeout_s: 1
  keepalive_timeout_s: 1.5
  body_timeout_s: 2
  body_min_rate: 100
  max_connections: 30
  max_connections_per_source: 20
"""
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-acme\r\n"


@pytest.fixture
def gw(make_gateway, upstream):
    return make_gateway(basic_policy(upstream.url, defaults=LIMITS))


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock


def _closed_after(sock: socket.socket, within_s: float = 10.0, since: float | None = None) -> float | None:
    """Seconds from ``since`` (default: now) until the server closes ``sock`` (reading and dropping what
    it sends), None if it doesn't within ``within_s``."""
    start = time.monotonic() if since is None else since
    sock.settimeout(0.2)
    while time.monotonic() - start < within_s:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def _healthz(gw) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(gw.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    return time.monotonic() - start


def _refused(gw) -> dict[str, float]:
    s = scrape(gw.url)
    return {labels["reason"]: s.value("llm_gateway_client_connections_refused_total", **labels)
            for labels in s.series("llm_gateway_client_connections_refused_total")}


def test_partial_headers_silence_and_idle_keepalive_are_closed(gw):
    start = time.monotonic()
    partial = _connect(gw.port)
    partial.sendall(HEAD)  # never the blank line
    silent = _connect(gw.port)
    trickle = _connect(gw.port)
    trickle_s = None
    for byte in HEAD[:25]:  # a byte every 0.2 s: the head still has to be whole within the timeout
        try:
            trickle.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            trickle_s = time.monotonic() - start
            break
        time.sleep(0.2)
    partial_s, silent_s = _closed_after(partial, since=start), _closed_after(silent, since=start)
    kept = _connect(gw.port)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    idle_s = _closed_after(kept)
    health_s = _healthz(gw)
    refused = _refused(gw)
    print(f"\nheader_timeout_s 1, keepalive_timeout_s 1.5: partial head closed after {partial_s:.2f} s, silent "
          f"connection after {silent_s:.2f} s, trickled head after {trickle_s:.2f} s, idle keep-alive after "
          f"{idle_s:.2f} s; /healthz {health_s * 1000:.1f} ms; counted {refused}")
    assert partial_s is not None and silent_s is not None and trickle_s is not None and idle_s is not None
    assert max(partial_s, silent_s, trickle_s) < 3  # closed by the header timeout, the trickle too
    assert refused["header_timeout"] == 3 and refused["idle_timeout"] == 1
    for sock in (partial, silent, trickle, kept):
        sock.close()


def test_a_partial_head_on_a_kept_alive_connection_is_closed_by_the_header_timeout(gw):
    sock = _connect(gw.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    before = _refused(gw).get("header_timeout", 0)
    sock.sendall(HEAD)  # the next request's head, never finished
    closed_s = _closed_after(sock)
    assert closed_s is not None and closed_s < 1.4  # the header timeout (1 s), not the keep-alive one (1.5 s)
    assert _refused(gw)["header_timeout"] == before + 1
    sock.close()


def test_a_body_trickling_at_one_byte_a_second_is_a_408(gw):
    sock = _connect(gw.port)
    sock.sendall(HEAD + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    start = time.monotonic()
    answer = b""
    sock.settimeout(0.05)
    for byte in b'{"model": "small", "messages": []' * 3:
        try:
            sock.sendall(bytes([byte]))
            answer += sock.recv(65536)
        except TimeoutError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            break
        if answer or time.monotonic() - start > 10:
            break
        time.sleep(1.0)
    took = time.monotonic() - start
    sock.close()
    refused = _refused(gw)
    status = answer.split(b"\r\n")[0].decode()
    print(f"\nbody at 1 byte/s, body_min_rate 100, body_timeout_s 2: answered after {took:.2f} s: "
          f"{status}; counted {refused}")
    assert answer.startswith(b"HTTP/1.1 408") and b"request_too_slow" in answer
    assert took < 5
    assert refused["body_too_slow"] == 1


def test_connections_over_the_caps_are_refused_at_once_and_healthz_answers(gw):
    held = [_connect(gw.port) for _ in range(20)]
    for sock in held:  # every one is a live connection the gateway admitted
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    over_source = _connect(gw.port)
    per_source_s = _closed_after(over_source, 5)
    held.pop().close()
    held += [_connect(gw.port, "127.0.0.2") for _ in range(10)]
    time.sleep(0.2)
    health_s = _healthz(gw)  # the 30th connection
    held.append(_connect(gw.port))
    over_total = _connect(gw.port, "127.0.0.3")
    total_s = _closed_after(over_total, 5)
    for sock in held[:5]:
        sock.close()
    time.sleep(0.2)
    after_s = _healthz(gw)
    refused = _refused(gw)
    print(f"\ncaps 20 per source / 30 in all: 21st from one source closed after {per_source_s * 1000:.1f} ms, "
          f"31st overall after {total_s * 1000:.1f} ms; /healthz {health_s * 1000:.1f} ms at 30 connections, "
          f"{after_s * 1000:.1f} ms after 5 left; counted {refused}")
    assert per_source_s is not None and per_source_s < 1
    assert total_s is not None and total_s < 1
    assert refused["max_connections_per_source"] == 1 and refused["max_connections"] == 1
    for sock in held + [over_source, over_total]:
        sock.close()


def test_the_probe_listener_answers_while_the_main_one_is_at_its_cap(make_gateway, upstream):
    from gateway.http.runner import PROBE_RUNNER

    gw = make_gateway(basic_policy(upstream.url, defaults="server: {max_connections: 5, probe_port: 0}"))
    probe_port = gw.app[PROBE_RUNNER].addresses[0][1]
    held = [_connect(gw.port) for _ in range(5)]
    time.sleep(0.2)
    refused_s = _closed_after(_connect(gw.port), 5)
    timings = {}
    for path in ("/healthz", "/readyz", "/metrics"):
        start = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}{path}", timeout=5) as resp:
            assert resp.status == 200
        timings[path] = round((time.monotonic() - start) * 1000, 1)
    print(f"\nmain listener at its cap of 5 (6th closed after {refused_s * 1000:.1f} ms); probe port answers "
          f"in ms: {timings}")
    assert refused_s is not None and refused_s < 1
    for sock in held:
        sock.close()
