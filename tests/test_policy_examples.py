"""The example policies validate and serve with only their keys in the environment; every provider
type of the registry has its section in docs/providers.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.providers.registry import COMPATIBLE, PROVIDER_TYPES
from tests.support.harness import Gateway, ServerThread

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
KEYS = {"openai.yaml": {"OPENAI_API_KEY": "sk-test"}, "anthropic.yaml": {"ANTHROPIC_API_KEY": "sk-ant-test"},
        "gemini.yaml": {"GEMINI_API_KEY": "gemini-test"}}


def _env(name: str) -> dict[str, str]:
    """A bare environment: only what Python needs plus the example's own keys."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "SYSTEMROOT")}
    return {**keep, "PYTHONPATH": str(ROOT), **KEYS.get(name, {})}


def test_every_example_validates_with_only_its_keys_set() -> None:
    assert {"openai.yaml", "anthropic.yaml", "gemini.yaml", "bedrock.yaml"} <= {p.name for p in EXAMPLES}
    for path in EXAMPLES:
        done = subprocess.run([sys.executable, "-m", "gateway", "validate", str(path)], env=_env(path.name),
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, (path.name, done.stdout, done.stderr)


@pytest.mark.parametrize("name", ["openai.yaml", "anthropic.yaml"])
def test_provider_examples_serve_with_only_the_key(name: str, tmp_path: Path) -> None:
    policy = tmp_path / name
    policy.write_text((ROOT / "policies" / name).read_text())
    thread = ServerThread()
    gw = Gateway(thread, policy, env=KEYS[name]).start()
    try:
        assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
        models = httpx.get(gw.base_url + "/models", timeout=5, headers={"authorization": f"Bearer sk-{name[:-5]}-demo"})
        assert models.status_code == 200 and models.json()["data"]
        assert "sk-test" not in httpx.get(gw.url + "/readyz", timeout=5).text
    finally:
        gw.stop()
        thread.close()


def test_every_provider_type_has_a_docs_section() -> None:
    text = (ROOT / "docs" / "providers.md").read_text()
    headings = set(re.findall(r"^## (\S+)", text, re.M))
    presets = text.split("## OpenAI-compatible presets", 1)[1].split("\n## ", 1)[0]
    for kind in PROVIDER_TYPES:
        if kind in COMPATIBLE:
            assert f"`{kind}`" in presets, kind
        else:
            assert kind in headings, f"docs/providers.md has no '## {kind}' section"
