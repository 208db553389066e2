"""A throwaway ``dagster dev`` (web server + daemon) on a temporary data root, always torn down.

Why this is in the package rather than in the tests: the end-to-end tests and the fan-out
benchmark (``bench/fanout.py``) both start such a server, and the benchmark must not import
the test suite. It needs no pytest; it runs ``dagster dev -w workspace.yaml`` from the
project checkout (:data:`batch_pipelines.core.config.PROJECT_ROOT`), so it is a development
tool, not part of a deployment.

:func:`make_env` lays out a data root and ``DAGSTER_HOME`` under a directory;
:func:`env_in_process` points this process at them for a block. ``dagster_dev(env)`` starts
``dagster dev -w workspace.yaml -h 127.0.0.1 -p <free port>`` from the project root with the
env's DAGSTER_HOME, data root and warehouse, in its own process group, and waits until
``/server_info`` answers and the code location is loaded. On exit it sends SIGTERM to the
whole group, waits a bounded time, then SIGKILLs the group and any process left over that
still carries this DAGSTER_HOME (run workers, code servers).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from batch_pipelines.core import config, warehouse

T = TypeVar("T")

DAGSTER = str(Path(sys.executable).with_name("dagster"))
LOCATION_NAME = "batch_pipelines"
TERM_GRACE_S = 10.0

LOCATION_QUERY = """
query Location {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation {
            repositories {
              name
              jobs { name }
              sensors { name sensorState { status } }
              schedules { name scheduleState { status } }
            }
          }
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


@dataclass
class Env:
    """A data root and a ``DAGSTER_HOME`` under ``root``, and the variables that select them."""

    root: Path
    data: Path
    dagster_home: Path
    # ``ducklake:<catalog>:<target>`` puts the warehouse on a lake (data under <data>/lake/).
    lake: str | None = None

    @property
    def paths(self) -> config.Paths:
        return config.get_paths()

    @property
    def warehouse(self) -> Path:
        return Path(self.lake) if self.lake else self.data / "warehouse.duckdb"

    def overrides(self) -> dict[str, str | None]:
        """The variables that point a process at this env (None: unset)."""
        return {
            "BATCH_PIPELINES_DATA": str(self.data),
            "BATCH_PIPELINES_WAREHOUSE": str(self.warehouse),
            "DAGSTER_HOME": str(self.dagster_home),
            "BATCH_PIPELINES_ALLOWED_ROOTS": None,
            "BATCH_PIPELINES_MAX_ITEMS": None,
            "BATCH_PIPELINES_LAKE_DATA_PATH": None,
        }

    def environ(self) -> dict[str, str]:
        """The environment of a subprocess (CLI, ``dagster dev``) working on this env."""
        env = dict(os.environ)
        env["BATCH_PIPELINES_DATA"] = str(self.data)
        env["BATCH_PIPELINES_WAREHOUSE"] = str(self.warehouse)
        env["DAGSTER_HOME"] = str(self.dagster_home)
        env.pop("BATCH_PIPELINES_ALLOWED_ROOTS", None)
        env.pop("BATCH_PIPELINES_LAKE_DATA_PATH", None)
        return env

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        with warehouse.connect(self.warehouse, read_only=True) as con:
            return con.execute(query, params or []).fetchall()


def make_env(root: Path) -> Env:
    """An :class:`Env` under ``root`` (inbox, DAGSTER_HOME with the project's dagster.yaml)."""
    data = root / "data"
    (data / "inbox").mkdir(parents=True, exist_ok=True)
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config.PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return Env(root, data, home)


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def env_in_process(e: Env) -> Iterator[Env]:
    """Point this process (config paths, DagsterInstance.get) at ``e`` for the block."""
    with patched_environ(e.overrides()):
        warehouse.forget_migrations()
        try:
            yield e
        finally:
            warehouse.forget_migrations()


class GraphQLError(RuntimeError):
    """The server answered with ``errors`` (or not with JSON)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: nested mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_dagster_yaml(home: Path, overrides: dict | None = None) -> Path:
    """The project's dagster.yaml with ``overrides`` deep-merged, written to ``home``."""
    settings = yaml.safe_load((config.PROJECT_ROOT / "dagster.yaml").read_text()) or {}
    if overrides:
        settings = deep_merge(settings, overrides)
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    target.write_text(yaml.safe_dump(settings, sort_keys=False))
    return target


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class DevServer:
    url: str
    port: int
    log_path: Path
    process: subprocess.Popen
    dagster_home: Path
    _started: float = field(default_factory=time.monotonic)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def get(self, path: str, timeout_s: float = 10) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def graphql(self, query: str, variables: dict | None = None, timeout_s: float = 30) -> dict:
        """POST to /graphql; returns ``data``. Raises GraphQLError when the answer has errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            self.url + "/graphql",
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise GraphQLError(f"/graphql answered non-JSON: {raw[:500]!r}") from None
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"], indent=1)[:4000])
        return answer["data"]

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout_s: float,
        what: str,
        interval: float = 1.0,
    ) -> T:
        """Call ``predicate`` until it returns something truthy (returned) or ``timeout_s``
        passes (AssertionError naming ``what``, the last exception and the server's log)."""
        deadline = time.monotonic() + timeout_s
        last_exc: BaseException | None = None
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited with {self.process.returncode} while waiting for "
                    f"{what}\n--- {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                value = predicate()
                last_exc = None
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - kept for the failure message
                last_exc = exc
            if time.monotonic() >= deadline:
                because = f"; last error: {last_exc!r}" if last_exc else ""
                raise AssertionError(
                    f"timed out after {timeout_s:.0f}s waiting for {what}{because}\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(interval)

    def location(self) -> dict:
        """The code location's repository (jobs, sensors, schedules) once it is loaded."""
        data = self.graphql(LOCATION_QUERY)["workspaceOrError"]
        if data["__typename"] != "Workspace":
            raise GraphQLError(f"workspace not readable: {data}")
        for entry in data["locationEntries"]:
            if entry["name"] != LOCATION_NAME:
                continue
            loc = entry["locationOrLoadError"]
            if loc is None:
                raise GraphQLError(f"location {LOCATION_NAME} is {entry['loadStatus']}")
            if loc["__typename"] == "PythonError":
                raise AssertionError(f"code location failed to load:\n{loc['message']}")
            (repo,) = loc["repositories"]
            return repo
        raise GraphQLError(f"no location {LOCATION_NAME} in {data['locationEntries']}")

    def repository_selector(self) -> dict:
        repo = self.location()
        return {"repositoryLocationName": LOCATION_NAME, "repositoryName": repo["name"]}


def stragglers(home: Path) -> list[int]:
    """PIDs of processes still running with this DAGSTER_HOME (started by us)."""
    try:
        import psutil
    except ImportError:
        return []
    needle = str(home)
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get("DAGSTER_HOME") == needle:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def stop_process_group(process: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the process's group, wait up to ``grace_s``, then SIGKILL it; wait for exit.

    The process must have been started with ``start_new_session=True`` (its pid is the
    group's id, which stays valid while any member lives, even after the leader is reaped)."""
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # Children may outlive the leader; the group goes in any case.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    import psutil

    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def _kill_stragglers(home: Path) -> None:
    pids = stragglers(home)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = stragglers(home)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def dagster_dev(
    env: Env, *, dagster_yaml: dict | None = None, timeout_s: float = 120
) -> Iterator[DevServer]:
    """Start ``dagster dev`` for ``env``; yields once the UI answers and the location loaded."""
    write_dagster_yaml(env.dagster_home, dagster_yaml)
    (env.data / "inbox").mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = env.root / f"dagster_dev_{port}.log"
    environ = env.environ()
    environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    environ["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=config.PROJECT_ROOT,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DevServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        log_path=log_path,
        process=process,
        dagster_home=env.dagster_home,
    )
    try:
        server.wait_for(
            lambda: server.get("/server_info", timeout_s=5)[0] == 200,
            timeout_s,
            f"GET {server.url}/server_info",
        )
        remaining = max(10.0, timeout_s - (time.monotonic() - server._started))
        server.wait_for(server.location, remaining, f"code location {LOCATION_NAME} loaded")
        yield server
    finally:
        stop_process_group(process)
        _kill_stragglers(env.dagster_home)
