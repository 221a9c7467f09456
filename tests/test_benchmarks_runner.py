"""``python -m benchmarks``: lists its scenarios, and a one-second run prints a table with real figures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from benchmarks.__main__ import _gateways, main
from benchmarks.runner.idle_split import FD_OVERHEAD, SHARE_HEADROOM, DoesNotFit, split_idle
from benchmarks.runner.load import Load
from benchmarks.runner.policies import gateway_policy
from benchmarks.runner.scenarios import AGENT_CHAT, AGENT_MESSAGES, SCENARIOS
from benchmarks.runner.table import Row, merge

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The Markdown table's rows by proxy, as {column: cell}."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[1:]]
    return {row["proxy"]: row for row in rows}


def test_list_names_every_scenario(capsys: pytest.CaptureFixture[str]):
    assert main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(SCENARIOS)
    assert {"full-memory", "full-redis", "cache-hit", "stream", "idle-streams-10k", "messages", "responses",
            "workers-2", "latency-500"} <= set(listed)


def test_unknown_scenario_and_baseline_are_refused():
    with pytest.raises(SystemExit, match="unknown scenario"):
        main(["run", "no-such"])
    with pytest.raises(SystemExit, match="--compare: unknown"):
        main(["run", "cache-hit", "--compare", "haproxy"])


def test_gateway_sources_take_labels(tmp_path: Path):
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__main__.py").write_text("")
    before, after = _gateways([f"before={tmp_path}", f"after={ROOT}"])
    assert (before.name, before.src, after.name, after.src) == ("before", tmp_path, "after", ROOT)
    assert _gateways([])[0].src == ROOT
    with pytest.raises(SystemExit, match="no gateway package"):
        _gateways([f"x={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit, match="distinct"):
        _gateways([f"bare={ROOT}"])


def test_rounds_merge_into_medians_and_totals():
    rounds = [Row("s", "gateway", Load(100, 1.0, p50, p50 * 2, p50 * 3, errors), cpu_us=cpu, rss_mib=rss)
              for p50, errors, cpu, rss in ((1.0, 0, 500.0, 50.0), (3.0, 2, 900.0, 60.0), (2.0, 1, 700.0, 55.0))]
    row = merge([*rounds, Row("s", "gateway", note="failed: x")])
    assert row.load is not None
    assert (row.load.requests, row.load.rps, row.load.p50, row.load.p99, row.load.errors) == (300, 100.0, 2.0, 4.0, 3)
    assert (row.cpu_us, row.rss_mib) == (700.0, 60.0) and row.note.startswith("median of 3 rounds, 1 failed")
    assert merge(rounds[:1]) is rounds[0]


def test_ten_thousand_idle_streams_take_two_workers_under_a_20000_open_file_limit():
    split = split_idle(10_000, 20_000)
    assert (split.workers, split.worker_cap, split.holders, split.mocks) == (2, 9_500, (10_000,), 1)
    assert "2 gateway workers" in split.note() and "open-file limit is 20,000" in split.note()


def test_one_thousand_idle_streams_keep_one_worker_and_the_old_caps():
    split = split_idle(1_000, 20_000)
    assert (split.workers, split.worker_cap, split.holders, split.mocks) == (1, 2_100, (1_000,), 1)
    assert split_idle(1_000, 20_000, min_workers=2).workers == 2  # --workers is a floor
    assert split_idle(10_000, None).workers == 1 and "no open-file limit" in split_idle(10_000, None).note()


@pytest.mark.parametrize("streams", [1, 999, 1_000, 10_000, 30_000, 100_000])
@pytest.mark.parametrize("limit", [1_100, 1_600, 4_096, 20_000, 65_536])
def test_every_process_of_an_idle_split_fits_the_open_file_limit(streams: int, limit: int):
    split = split_idle(streams, limit)
    even = -(-streams // split.workers)
    assert even * SHARE_HEADROOM * 2 + FD_OVERHEAD <= limit  # room for an uneven SO_REUSEPORT share
    assert even <= split.worker_cap and split.worker_cap * 2 + FD_OVERHEAD <= limit
    assert sum(split.holders) == streams and max(split.holders) - min(split.holders) <= 1
    assert max(split.holders) + FD_OVERHEAD <= limit
    assert streams / split.mocks * SHARE_HEADROOM + FD_OVERHEAD <= limit
    if split.workers > 1:  # the fewest: one worker less would not leave the headroom
        assert -(-streams // (split.workers - 1)) * SHARE_HEADROOM * 2 + FD_OVERHEAD > limit


def test_a_limit_without_room_for_a_stream_is_refused():
    with pytest.raises(DoesNotFit, match="open-file limit 1001 leaves no room"):
        split_idle(10, FD_OVERHEAD + 1)


def test_the_policy_sets_each_workers_connection_caps_and_lets_held_streams_idle():
    policy = gateway_policy(9000, connections=9_500, hold_s=310)
    assert "server: {max_connections: 9500, max_in_flight: null}" in policy
    assert "api_key: sk-up, max_connections: 9500, timeouts: {first_byte_s: 310, total_s: 600}}" in policy
    assert "max_connections" not in gateway_policy(9000) and "timeouts" not in gateway_policy(9000)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_one_second_run_prints_a_table_with_figures(tmp_path: Path):
    results = tmp_path / "RESULTS.md"
    out = bench("run", "full-memory", "--duration", "1", "--connections", "4", "--compare", "none",
                "--results", str(results))
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert set(rows) == {"direct", "gateway"}
    gateway = rows["gateway"]
    assert float(gateway["req/s"].replace(",", "")) > 0 and gateway["errors"] == "0", gateway
    assert float(gateway["CPU us/req"]) > 0 and gateway["added p50/p99 ms"] != "-"
    assert "full-memory: gateway" in out.stderr  # progress goes to stderr
    saved = results.read_text()
    assert "nproc" in saved and "Python" in saved and out.stdout in saved


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", AGENT_CHAT), ("/v1/messages", AGENT_MESSAGES)],
                         ids=["agent-chat", "agent-messages"])
def test_the_agent_turns_are_answered_under_the_bench_policy(make_gateway, upstream, path: str, body: str):
    assert 100_000 < len(body) < 150_000 and "'" not in body and "\\" not in body  # as they are in wrk's Lua
    gw = make_gateway(gateway_policy(upstream.port))
    request = urllib.request.Request(gw.url + path, data=body.encode(), headers={
        "Authorization": "Bearer sk-bench", "Content-Type": "application/json", "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(request, timeout=20) as resp:
        assert resp.status == 200
    assert len(upstream.requests[-1]["tools"]) == 24 and len(upstream.requests[-1]["messages"]) >= 100


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
                    reason="valgrind is not installed")
def test_instruction_counts_run_the_gateway_under_callgrind_and_print_one_figure_per_tree(tmp_path: Path):
    out = subprocess.run([sys.executable, "benchmarks/bench_instructions.py", "--rows", "hit", "--requests", "20",
                          "--warm", "5", "--tree", f"a={ROOT}", "--tree", f"b={ROOT}"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| hit ")]
    assert len(lines) == 1, out.stdout
    figures = [float(c.strip().removesuffix(" k").replace(",", "")) for c in lines[0].strip("|").split("|")[1:]]
    assert len(figures) == 2 and all(100 < k < 10_000 for k in figures), figures  # thousands a request
