"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, started in a
temporary directory on 127.0.0.1 and a free port, its socket in that directory.

PostgreSQL refuses to run as root, so as root (CI) ``initdb`` and ``pg_ctl`` run as the
``postgres`` user the Debian package creates (``runuser``); as anyone else they run as
that user. :func:`find_pg_bin` says why when the server cannot be started, for a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "facekd"
DATABASE = "facekd"


def find_pg_bin() -> tuple[Path | None, str]:
    """The directory holding ``initdb`` and ``pg_ctl``, or None and the reason."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        return None, "PostgreSQL is not installed (apt-get install postgresql: /usr/lib/postgresql/*/bin/initdb)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return None, "running as root and runuser is missing"
    return Path(found[-1]).parent, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server; ``url`` is the ``postgresql://`` URL of its database."""

    bin_dir: Path
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}\n{tail}")

    def start(self) -> None:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        # fsync off: a test database need not survive a power cut.
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)

    def restart(self) -> None:
        """Stops the server abruptly (every connection dropped) and starts it again."""
        data = str(self.root / "data")
        self._run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        self._run("pg_ctl", "-D", data, "-o", opts, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server(bin_dir: Path) -> PgServer:
    """Start a fresh server with an empty database ``facekd``; stop it with ``stop()``."""
    root = Path(tempfile.mkdtemp(prefix="facekd-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PgServer(bin_dir, root, _free_port())
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
