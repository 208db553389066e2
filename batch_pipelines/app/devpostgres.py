"""A throwaway PostgreSQL server on 127.0.0.1 (initdb + pg_ctl in a temporary directory): the
Dagster storage of the Postgres e2e test, the catalog of the DuckLake warehouse tests and of
the ``lake`` benchmark (``bench/lake.py``).

In the package rather than in the tests for the reason :mod:`batch_pipelines.app.devserver`
is: the benchmark must not import the test suite. A development tool, not part of a
deployment (it needs the Debian ``postgresql`` server binaries: ``make system-deps``)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batch_pipelines.app.devserver import free_port

PG_USER = "batch_pipelines"
PG_DB = "dagster"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts[-3])
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries are missing (Debian package `postgresql`): run "
            "`make system-deps` as root"
        )
    return found[-1].parent


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    db: str

    def environ(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect(self, db: str | None = None):  # noqa: ANN201 - psycopg2 connection
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db or self.db,
            connect_timeout=10,
        )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(self.connect()) as con, con.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def conninfo(self, db: str | None = None) -> str:
        """The libpq conninfo of ``db`` (a DuckLake catalog setting takes this form)."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={db or self.db}"
        )

    def create_database(self, name: str) -> None:
        with contextlib.closing(self.connect("postgres")) as con:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f"create database {name}")


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl start on 127.0.0.1:<free port> in a temporary directory (as the
    ``postgres`` system user when we are root, since the server refuses to run as root);
    creates the database; always stops the server and removes the directory."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="bp-postgres-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    password = secrets.token_hex(12)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if prefix:
        shutil.chown(pwfile, "postgres", "postgres")
    pwfile.chmod(0o600)
    port = free_port()
    started = False

    def run(*args: str, timeout: float = 120) -> None:
        p = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=root
        )
        if p.returncode != 0:
            raise RuntimeError(f"{args[0]} failed:\n{p.stdout}\n{p.stderr}")

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -k {root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = True
        run(
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        server = Postgres("127.0.0.1", port, PG_USER, password, PG_DB)
        with contextlib.closing(server.connect("postgres")) as con:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f"create database {PG_DB}")
        yield server
    finally:
        if started:
            stop = subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t",
                 "20", "stop"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if stop.returncode != 0 and (data / "postmaster.pid").exists():
                pid = int((data / "postmaster.pid").read_text().split()[0])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)
