"""Policy reload: atomic swaps under load, broken files keep the old policy, SIGHUP, --workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import eventually
from tests.support.policies import basic_policy

MSG = [{"role": "user", "content": "hi"}]


def test_reload_under_load_zero_failures(make_gateway, upstream):
    text = basic_policy(upstream.url)
    gw = make_gateway(text)  # reloaded by hand below: a watcher would race it
    client = gw.client("sk-acme")
    errors: list[Exception] = []
    sent = 0
    stop = threading.Event()

    def loop() -> None:
        nonlocal sent
        while not stop.is_set():
            try:
                client.chat.completions.create(model="small", messages=MSG)
                sent += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(exc)

    workers = [threading.Thread(target=loop) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        # alternate between two valid policies (a new tenant key appears and disappears) many times
        for i in range(6):
            extra = "gamma:\n  api_keys: [sk-gamma]\n  models: [small]\n" if i % 2 == 0 else ""
            gw.path.write_text(basic_policy(upstream.url, extra_tenant=extra))
            assert gw.reload()
            time.sleep(0.05)
        gw.path.write_text(text + "\nbogus_key: 1\n")
        assert not gw.reload()
        time.sleep(0.1)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    assert errors == []
    assert sent > 20
    stats = gw.services.holder.stats
    assert stats.success == 6 and stats.failure == 1


def test_broken_file_keeps_old_policy_and_shows_on_readyz(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url), watch=True)
    gw.path.write_text(basic_policy(upstream.url).replace("type: openai", "type: opnai", 1))
    assert eventually(lambda: gw.services.holder.stats.failure >= 1, 10)
    ready = httpx.get(gw.url + "/readyz").json()
    assert "providers.upstream.type: unknown provider type 'opnai'" in ready["policy"]["last_reload_error"]
    assert gw.client("sk-acme").chat.completions.create(model="small", messages=MSG).choices


def test_restoring_the_file_clears_the_reload_error(make_gateway, upstream, caplog):
    """Issue 14: /readyz forgets a reload error once the file loads again, even unchanged."""
    gw = make_gateway(basic_policy(upstream.url))
    good = gw.path.read_text()
    gw.path.write_text(good.replace("type: openai", "type: opnai", 1))
    assert not gw.reload()
    assert httpx.get(gw.url + "/readyz").json()["policy"]["last_reload_error"]
    gw.path.write_text(good)
    with caplog.at_level("INFO", logger="gateway.policy"):
        assert not gw.reload()  # the same policy as the one serving: nothing to swap
    assert httpx.get(gw.url + "/readyz").json()["policy"]["last_reload_error"] is None
    assert gw.services.holder.stats.unchanged == 1
    assert any("policy unchanged" in r.getMessage() for r in caplog.records)


def test_file_change_is_picked_up(make_gateway, upstream):
    gw = make_gateway(basic_policy(upstream.url), watch=True)
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-gamma").chat.completions.create(model="small", messages=MSG)
    gw.path.write_text(basic_policy(upstream.url, extra_tenant="gamma:\n  api_keys: [sk-gamma]\n  models: [small]\n"))
    assert eventually(lambda: gw.services.holder.stats.success >= 1, 10)
    assert gw.client("sk-gamma").chat.completions.create(model="small", messages=MSG).choices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    assert eventually(up, 20), "gateway did not start"
    return proc


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_sighup_reloads_a_running_process(tmp_path: Path, upstream):
    new = basic_policy(upstream.url, extra_tenant="gamma:\n  api_keys: [sk-gamma]\n  models: [small]\n")
    old = basic_policy(upstream.url)
    old += "#" * (len(new) - len(old) - 1) + "\n"  # same size as the new file
    path = tmp_path / "p.yaml"
    path.write_text(old)
    port = _free_port()
    proc = _start(["--policy", str(path)], port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-gamma", max_retries=0)
        # same size, inode and mtime as before, so the file poller cannot see it: only SIGHUP reloads
        before = path.stat()
        path.write_text(new)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(1.5)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="small", messages=MSG)
        proc.send_signal(signal.SIGHUP)

        def served() -> bool:
            try:
                return bool(client.chat.completions.create(model="small", messages=MSG).choices)
            except openai.AuthenticationError:
                return False

        assert eventually(served, 10)
    finally:
        _stop(proc)


def test_default_serve_uses_bundled_policy_and_workers_share_a_port():
    port = _free_port()
    proc = _start(["--workers", "2"], port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo-quickstart", max_retries=0)
        for _ in range(10):
            out = client.chat.completions.create(model="demo", messages=MSG)
            assert out.choices[0].message.content == "Mock answer to: hi"
    finally:
        out = _stop(proc)
    assert "sk-demo-quickstart" in out and "2 workers" in out
    assert proc.returncode == 0
