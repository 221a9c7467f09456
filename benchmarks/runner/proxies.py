"""Starting what sits between the load and the mock: nothing (direct), bare, nginx, LiteLLM, the gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.runner.policies import gateway_policy, litellm_config, nginx_config
from benchmarks.runner.procs import Procs, free_port, wait_port

LITELLM_VENV = Path.home() / ".cache" / "llm-gateway-bench" / "litellm"
BASELINES = ("bare", "nginx", "litellm")
LITELLM_ENV = {  # quiet, no master key (loopback only), and its bundled data instead of fetching it at start-up
    "LITELLM_LOG": "ERROR", "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    **{f"LITELLM_LOCAL_{name}": "True" for name in ("MODEL_COST_MAP", "BLOG_POSTS", "ANTHROPIC_BETA_HEADERS",
                                                    "AUTOROUTER_PRESETS", "POLICY_TEMPLATES")},
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
}


class Unavailable(Exception):
    """This proxy can't run here; the message says why (printed in the table)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    name: str  # the row's label
    kind: str  # direct | bare | nginx | litellm | gateway
    src: Path | None = None  # gateway: the source tree put first on PYTHONPATH


@dataclass(frozen=True, slots=True)
class Setup:
    """What a proxy needs to start: where to log, the mock's port, CPUs, the scenario's state and workers."""

    procs: Procs
    folder: Path
    up: int
    cpus: str | None
    redis_url: str | None = None
    redis_pid: int | None = None  # its process group, for Redis's own CPU
    cache: bool = False
    workers: int = 1
    connections: int = 0  # idle streams: each worker's server and upstream pool connection caps
    hold_s: float = 0.0  # idle streams: how long they are held (no stall timeout before)
    limits: bool = True


@dataclass(frozen=True, slots=True)
class Running:
    port: int
    proc: subprocess.Popen  # leads the process group that CPU and RSS are read from


_litellm_failure: list[str] = []  # the install failed once this run: don't try again per scenario


def litellm_bin(progress: Callable[[str], None]) -> Path:
    """LiteLLM's proxy in its own virtualenv, installed on first use (never a project dependency)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    if _litellm_failure:
        raise Unavailable(_litellm_failure[0])
    progress(f"installing litellm[proxy] into {LITELLM_VENV} (once; a few minutes)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True,
                       timeout=300)
        out = subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                              "litellm[proxy]"], capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        _litellm_failure.append(f"unavailable: venv/pip failed: {exc}")
        raise Unavailable(_litellm_failure[0]) from exc
    if out.returncode != 0 or not exe.exists():
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        _litellm_failure.append(f"unavailable: pip install 'litellm[proxy]' failed: {tail[0][:160]}")
        raise Unavailable(_litellm_failure[0])
    return exe


Command = tuple[list[str], dict[str, str], float]  # argv, extra environment, seconds to wait for the port


def _bare(proxy: Proxy, setup: Setup, port: int, progress: Callable[[str], None]) -> Command:
    return [sys.executable, "-m", "benchmarks.runner.bare_proxy", str(port), f"http://127.0.0.1:{setup.up}"], {}, 30.0


def _nginx(proxy: Proxy, setup: Setup, port: int, progress: Callable[[str], None]) -> Command:
    if not shutil.which("nginx"):
        raise Unavailable("unavailable: no nginx binary (apt-get install nginx-light)")
    conf = setup.folder / "nginx.conf"
    conf.write_text(nginx_config(str(setup.folder), port, setup.up))
    return ["nginx", "-p", str(setup.folder), "-e", str(setup.folder / "nginx-error.log"), "-c", str(conf)], {}, 30.0


def _litellm(proxy: Proxy, setup: Setup, port: int, progress: Callable[[str], None]) -> Command:
    exe = litellm_bin(progress)
    conf = setup.folder / "litellm.yaml"
    conf.write_text(litellm_config(setup.up))
    args = [str(exe), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    return args, LITELLM_ENV, 180.0


def _gateway(proxy: Proxy, setup: Setup, port: int, progress: Callable[[str], None]) -> Command:
    policy = setup.folder / f"policy-{proxy.name}.yaml"
    policy.write_text(gateway_policy(setup.up, setup.redis_url, setup.cache, setup.connections,
                                    setup.hold_s, setup.limits))
    args = [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port), "--quiet"]
    if setup.workers > 1:
        args += ["--workers", str(setup.workers)]
    return args, {"PYTHONPATH": str(proxy.src)}, 60.0


COMMANDS = {"bare": _bare, "nginx": _nginx, "litellm": _litellm, "gateway": _gateway}


def start(proxy: Proxy, setup: Setup, progress: Callable[[str], None]) -> Running:
    """Start ``proxy`` pinned to the server CPUs; return once its port accepts connections."""
    port = free_port()
    args, env, timeout = COMMANDS[proxy.kind](proxy, setup, port, progress)
    proc = setup.procs.start(proxy.name, args, setup.cpus, env={**os.environ, **env}, cwd=setup.folder)
    try:
        wait_port(port, proc, timeout)
    except RuntimeError as exc:
        setup.procs.stop(proc)
        tail = setup.procs.log_tail(proxy.name, 20)
        progress(f"{proxy.name} did not start; the end of its log:\n{tail}")
        last = tail.strip().splitlines()[-1:] or [""]
        raise Unavailable(f"failed to start: {exc}: {last[0][-200:]}") from exc
    return Running(port, proc)
