"""A study on a real PostgreSQL server shared by two worker processes (the multi-machine setup on one
machine). The server is Debian's ``postgresql`` package, started here as its own user on a Unix socket
in a temporary folder; ``make test`` installs the package where it may, else these tests skip."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeslim.errors import UserError
from edgeslim.study.search import search
from tests.pipeline.study.test_search import search_config, shares_one_study


def _pg_bin() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields its URL (no password: trust on its own socket only)."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="edgeslim-pg-"))
    home.chmod(0o755)
    if owner is not None:
        os.chown(home, owner.pw_uid, owner.pw_gid)
    data, port = home / "db", _free_port()
    try:
        subprocess.run(
            [*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "edgeslim", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-k {home} -p {port} -c listen_addresses='' -c fsync=off"
        subprocess.run(
            [*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {exc}")
    try:
        yield f"postgresql://edgeslim@/postgres?host={home}&port={port}"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres):
    shares_one_study(tmp_path, ["--storage", postgres])


def test_an_unreachable_database_is_a_one_line_error(tmp_path):
    with pytest.raises(
        UserError, match=r"^search --storage postgresql\+psycopg://me@127\.0\.0\.1:1/db: cannot open"
    ) as err:
        search(search_config(trials=1), tmp_path, storage="postgresql://me:secret@127.0.0.1:1/db")
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
