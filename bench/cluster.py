"""A PostgreSQL cluster of its own for the soak (bench/soak.py) and the tests' outages
(tests/test_runner_process.py): made with initdb in a temporary directory on a free port, so it
can be restarted, crashed and stopped without touching the machine's server. Run as the
`postgres` user when this process is root (initdb refuses root)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

DATABASE = "soak"


def _bindir() -> Path:
    """Where the server's programs are (Debian keeps them off PATH)."""
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@dataclass
class Cluster:
    """A running cluster: its data directory, port and the programs to drive it."""

    root: Path
    port: int
    bindir: Path
    as_user: list[str]  # the command prefix that runs a program as the cluster's owner

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the soak's database."""
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-w", *args]
        subprocess.run([*self.as_user, *command], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._ctl("-l", str(self.root / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode "immediate" is a crash (recovery at the next start)."""
        self._ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A new cluster with the empty database `soak`, removed after the block."""
    root = Path(tempfile.mkdtemp(prefix="promptbatch-soak-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    bindir = _bindir()
    cluster = Cluster(root, _free_port(), bindir, as_user)
    initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"]
    subprocess.run([*as_user, *initdb], check=True, capture_output=True)
    cluster.start()
    try:
        createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port)]
        subprocess.run([*createdb, "-U", "postgres", DATABASE], check=True, capture_output=True)
        yield cluster
    finally:
        with suppress(subprocess.CalledProcessError):  # already stopped
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
