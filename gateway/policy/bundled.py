"""The policies that ship inside the package, found with ``importlib.resources`` (a wheel has no checkout)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

QUICKSTART = "quickstart.yaml"
DEMO_KEY = "sk-demo-quickstart"


def bundled_policy(name: str = QUICKSTART) -> Path:
    """The file path of a bundled policy (the package is installed as files, never zipped)."""
    return Path(str(resources.files("gateway") / "data" / "policies" / name))


def is_bundled(source: str) -> bool:
    """Does ``source`` name a policy shipped with the package?"""
    folder = bundled_policy().parent.resolve()
    return Path(source).resolve().parent == folder
