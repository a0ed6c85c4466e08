"""A throwaway PostgreSQL server on 127.0.0.1, for the tests and for trying several nodes.

    python scripts/pg_local.py /tmp/pg         # start (or reuse) a cluster there; prints its URL
    python scripts/pg_local.py /tmp/pg --stop

It uses the PostgreSQL server binaries already on the machine (Debian's `postgresql`
package: `make postgres` installs it when missing). PostgreSQL refuses to run as root, so
under root the cluster belongs to the `postgres` user (or `nobody`) and its programs run as
that user. Authentication is `trust` on loopback only: this is a development cluster, never
a production one (README, "Several nodes").
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DB_USER = "recognizer"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def bindir() -> Path:
    """The newest server's bin directory: Debian keeps them off PATH, per major version."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb): run `make postgres` or install Debian's "
        "postgresql package"
    )


def _owner() -> pwd.struct_passwd | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root, and there is no postgres or nobody user")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    data: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_USER}"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        owner = _owner()
        command = [str(self.bin / args[0]), *args[1:]]
        if owner:
            # As root, the server's owner runs it. setpriv drops the rights in a process of its
            # own: subprocess's user=/group= do it in the child between fork and exec, which
            # hung (a futex wait) when the forking process ran gRPC threads.
            command = [
                "setpriv",
                f"--reuid={owner.pw_uid}",
                f"--regid={owner.pw_gid}",
                "--clear-groups",
                "--",
                *command,
            ]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=check,
            cwd="/",
        )

    def running(self) -> bool:
        return (
            self._run("pg_ctl", "status", "-D", str(self.data / "db"), check=False).returncode == 0
        )

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data / "db"), "-m", "fast", "-w")

    def create_database(self, name: str) -> str:
        """A new empty database (a test's own); returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


def start(
    data: Path, *, durable: bool = True, max_connections: int = 200, port: int = 0
) -> Cluster:
    """Start a cluster in `data` (initialised on first use) on `port` (0: a free loopback
    port). `durable=False` turns fsync off: for tests, which never crash the database."""
    data = Path(data).resolve()
    owner = _owner()
    data.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(data, owner.pw_uid, owner.pw_gid)
    cluster = Cluster(data, port or _free_port(), bindir())
    db = data / "db"
    if not (db / "PG_VERSION").is_file():
        cluster._run(
            "initdb", "-D", str(db), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-locale"
        )
    if cluster.running():
        cluster.stop()  # a leftover of a run that died; its port may be taken now
    # A free port can be taken by another process before the server binds it (parallel test
    # workers): with no port asked for, a failed start tries a fresh one.
    for attempt in range(1 if port else PORT_ATTEMPTS):
        try:
            _start_server(cluster, max_connections, durable)
            break
        except subprocess.CalledProcessError:
            if port or attempt == PORT_ATTEMPTS - 1:
                raise
            cluster = Cluster(data, _free_port(), cluster.bin)
    _ensure_database(cluster)
    return cluster


PORT_ATTEMPTS = 3


def _start_server(cluster: Cluster, max_connections: int, durable: bool) -> None:
    db = cluster.data / "db"
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories="
        f"{cluster.data} -c max_connections={max_connections} "
        f"-c fsync={'on' if durable else 'off'}"
    )
    log = str(cluster.data / "log")
    cluster._run("pg_ctl", "start", "-D", str(db), "-w", "-t", "60", "-l", log, "-o", options)
    _wait_ready(cluster)


@contextlib.contextmanager
def throwaway(*, durable: bool, prefix: str = "recognizer-pg-") -> Iterator[Cluster]:
    """A cluster in a new folder, stopped and removed on the way out (tests, benchmarks)."""
    import tempfile

    # Under /tmp itself: as root the server runs as another user, who must reach the folder.
    data = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        cluster = start(data, durable=durable)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _wait_ready(cluster: Cluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", cluster.port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"PostgreSQL did not listen on {cluster.port}: see {cluster.data}/log"
            )
        time.sleep(0.1)


def _ensure_database(cluster: Cluster) -> None:
    import psycopg

    with psycopg.connect(cluster.url_for("postgres"), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_USER,)).fetchone() is None:
            c.execute(f'CREATE DATABASE "{DB_USER}"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="cluster directory (created on first use)")
    parser.add_argument("--stop", action="store_true", help="stop the cluster in DATA")
    args = parser.parse_args()
    if args.stop:
        Cluster(args.data.resolve(), 0, bindir()).stop()
        return 0
    print(start(args.data).url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
