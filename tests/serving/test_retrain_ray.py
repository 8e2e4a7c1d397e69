"""``turnout retrain --ray`` on the session's Ray cluster gives the local job's outputs.

With one Ray Train worker the LightGBM rows arrive in the local order and the bootstrap chunks use the
same seeds, so the decision is identical and every estimate agrees within ``TOL`` (measured: equal to
the last bit; the tolerance allows for float summation order in other LightGBM builds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.retrain import RetrainSettings, retrain

TOL = 1e-6
SETTINGS = RetrainSettings(refit_classifier=False, n_bootstrap=100)


@pytest.fixture(scope="module")
def inputs(world, bundle, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from training.bundle_builder import retrain_policy
    from training.simulator import write_simulation

    d = tmp_path_factory.mktemp("retrain-ray")
    write_simulation(world, 30, d / "few", seed=1)
    v1 = retrain_policy(d / "few", bundle, d / "v1", bundle_version="weak-v1")  # few logs: a weak policy
    write_simulation(world, 1500, d / "logs", seed=21)
    return d, v1


def test_ray_job_matches_local_job(serve_app, inputs) -> None:  # type: ignore[no-untyped-def]
    import ray

    from training.retrain_ray import RayBackend

    assert ray.is_initialized()  # the session cluster (serve_app), not a second one
    d, v1 = inputs
    local = retrain(d / "logs", v1, d / "out-local", settings=SETTINGS)
    remote = retrain(d / "logs", v1, d / "out-ray", settings=SETTINGS, backend=RayBackend(cpus_per_worker=0.3))
    assert remote.details["backend"] == "ray" and local.details["backend"] == "local"
    assert remote.decision == local.decision == "promote", (local.reason, remote.reason)
    assert remote.details["steps"]["policy"] == local.details["steps"]["policy"]
    for metric, m in local.details["ope"]["metrics"].items():
        r = remote.details["ope"]["metrics"][metric]
        for who in ("current", "candidate"):
            for est, v in m[who].items():
                for k in ("estimate", "ci_low", "ci_high"):
                    assert r[who][est][k] == pytest.approx(v[k], abs=TOL), (metric, who, est, k)
        for k in ("estimate", "ci_low", "ci_high"):
            assert r["difference"][k] == pytest.approx(m["difference"][k], abs=TOL), (metric, k)
    assert Path(remote.bundle, "policy.onnx").read_bytes() == Path(local.bundle, "policy.onnx").read_bytes() or \
        remote.details["steps"]["policy"].startswith("linucb")


def test_ray_read_reports_schema_errors(serve_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    from router.errors import LogSchemaError
    from training.retrain_ray import RayBackend

    pq.write_table(pa.table({"request_id": ["a"], "propensity": [0.5]}), tmp_path / "part-x.parquet")
    with pytest.raises(LogSchemaError, match="missing field"):
        RayBackend().read_table(str(tmp_path), lambda _: None)
