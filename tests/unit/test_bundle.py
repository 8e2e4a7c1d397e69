"""router.bundle: the fixture bundle loads; every corruption is refused with a message that names it;
write_bundle swaps a verified bundle in."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from router.bundle import MANIFEST, REQUIRED_FILES, Bundle, load_bundle, sha256_file, write_bundle
from router.errors import ArtifactError, FeatureMismatchError
from router.features import FEATURE_VERSION, feature_names, feature_spec_hash


@pytest.fixture
def copy(bundle: Bundle, tmp_path: Path) -> Path:
    """A private copy of the session bundle, safe to corrupt."""
    return Path(shutil.copytree(bundle.path, tmp_path / "bundle"))


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def _save_manifest(path: Path, data: dict[str, Any]) -> None:
    (path / MANIFEST).write_text(json.dumps(data, indent=2), encoding="utf-8")


def test_fixture_bundle_loads(bundle: Bundle) -> None:
    loaded = load_bundle(bundle.path)
    m = loaded.manifest
    assert loaded.version == "test-1"
    assert set(REQUIRED_FILES) <= set(m.files)
    assert m.feature_version == FEATURE_VERSION
    assert m.feature_spec_hash == feature_spec_hash(m.router.taxonomy)
    assert m.feature_names == feature_names(m.router.taxonomy)
    assert set(m.policy.models) == set(m.router.model_names)
    for name, entry in m.files.items():
        assert sha256_file(loaded.file(name)) == entry.sha256
        assert loaded.file(name).stat().st_size == entry.bytes


def test_a_copy_loads(copy: Path) -> None:
    assert load_bundle(copy).version == "test-1"


# --- refusals -------------------------------------------------------------------------------------


def _flip_byte(p: Path) -> None:
    f = p / "classifier.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate_policy(p: Path) -> None:
    f = p / "policy.onnx"
    f.write_bytes(f.read_bytes()[:-10])


def _delete_cache_policy(p: Path) -> None:
    (p / "cache_policy.json").unlink()


def _extra_listed_file(p: Path) -> None:
    m = _manifest(p)
    m["files"]["replicas.onnx"] = {"sha256": "0" * 64, "bytes": 10}
    _save_manifest(p, m)


def _manifest_not_json(p: Path) -> None:
    (p / MANIFEST).write_text("this is not json {", encoding="utf-8")


def _manifest_truncated(p: Path) -> None:
    raw = (p / MANIFEST).read_bytes()
    (p / MANIFEST).write_bytes(raw[: len(raw) // 2])


def _manifest_missing(p: Path) -> None:
    (p / MANIFEST).unlink()


def _manifest_format_99(p: Path) -> None:
    m = _manifest(p)
    m["manifest_format"] = 99
    _save_manifest(p, m)


def _required_not_listed(p: Path) -> None:
    m = _manifest(p)
    del m["files"]["policy.onnx"]
    _save_manifest(p, m)


def _manifest_extra_key(p: Path) -> None:
    m = _manifest(p)
    m["surprise"] = True
    _save_manifest(p, m)


def _policy_models_differ(p: Path) -> None:
    m = _manifest(p)
    m["policy"]["models"] = ["small", "medium"]
    _save_manifest(p, m)


REFUSALS: list[tuple[str, Callable[[Path], None], str]] = [
    ("flipped-byte", _flip_byte,
     r"classifier\.onnx: sha256 [0-9a-f]{12}… does not match manifest [0-9a-f]{12}… \(corrupt or replaced\)"),
    ("truncated", _truncate_policy, r"policy\.onnx: size \d+ bytes, manifest says \d+ \(truncated or replaced\)"),
    ("deleted-cache-policy", _delete_cache_policy, r": cache_policy\.json is listed in the manifest but missing"),
    ("extra-missing-file", _extra_listed_file, r": replicas\.onnx is listed in the manifest but missing"),
    ("manifest-not-json", _manifest_not_json, r"manifest\.json: not valid JSON \(.*\); the manifest is corrupt or truncated"),
    ("manifest-truncated", _manifest_truncated, r"manifest\.json: not valid JSON \(.*\); the manifest is corrupt or truncated"),
    ("manifest-missing", _manifest_missing, r": no manifest\.json; not a turnout bundle"),
    ("manifest-format-99", _manifest_format_99, r"manifest\.json: manifest_format 99; this turnout reads 1"),
    ("required-not-listed", _required_not_listed, r"manifest\.json: required file\(s\) \['policy\.onnx'\] not listed"),
    ("manifest-extra-key", _manifest_extra_key, r"manifest\.json: invalid manifest: surprise: Extra inputs are not permitted"),
    ("policy-models-differ", _policy_models_differ, r"policy models \['small', 'medium'\] differ from the catalogue"),
]


@pytest.mark.parametrize(("corrupt", "pattern"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_corrupt_bundle_is_refused(copy: Path, corrupt: Callable[[Path], None], pattern: str) -> None:
    corrupt(copy)
    with pytest.raises(ArtifactError) as exc:
        load_bundle(copy)
    assert not isinstance(exc.value, FeatureMismatchError)
    assert re.search(pattern, str(exc.value)), str(exc.value)
    assert str(copy) in str(exc.value)


def test_flipped_byte_keeps_the_size(copy: Path) -> None:
    before = (copy / "classifier.onnx").stat().st_size
    _flip_byte(copy)
    assert (copy / "classifier.onnx").stat().st_size == before


@pytest.mark.parametrize(("key", "value"), [("feature_version", "0"), ("feature_spec_hash", "deadbeefdeadbeef")])
def test_feature_spec_mismatch(copy: Path, key: str, value: str) -> None:
    m = _manifest(copy)
    m[key] = value
    _save_manifest(copy, m)
    with pytest.raises(FeatureMismatchError, match=r"bundle feature spec v\S+ \(\S+\) differs from this code's "
                                                   rf"v{FEATURE_VERSION} .*retrain the bundle"):
        load_bundle(copy)


def test_feature_names_mismatch(copy: Path) -> None:
    m = _manifest(copy)
    m["feature_names"] = list(reversed(m["feature_names"]))
    _save_manifest(copy, m)
    with pytest.raises(FeatureMismatchError, match="manifest feature_names differ"):
        load_bundle(copy)


def test_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "bundle.tar"
    f.write_bytes(b"x")
    with pytest.raises(ArtifactError, match=re.escape(f"bundle directory not found: {f}")):
        load_bundle(f)
    with pytest.raises(ArtifactError, match="bundle directory not found"):
        load_bundle(tmp_path / "absent")


# --- write_bundle ------------------------------------------------------------------------------


def _files(b: Bundle) -> dict[str, bytes]:
    return {n: b.file(n).read_bytes() for n in b.manifest.files}


def test_write_bundle_over_an_existing_bundle(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "live"
    m = bundle.manifest
    first = write_bundle(out, _files(bundle), router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v1")
    assert first.version == "v1"
    second = write_bundle(out, _files(bundle), router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v2",
                          metrics={"note": "second"})
    assert second.path == out.resolve()
    loaded = load_bundle(out)
    assert loaded.version == "v2" and loaded.manifest.metrics == {"note": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]  # no temp directories left beside it
    assert sorted(os.listdir(out)) == sorted([*bundle.manifest.files, MANIFEST])


def test_failed_write_keeps_the_previous_bundle(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "live"
    m = bundle.manifest
    write_bundle(out, _files(bundle), router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v1")
    incomplete = {k: v for k, v in _files(bundle).items() if k != "policy.onnx"}
    with pytest.raises(ArtifactError, match=r"required file\(s\) \['policy\.onnx'\] not listed"):
        write_bundle(out, incomplete, router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v2")
    assert load_bundle(out).version == "v1"


def test_failed_write_leaves_no_temp_directory(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "live"
    m = bundle.manifest
    incomplete = {k: v for k, v in _files(bundle).items() if k != "policy.onnx"}
    with pytest.raises(ArtifactError):
        write_bundle(out, incomplete, router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v2")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_swap_puts_the_previous_bundle_back(bundle: Bundle, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """write_bundle moves the live bundle aside, then renames the new one in; if that rename fails the
    live bundle is moved back before the error surfaces (never a path without a bundle)."""
    import router.bundle as rb

    out = tmp_path / "live"
    m = bundle.manifest
    write_bundle(out, _files(bundle), router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v1")
    real, calls = os.replace, []

    def second_fails(src: Any, dst: Any) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError("rename refused")
        real(src, dst)

    monkeypatch.setattr(rb.os, "replace", second_fails)
    with pytest.raises(OSError, match="rename refused"):
        write_bundle(out, _files(bundle), router=m.router, classifier=m.classifier, policy=m.policy, bundle_version="v2")
    monkeypatch.undo()
    assert len(calls) == 3 and calls[2][1] == "live"  # aside, (refused) in, back
    assert load_bundle(out).version == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]
