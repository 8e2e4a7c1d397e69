"""The bundle: ``manifest.json`` + ONNX files + ``cache_policy.json``, the only thing training hands
to serving.

``load_bundle`` verifies, before anything runs: the manifest parses and validates; every listed file
exists with its recorded size (truncation) and sha256 (corruption); the required files are listed;
the feature spec equals the one this code computes. Any failure is an ``ArtifactError`` naming the
file and both values, and a running server keeps its previous bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.config import RouterConfig, _Frozen
from router.errors import ArtifactError, FeatureMismatchError
from router.features import FEATURE_VERSION, feature_names, feature_spec_hash
from router.classifier import ClassifierInfo
from router.policy import PolicyInfo

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
REQUIRED_FILES = ("classifier.onnx", "policy.onnx", "cache_policy.json")


class FileEntry(_Frozen):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_format: int = MANIFEST_FORMAT
    bundle_version: str = Field(min_length=1)
    created_at: str
    feature_version: str
    feature_spec_hash: str
    feature_names: tuple[str, ...]
    router: RouterConfig
    classifier: ClassifierInfo
    policy: PolicyInfo
    files: dict[str, FileEntry]
    metrics: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def version(self) -> str:
        return self.manifest.bundle_version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle directory. Raises ``ArtifactError`` (or ``FeatureMismatchError``)."""
    path = Path(path)
    manifest = _read_manifest(path)
    _check_files(path, manifest)
    _check_features(path, manifest)
    return Bundle(path=path, manifest=manifest)


def _read_manifest(path: Path) -> Manifest:
    if not path.is_dir():
        raise ArtifactError(f"bundle directory not found: {path}")
    try:
        raw = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: no {MANIFEST}; not a turnout bundle") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path / MANIFEST}: not valid JSON ({e}); the manifest is corrupt or truncated") from e
    if isinstance(raw, dict) and raw.get("manifest_format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path / MANIFEST}: manifest_format {raw.get('manifest_format')!r}; this turnout reads {MANIFEST_FORMAT}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        raise ArtifactError(f"{path / MANIFEST}: invalid manifest: {problems}") from e


def _check_files(path: Path, manifest: Manifest) -> None:
    missing = [f for f in (*REQUIRED_FILES, *manifest.classifier.files) if f not in manifest.files]
    if missing:
        raise ArtifactError(f"{path / MANIFEST}: required file(s) {missing} not listed")
    for name, entry in manifest.files.items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{path}: {name} is listed in the manifest but missing")
        size = f.stat().st_size
        if size != entry.bytes:
            raise ArtifactError(f"{f}: size {size} bytes, manifest says {entry.bytes} (truncated or replaced)")
        actual = sha256_file(f)
        if actual != entry.sha256:
            raise ArtifactError(f"{f}: sha256 {actual[:12]}… does not match manifest {entry.sha256[:12]}… (corrupt or replaced)")


def _check_features(path: Path, manifest: Manifest) -> None:
    taxonomy = manifest.router.taxonomy
    if manifest.feature_version != FEATURE_VERSION or manifest.feature_spec_hash != feature_spec_hash(taxonomy):
        raise FeatureMismatchError(
            f"{path}: bundle feature spec v{manifest.feature_version} ({manifest.feature_spec_hash}) differs from this "
            f"code's v{FEATURE_VERSION} ({feature_spec_hash(taxonomy)}); retrain the bundle with this turnout version"
        )
    if tuple(manifest.feature_names) != feature_names(taxonomy):
        raise FeatureMismatchError(f"{path}: manifest feature_names differ from router.features.feature_names")
    if tuple(manifest.classifier.taxonomy) != tuple(taxonomy):
        raise ArtifactError(f"{path}: classifier taxonomy {list(manifest.classifier.taxonomy)} differs from the "
                            f"router taxonomy {list(taxonomy)}")
    if manifest.policy.n_context != len(manifest.feature_names):
        raise FeatureMismatchError(f"{path}: policy expects {manifest.policy.n_context} context features; "
                                   f"the feature spec has {len(manifest.feature_names)}")
    if set(manifest.policy.models) != set(manifest.router.model_names):
        raise ArtifactError(
            f"{path}: policy models {list(manifest.policy.models)} differ from the catalogue {list(manifest.router.model_names)}"
        )


def write_bundle(
    out_dir: str | Path,
    files: dict[str, bytes],
    *,
    router: RouterConfig,
    classifier: ClassifierInfo,
    policy: PolicyInfo,
    metrics: dict[str, Any] | None = None,
    bundle_version: str | None = None,
) -> Bundle:
    """Write files + manifest into a temp dir beside ``out_dir``, verify, then swap it in."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc)
    manifest = Manifest(
        bundle_version=bundle_version or created.strftime("%Y%m%dT%H%M%SZ"),
        created_at=created.isoformat(),
        feature_version=FEATURE_VERSION,
        feature_spec_hash=feature_spec_hash(router.taxonomy),
        feature_names=feature_names(router.taxonomy),
        router=router,
        classifier=classifier,
        policy=policy,
        files={n: FileEntry(sha256=hashlib.sha256(b).hexdigest(), bytes=len(b)) for n, b in files.items()},
        metrics=metrics or {},
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; serving processes may run as another user
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        load_bundle(tmp)
        # swap by two renames: the path lacks a bundle only between them (not for a whole rmtree); a
        # reader that catches that instant fails to load and keeps its previous bundle (serving.reload)
        old = out_dir.with_name(f"{tmp.name}-old") if out_dir.exists() else None
        if old is not None:
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old is not None:  # put the previous bundle back before reporting the failure
                os.replace(old, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful replace
    return load_bundle(out_dir)
