"""A normal (non-editable) install works: build the wheel, install it in a fresh venv, serve a request.

The venv lives in ``tmp_path`` with ``--system-site-packages`` (the dependencies are already there, so
nothing is downloaded for them) and the gateway runs from a working directory outside the checkout
with no ``PYTHONPATH``, so only the installed wheel can be imported: the bundled policy must come
from the package data, and its relative state paths must land in the working directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "gateway")

pytestmark = pytest.mark.timeout(240)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "GATEWAY_POLICY", "GATEWAY_STATE_DIR", "PROMETHEUS_MULTIPROC_DIR",
                        "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel built from this checkout installed; its ``bin`` folder."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SHIPPED:  # a copy: building in the checkout would leave build/ and *.egg-info there
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = _clean_env()
    venv = base / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                          env=env, capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"python -m venv is unavailable: {made.stderr.strip()[-300:]}")
    python = venv / "bin" / "python"
    wheels = base / "dist"
    _run([str(python), "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], base, env, 180)
    (wheel,) = wheels.glob("llm_gateway-*.whl")
    # --ignore-installed: a checkout installed in the system site-packages must not count as "already there"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)], base, env, 120)
    return venv / "bin"


def test_wheel_ships_the_bundled_policy_and_imports_from_the_venv(installed: Path, tmp_path: Path):
    where = _run([str(installed / "python"), "-c",
                  "import gateway, gateway.policy.bundled as b; print(gateway.__file__); print(b.bundled_policy())"],
                 tmp_path, _clean_env(), 60).split()
    venv = installed.parent.resolve()
    assert all(Path(p).resolve().is_relative_to(venv) for p in where), where
    assert Path(where[1]).is_file() and Path(where[1]).name == "quickstart.yaml"
    assert (Path(where[1]).parents[1] / "prices.yaml").is_file()  # gateway/data/*.yaml
    # the bundled policy's relative state paths land in the working directory, not in site-packages
    paths = _run([str(installed / "python"), "-c",
                  "from gateway.policy.bundled import bundled_policy as b; from gateway.policy.loader import "
                  "load_policy; p = load_policy(str(b())); print(p.state.dlq_path); print(p.logging.audit_path)"],
                 tmp_path, _clean_env(), 60).split()
    assert paths == [str(tmp_path.resolve() / "gateway-dlq.jsonl"), str(tmp_path.resolve() / "gateway-audit.jsonl")]


def test_installed_gateway_serves_the_quickstart_and_knows_its_version(installed: Path, tmp_path: Path):
    version = _run([str(installed / "gateway"), "--version"], tmp_path, _clean_env(), 60).strip()
    assert version == "gateway 0.1.0"
    port = free_port()
    proc = subprocess.Popen([str(installed / "gateway"), "serve", "--port", str(port)], cwd=tmp_path,
                            env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited: {proc.communicate()[0][-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not start within 60 s"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo-quickstart",
                               max_retries=0, timeout=20)
        out = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content == "Mock answer to: hi"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            banner, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            banner, _ = proc.communicate()
    assert "sk-demo-quickstart" in banner
    assert str(installed.parent.resolve()) in banner  # the policy read is the installed one
