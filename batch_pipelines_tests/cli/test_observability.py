"""What a batch costs and where it came from, through the real CLI: run_metrics of a real
import, lifecycle webhooks to a local receiver (events, order, signatures), the correlation
id on runs, events and webhooks, provenance per item, the Resources part of ``report``,
``stats`` now, ``metrics`` (parsed by prometheus_client), and no secret anywhere."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from batch_pipelines.core import webhooks
from batch_pipelines_tests.helpers import cli

pytestmark = pytest.mark.e2e

TOKEN = "hooktoken-3f9a1c7e55d2"
SECRET = "signing-key-b7e2d91c04aa"
LLM_KEY = "sk-llmkey-0c4d8e2f6a1b"


class Receiver:
    """A webhook endpoint on 127.0.0.1 keeping each request's raw body and headers."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((raw, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token={TOKEN}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        bodies = []
        for raw, headers in self.received:
            assert webhooks.verify(raw, SECRET, headers["X-Batch-Signature"]), headers
            bodies.append(json.loads(raw))
        return bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():  # noqa: ANN201
    r = Receiver()
    yield r
    r.close()


def _warehouse_text(path: Path) -> str:
    """Every row of every table of the warehouse, as text."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()]
        return "\n".join(
            str(con.execute(f'select * from "{t}"').fetchall()) for t in sorted(tables)
        )
    finally:
        con.close()


def test_webhooks_run_metrics_provenance_and_metrics(samples: Path, env, receiver) -> None:  # noqa: ANN001
    hooks = {
        "BATCH_PIPELINES_WEBHOOK_URL": receiver.url,
        "BATCH_PIPELINES_WEBHOOK_SECRET": SECRET,
        "BATCH_PIPELINES_LLM_API_KEY": LLM_KEY,
    }
    manifest = env.data / "m.yaml"
    manifest.write_text(
        "operation: import\ncorrelation_id: req-42\n"
        "options: {target_table: penguins}\nsettings: {chunk_size: 2}\n"
        "items_from: {glob: 'data/samples/penguins_*'}\n"
    )
    p = cli(env, "submit", str(manifest), "--wait", "--json", **hooks)
    assert p.returncode == 0, p.stderr
    batch = json.loads(p.stdout)
    batch_id = batch["batch_id"]
    assert batch["status"] == "completed" and batch["correlation_id"] == "req-42"
    logs = p.stdout + p.stderr

    # Lifecycle webhooks: in order, signed, with the correlation id and counts.
    events = receiver.events()
    assert [(e["event"], e.get("percent")) for e in events] == [
        ("batch.submitted", None),
        ("batch.started", None),
        ("batch.progress", 25),
        ("batch.progress", 50),
        ("batch.progress", 75),
        ("batch.completed", None),
    ]
    assert {e["batch_id"] for e in events} == {batch_id}
    assert {e["correlation_id"] for e in events} == {"req-42"}
    assert events[-1]["counts"]["succeeded"] == 6 and events[-1]["operation"] == "import"
    with duckdb.connect(str(env.warehouse), read_only=True) as con:
        deliveries = con.execute(
            "select event, delivered, attempt from webhook_deliveries order by delivery_id"
        ).fetchall()
        runs = con.execute(
            "select items, cpu_user_s + cpu_system_s, peak_rss_mb, read_bytes, queue_wait_s, "
            "correlation_id, code_version from run_metrics where batch_id = ?",
            [batch_id],
        ).fetchall()
    assert [d[0] for d in deliveries] == [e["event"] for e in events]
    assert all(d[1] and d[2] == 1 for d in deliveries)

    # run_metrics: one row per chunk run, written by the run, CPU and memory above zero.
    assert len(runs) == 3 and sum(r[0] for r in runs) == 6
    for _items, cpu, rss, read, wait, correlation, code in runs:
        assert cpu > 0 and rss > 0 and read > 0 and wait is not None and wait >= 0
        assert correlation == "req-42" and code.startswith("0.")

    # The correlation id is on the runs' tags too.
    from dagster import DagsterInstance, RunsFilter

    instance = DagsterInstance.get()
    try:
        records = instance.get_run_records(RunsFilter(tags={"batch/id": batch_id}))
        assert len(records) == 3
        assert {r.dagster_run.tags.get("batch/correlation_id") for r in records} == {"req-42"}
    finally:
        instance.dispose()

    # Provenance per item: same input + options + code is recognisable.
    p = cli(env, "items", batch_id, "--provenance", "--json")
    assert p.returncode == 0, p.stderr
    prov = json.loads(p.stdout)
    assert len(prov) == 6
    for row in prov:
        assert len(row["input_sha256"]) == 64 and len(row["options_hash"]) == 64
        assert row["code_version"] and row["dagster_version"] and row["duckdb_version"]
        assert row["run_id"] and row["attempt"] == 1 and row["correlation_id"] == "req-42"
    assert "input sha256" in cli(env, "items", batch_id, "--provenance").stdout

    # report: the Resources part and the batch's provenance record.
    p = cli(env, "report", batch_id)
    assert p.returncode == 0, p.stderr
    assert "resources (run_metrics)" in p.stdout and "run slots used over time" in p.stdout
    assert "req-42" in p.stdout and "options hash" in p.stdout
    report = json.loads(cli(env, "report", batch_id, "--json").stdout)
    assert report["resources"]["runs"] == 3 and report["resources"]["peak_rss_mb"] > 0
    assert report["resources"]["cpu_s_per_item"] > 0
    assert report["provenance"]["correlation_id"] == "req-42"
    assert report["provenance"]["versions"][0]["runs"] == 3

    # stats: what is queued and running now.
    stats = json.loads(cli(env, "stats", "--json").stdout)
    assert stats["now"]["queued_items"] == 0 and stats["now"]["running_runs"] == 0
    assert "queue depth" in cli(env, "stats").stdout

    # metrics: OpenMetrics text that Prometheus' own parser reads.
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    p = cli(env, "metrics")
    assert p.returncode == 0, p.stderr
    families = {f.name: f for f in text_string_to_metric_families(p.stdout)}
    items = {
        (s.labels["operation"], s.labels["status"]): s.value
        for s in families["batch_pipelines_items"].samples
    }
    assert items == {("import", "succeeded"): 6}
    duration = families["batch_pipelines_item_duration_seconds"]
    count = [s for s in duration.samples if s.name.endswith("_count")]
    assert count[0].value == 6
    assert "batch_pipelines_webhook_failures" in families
    assert "batch_pipelines_http_429" in families

    # No secret anywhere: warehouse, Dagster's storage (event log, run tags), CLI output.
    stored = _warehouse_text(env.warehouse)
    dagster_files = b"".join(
        f.read_bytes() for f in Path(env.dagster_home).rglob("*") if f.is_file()
    )
    for secret in (TOKEN, SECRET, LLM_KEY):
        assert secret not in stored
        assert secret.encode() not in dagster_files
        assert secret not in logs


def test_controls_reach_the_webhook_and_retries_are_recorded(samples: Path, env, receiver) -> None:  # noqa: ANN001
    hooks = {
        "BATCH_PIPELINES_WEBHOOK_URL": receiver.url,
        "BATCH_PIPELINES_WEBHOOK_SECRET": SECRET,
    }
    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/samples/penguins_2007.csv",
        "--option",
        "target_table=penguins",
        "--json",
        **hooks,
    )
    assert p.returncode == 0, p.stderr
    batch_id = json.loads(p.stdout)["batch_id"]
    for verb in ("pause", "resume", "cancel"):
        p = cli(env, verb, batch_id, **hooks)
        assert p.returncode == 0, p.stderr
    p = cli(env, "webhooks", "deliver", "--json", **hooks)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["delivered"] == 4
    assert [e["event"] for e in receiver.events()] == [
        "batch.submitted",
        "batch.paused",
        "batch.resumed",
        "batch.cancelled",
    ]
    p = cli(env, "webhooks", "list", "--batch", batch_id, "--json")
    rows = json.loads(p.stdout)
    assert len(rows) == 4 and all(r["delivered"] for r in rows)
    assert all(TOKEN not in json.dumps(r) for r in rows)
    # Events written later by other verbs flow out too: delete leaves batch_deleted.
    p = cli(env, "delete", batch_id, "--yes", **hooks)
    assert p.returncode == 0, p.stderr
    p = cli(env, "webhooks", "deliver", "--json", **hooks)
    assert p.returncode == 0 and json.loads(p.stdout)["delivered"] == 1, p.stdout + p.stderr
    deleted = receiver.events()[-1]
    assert deleted["event"] == "batch.deleted" and deleted["batch_id"] == batch_id
    # Nothing configured: a clear error, exit 2.
    p = cli(env, "webhooks", "deliver", BATCH_PIPELINES_WEBHOOK_URL="ftp://nowhere")
    assert p.returncode == 2 and "http(s) URLs" in p.stderr
