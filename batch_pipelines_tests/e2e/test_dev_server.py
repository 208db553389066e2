"""The ``dagster dev`` harness itself: it starts the real UI + daemon on loopback, sees the
code location loaded with the import job and the default-running sensors, and leaves no
process behind when it stops (a leaked server would hold ports and DuckDB files)."""

from __future__ import annotations

import os

import pytest

from batch_pipelines.app.devserver import dagster_dev, group_members, stragglers

pytestmark = pytest.mark.e2e


def test_dagster_dev_starts_loads_location_and_tears_down(env) -> None:  # noqa: ANN001
    with dagster_dev(env, dagster_yaml={"concurrency": {"runs": {"max_concurrent_runs": 3}}}) as s:
        status, body = s.get("/server_info")
        assert status == 200 and b"dagster_webserver_version" in body

        repo = s.location()
        jobs = {j["name"] for j in repo["jobs"]}
        assert "import_job" in jobs and "submit_batch" in jobs
        sensors = {x["name"]: x["sensorState"]["status"] for x in repo["sensors"]}
        assert sensors["inbox_sensor"] == "RUNNING"
        assert sensors["batch_dispatcher"] == "RUNNING"

        # Overrides are deep-merged into the project's dagster.yaml: siblings survive.
        text = (env.dagster_home / "dagster.yaml").read_text()
        assert "max_concurrent_runs: 3" in text and "tag_concurrency_limits" in text

        pid = s.process.pid
        assert os.getpgid(pid) == pid  # its own group, so teardown reaches every child
        assert stragglers(env.dagster_home)

    assert s.process.poll() is not None
    assert group_members(pid) == []
    assert stragglers(env.dagster_home) == []


def test_dev_server_fixture(dev_server) -> None:  # noqa: ANN001
    assert dev_server.graphql("{ version }")["version"]
