"""Benchmark of slow, I/O-bound items: annotate over HTTP against a local LLM server.

A local OpenAI-compatible server (:class:`LLMServer`, run in a process of its own so that it
does not share the client's interpreter) answers ``POST /v1/chat/completions`` after
``latency`` seconds, and answers ``429`` at once, with ``Retry-After``, to any request that
arrives while ``overload_above`` requests are already being served: a server whose real
capacity the client has to find. ``GET /stats`` returns its counters.

An ``annotate`` batch of ``items`` short texts (``BATCH_PIPELINES_ANNOTATOR=openai``) is
submitted and run in a fresh Python process with ``run_batch_in_process`` (what
``batch-pipelines submit --wait`` does: Dagster runs, the ledger, the warehouse; no daemon),
with ``settings.item_concurrency`` when the engine has it, and the endpoint limits
``BATCH_PIPELINES_LLM_MAX_IN_FLIGHT`` / ``BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE``. The ideal
rate is ``overload_above / latency`` items per second (the server's capacity).

    python -m bench.slow_items --items 1000 --item-concurrency 64 --max-in-flight 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import urlopen

REPO = Path(__file__).resolve().parent.parent
REPLY = {
    "language": "en",
    "keywords": ["interest rates", "inflation"],
    "category": "finance",
    "summary": "Rates stay.",
    "confidence": 0.9,
}


# ------------------------------------------------------------------------------ the server


class LLMServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat-completions server with a fixed latency and a capacity."""

    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: a burst of connections is not refused

    def __init__(
        self, latency_s: float, overload_above: int, retry_after: str, retry_after_ms: str = ""
    ) -> None:
        self.latency_s = latency_s
        self.overload_above = overload_above
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "ok": 0, "throttled": 0, "in_flight": 0, "max_in_flight": 0}
        # On the machine's monotonic clock (shared by the client's process): where the time
        # between submit and the batch's end went.
        self.stats.update(first_request_at=None, last_answer_at=None)
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: LLMServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        with self.server.lock:
            self._send(200, dict(self.server.stats))

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server, stats = self.server, self.server.stats
        with server.lock:
            if stats["first_request_at"] is None:
                stats["first_request_at"] = time.monotonic()
            stats["requests"] += 1
            over = stats["in_flight"] >= server.overload_above
            if over:
                stats["throttled"] += 1
            else:
                stats["in_flight"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        if over:
            headers = {"Retry-After": server.retry_after}
            if server.retry_after_ms:
                headers["retry-after-ms"] = server.retry_after_ms
            self._send(429, {"error": "overloaded"}, headers)
            with server.lock:
                stats["last_answer_at"] = time.monotonic()
            return
        try:
            time.sleep(server.latency_s)
            content = json.dumps(REPLY)
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})
        finally:
            with server.lock:
                stats["in_flight"] -= 1
                stats["ok"] += 1
                stats["last_answer_at"] = time.monotonic()


def serve(latency_s: float, overload_above: int, retry_after: str, retry_after_ms: str) -> None:
    """Serve until stdin closes; the first line on stdout is the port."""
    server = LLMServer(latency_s, overload_above, retry_after, retry_after_ms)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_port, flush=True)
    sys.stdin.read()
    server.shutdown()


# ----------------------------------------------------------------------------- the client


def manifest(n: int, item_concurrency: int | None, chunk_size: int | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {"max_retries": 2, "retry_base_delay_s": 0.1}
    if item_concurrency:
        settings["item_concurrency"] = item_concurrency
    if chunk_size:
        settings["chunk_size"] = chunk_size
    return {
        "operation": "annotate",
        "name": f"bench slow items ({n})",
        "settings": settings,
        "items": [{"id": f"t{i:06d}", "text": f"The bank raised rates ({i})."} for i in range(n)],
    }


def has_item_concurrency() -> bool:
    from batch_pipelines.core.execution import ExecutionSettings

    return "item_concurrency" in ExecutionSettings.model_fields


def threads_over_run_item(n: int, threads: int) -> dict[str, Any]:
    """For an engine without ``item_concurrency``: the batch's items through ``run_item``
    (the handler, its retries and the annotator resource) on a pool of ``threads``, no
    Dagster run and no commit."""
    from concurrent.futures import ThreadPoolExecutor

    from batch_pipelines.core import config
    from batch_pipelines.core.execution import ExecutionSettings, WorkItem, run_item
    from batch_pipelines.defs.resources import AnnotatorResource
    from batch_pipelines.operations import REGISTRY

    spec = REGISTRY["annotate"]
    m = manifest(n, None)
    settings = ExecutionSettings.model_validate(m["settings"])
    options = spec.options_model.model_validate({})
    paths = config.get_paths()
    resources = {"annotator": AnnotatorResource()}
    work = [WorkItem("bench", it["id"], it["id"], it) for it in m["items"]]

    def one(w: WorkItem) -> str:
        pending = run_item(
            spec, w, options, settings, run_id=None, paths=paths, resources=resources
        )
        return str(pending.outcome.status)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(one, work))
    return {
        "seconds": time.perf_counter() - start,
        "status": "threads over run_item",
        "succeeded": statuses.count("succeeded"),
        "failed": statuses.count("failed"),
    }


def step_run(n: int, item_concurrency: int | None, chunk_size: int | None = None) -> dict[str, Any]:
    """In the bench's child process: submit the batch, run it here, read the limits back."""
    from dagster import DagsterInstance

    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.definitions import defs

    if item_concurrency and not has_item_concurrency():
        out = threads_over_run_item(n, item_concurrency)
    else:
        instance = DagsterInstance.get()
        # The instance's warehouse exists before any batch (``make run`` creates it): its
        # creation and migrations (about 1 s) are no cost of this batch's items.
        from batch_pipelines.core import config, warehouse

        with warehouse.connect(config.get_paths().warehouse):
            pass
        started_at = time.monotonic()
        batch_id = submit_batch(manifest(n, item_concurrency, chunk_size), instance=instance)
        batch = run_batch_in_process(batch_id, instance, defs)
        ended_at = time.monotonic()
        out = {
            "chunk_size": batch["settings"].get("chunk_size"),
            "seconds": ended_at - started_at,
            "started_at": started_at,
            "ended_at": ended_at,
            "status": batch["status"],
            "succeeded": batch["succeeded_items"],
            "failed": batch["failed_items"],
        }
    try:
        from batch_pipelines.core import limits
    except ImportError:  # an engine without shared endpoint limits
        return out
    endpoints = limits.endpoint_stats()
    if endpoints:
        out["limits"] = endpoints[0]
    return out


def run(
    items: int = 1000,
    latency_ms: float = 250.0,
    overload_above: int = 32,
    retry_after: str = "1",
    retry_after_ms: str = "250",
    item_concurrency: int | None = 64,
    max_in_flight: int | None = 64,
    requests_per_minute: int | None = 60000,
    storage: str = "batched",
    chunk_size: int | None = None,
) -> dict[str, Any]:
    from batch_pipelines.app.devserver import write_dagster_yaml
    from bench.fanout import make_run_settings

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.slow_items",
            "--serve",
            "--latency-ms",
            str(latency_ms),
            "--overload-above",
            str(overload_above),
            "--retry-after",
            retry_after,
            "--retry-after-ms",
            retry_after_ms,
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory(prefix="bench-slow-items-") as tmp:
            root = Path(tmp)
            data, home = root / "data", root / "dagster_home"
            (data / "inbox").mkdir(parents=True)
            home.mkdir()
            # The instance storage of `make run` (event batches in one transaction), not
            # Dagster's stock SQLite storage that writes each event on its own.
            storage_yaml, storage_env = make_run_settings(storage)
            write_dagster_yaml(home, storage_yaml)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("BATCH_PIPELINES_") and k != "DAGSTER_HOME"
            }
            env.update(
                {
                    "BATCH_PIPELINES_DATA": str(data),
                    "DAGSTER_HOME": str(home),
                    "PYTHONPATH": str(REPO),
                    "BATCH_PIPELINES_ANNOTATOR": "openai",
                    "BATCH_PIPELINES_LLM_BASE_URL": f"{url}/v1",
                    "BATCH_PIPELINES_LLM_MODEL": "bench",
                    **storage_env,
                }
            )
            if max_in_flight:
                env["BATCH_PIPELINES_LLM_MAX_IN_FLIGHT"] = str(max_in_flight)
            if requests_per_minute:
                env["BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE"] = str(requests_per_minute)
            load = os.getloadavg()[0]
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.slow_items",
                    "--step",
                    json.dumps(
                        {"n": items, "item_concurrency": item_concurrency, "chunk_size": chunk_size}
                    ),
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"bench run failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        with urlopen(f"{url}/stats", timeout=10) as response:
            result["server"] = json.loads(response.read())
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(10)
    result.update(
        items=items,
        latency_ms=latency_ms,
        overload_above=overload_above,
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
        item_concurrency=item_concurrency,
        max_in_flight=max_in_flight,
        requests_per_minute=requests_per_minute,
        storage=storage,
        load=load,
        ideal=overload_above / (latency_ms / 1000),
    )
    return result


def markdown(r: dict[str, Any]) -> str:
    rate = r["items"] / r["seconds"]
    server = r["server"]
    throttled = server["throttled"] / server["requests"] if server["requests"] else 0.0
    limits = r.get("limits") or {}
    cap = limits.get("cap", "n/a")
    mode = " (threads over run_item)" if r["status"] == "threads over run_item" else ""
    headers = f"`Retry-After: {r['retry_after']}`" + (
        f" and `retry-after-ms: {r['retry_after_ms']}`" if r.get("retry_after_ms") else ""
    )
    return (
        f"Server: {r['latency_ms']:g} ms per answer, 429 ({headers}) above "
        f"{r['overload_above']} requests at once; "
        f"`BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE` {r['requests_per_minute'] or 'default'}.\n\n"
        "| items | chunk size | item_concurrency | MAX_IN_FLIGHT | seconds | items/s | ideal items/s | "
        "ratio to ideal | failed | requests | 429 % | max in flight at the server | "
        "final cap | load |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |\n"
        f"| {r['items']:,} | {r.get('chunk_size') or '-'} | {r['item_concurrency'] or 1}{mode} | {r['max_in_flight'] or 'default'} "
        f"| {r['seconds']:.1f} | {rate:.1f} | {r['ideal']:.0f} | {rate / r['ideal']:.2f} "
        f"| {r['failed']} | {server['requests']:,} | {100 * throttled:.1f} "
        f"| {server['max_in_flight']} | {cap} | {r['load']:.1f} |\n" + _phases(r)
    )


def _phases(r: dict[str, Any]) -> str:
    """Where the seconds went: before the first request, the server busy, after the last
    answer (one monotonic clock for both processes on Linux)."""
    server = r["server"]
    first, last = server.get("first_request_at"), server.get("last_answer_at")
    if first is None or last is None or "started_at" not in r:
        return ""
    before, busy, after = first - r["started_at"], last - first, r["ended_at"] - last
    # From the first request, the ideal takes one latency per overload_above items.
    ideal_busy = r["items"] / r["ideal"]
    return (
        f"\nWhere the {r['seconds']:.1f} s went: {before:.1f} s from submit to the first "
        f"request (submit, the first run's start), {busy:.1f} s from the first request to the "
        f"last answer ({ideal_busy / busy:.2f} of the ideal {ideal_busy:.1f} s), {after:.1f} s "
        "after it (the last flush, the runs' ends).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_items")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=250.0)
    parser.add_argument("--overload-above", type=int, default=32)
    parser.add_argument("--retry-after", default="1", help="the 429's Retry-After (seconds)")
    parser.add_argument("--retry-after-ms", default="250", help="also send retry-after-ms")
    parser.add_argument("--item-concurrency", type=int, default=64)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--requests-per-minute", type=int, default=60000)
    parser.add_argument("--chunk-size", type=int, default=0, help="0: automatic")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.latency_ms / 1000, args.overload_above, args.retry_after, args.retry_after_ms)
        return 0
    if args.step:
        print(json.dumps(step_run(**json.loads(args.step))))
        return 0
    result = run(
        args.items,
        args.latency_ms,
        args.overload_above,
        args.retry_after,
        args.retry_after_ms,
        args.item_concurrency or None,
        args.max_in_flight or None,
        args.requests_per_minute or None,
        chunk_size=args.chunk_size or None,
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
