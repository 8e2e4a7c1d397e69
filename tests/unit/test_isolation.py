"""router/ must run from the ONNX files alone: importing it pulls in no Ray and no training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROUTER_MODULES = ("router", "router.decision", "router.bundle", "router.cache", "router.policy", "router.replica",
                  "router.log_schema", "router.config", "router.features", "router.request", "router.classifier",
                  "router.onnx_session", "router.errors", "router.types", "router.ood", "router.encoder",
                  "router.online")
FORBIDDEN = ("ray", "sklearn", "xgboost", "lightgbm", "torch")

SCRIPT = f"""
import importlib, json, sys
for name in {ROUTER_MODULES!r}:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r}))
print(json.dumps(loaded))
"""


def test_router_imports_no_training_or_serving_stack() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_check_would_notice_a_forbidden_import() -> None:
    """Guards the test itself: the same script reports a forbidden module once something imports it."""
    script = "import sklearn\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["sklearn"]
