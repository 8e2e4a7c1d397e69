"""Hot reload of a bundle: verify fully, then swap atomically; a bad bundle never replaces a good one.

``verify_router`` loads the bundle (manifest, sizes, sha256s, feature spec: ``router.bundle``),
builds the ``Router`` (ONNX sessions), checks the catalogue against the deployed models and runs one
smoke decision that must not fall back. Only then does the caller swap its reference (one
assignment: in-flight requests finish on the old router). ``BundleWatcher`` polls a bundle
directory's manifest (mtime, size, sha256) so each gateway replica picks up a new bundle on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from router.bundle import MANIFEST, Bundle, load_bundle
from router.decision import Router
from router.errors import ArtifactError
from router.request import Message, Request

SMOKE_PROMPT = "Write a Python function that checks whether a string is a palindrome"


def verify_router(path: str | Path, deployed_models: Iterable[str], build: Callable[[Bundle], Router]) -> Router:
    """A ready ``Router`` for the bundle at ``path``, or ``ArtifactError`` naming the problem."""
    bundle = load_bundle(path)
    deployed = set(deployed_models)
    missing = [m for m in bundle.manifest.router.model_names if m not in deployed]
    if missing:
        raise ArtifactError(f"{path}: bundle routes to model(s) {missing} that are not deployed "
                            f"(deployed: {sorted(deployed)}); redeploy to add models")
    try:
        router = build(bundle)
    except Exception as e:  # an ONNX file that verifies by hash but does not load
        raise ArtifactError(f"{path}: could not build the router: {type(e).__name__}: {e}") from e
    before = router.n_fallbacks
    request = Request(messages=(Message("user", SMOKE_PROMPT),), tenant="__turnout_smoke__")
    decision = router.decide(request, now_s=0.0, rng=np.random.default_rng(0))
    if router.n_fallbacks != before or decision.model not in deployed:
        raise ArtifactError(f"{path}: smoke decision failed (model {decision.model!r}, policy {decision.policy!r}); "
                            "the classifier or policy does not produce usable output")
    return router


def manifest_signature(path: str | Path) -> str | None:
    """Changes whenever the manifest is rewritten; None when there is no manifest."""
    f = Path(path) / MANIFEST
    try:
        st = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
    except OSError:
        return None
    return f"{st.st_mtime_ns}:{st.st_size}:{digest}"


class BundleWatcher:
    """``changed()`` is True once per new manifest signature (bad or good: a refused bundle is not
    retried until the directory changes again)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.seen = manifest_signature(self.path)

    def changed(self) -> bool:
        sig = manifest_signature(self.path)
        if sig is None or sig == self.seen:
            return False
        self.seen = sig
        return True
