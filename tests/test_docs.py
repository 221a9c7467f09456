"""The documents a newcomer reads first: they say what the code does and link only inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS = ["README.md", "CHANGELOG.md", "docs/policy.md", "docs/observability.md", "docs/guardrails.md", "docs/tracing.md", "benchmarks/README.md",
        "benchmarks/REFERENCE.md", "deploy/README.md"]


def _first_block(text: str) -> list[str]:
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_starts_with_two_commands_then_says_where_it_listens():
    text = (ROOT / "README.md").read_text()
    assert len(_first_block(text)) == 2
    intro = text.split("## Try it", 1)[0]
    assert "127.0.0.1" in intro and "--host 0.0.0.0" in intro
    steps = text.split("## Next steps", 1)[1].split("\n## ", 1)[0]
    for target in ("policies/reference.yaml", "#running-several-replicas", "admin.api_keys", "deploy/README.md"):
        assert target in steps, target


def test_documents_link_only_to_files_in_the_repository():
    for name in DOCS:
        doc = ROOT / name
        text = doc.read_text()
        assert "shared/BENCHMARKS" not in text, name
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{name}: {target}"
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert "../" not in script.read_text(), script.name


def test_deploy_readme_says_what_the_manifests_assume():
    text = (ROOT / "deploy" / "README.md").read_text()
    assert "docker build -f deploy/Dockerfile" in text and "docker push" in text
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert f"image: {container['image']}" in text  # the placeholder the README tells you to replace
    redis_url = next(e["value"] for e in container["env"] if e["name"] == "REDIS_URL")
    assert redis_url == "redis://redis:6379/0" and "Service named `redis`" in text and "REDIS_URL" in text
    assert "--host 0.0.0.0" in " ".join(container["args"])
    assert "--host 0.0.0.0" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_license_and_changelog():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "## [0.1.0]" in changelog
