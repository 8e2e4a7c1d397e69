"""Shared by the Serve tests: the session app's API keys and a bundle copier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

KEYS = {"acme": "sk-test-acme", "tiny": "sk-test-tiny", "other": "sk-test-other"}


def auth(tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def copy_bundle(src: Path, dst: Path, version: str) -> Path:
    """A valid bundle with another bundle_version (the manifest is not among its hashed files)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["bundle_version"] = version
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst
