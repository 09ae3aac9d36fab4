"""A real, throwaway PostgreSQL server on 127.0.0.1 for tests.

Example (pytest)::

    @pytest.fixture(scope="module")
    def pg_url(tmp_path_factory):
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(postgres_server(tmp_path_factory.mktemp("pg")))
            except PostgresUnavailable as exc:
                pytest.skip(str(exc))
            yield url

The server gets a fresh data folder, a free port, trust authentication on
loopback only, its unix socket in the data folder's parent (never
``/var/run``) and ``fsync=off``: fast, and gone when the block exits.

PostgreSQL refuses to run as root. When the tests run as root, the data folder
is handed to the ``postgres`` system user and ``initdb``/``pg_ctl`` run through
``runuser -u postgres --``.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shipyard.testing._ports import free_port
from shipyard.testing._process import ServiceUnavailable, log_size, log_tail

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
DATABASE = "postgres"
_OS_USER = "postgres"
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_START_ATTEMPTS = 3
# A unix socket path must fit in sun_path (108 bytes), including "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 90


class PostgresUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be started here because something is missing."""

    service = "PostgreSQL"
    default_hint = ""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``.

    Looks at ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin`` (newest
    version first), then ``PATH``.

    Raises:
        PostgresUnavailable: no folder holds both programs.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.extend(sorted(Path("/").glob(_BIN_GLOB.lstrip("/")), key=_version_key, reverse=True))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if all(os.access(folder / prog, os.X_OK) for prog in ("initdb", "pg_ctl")):
            return folder
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates)) or "nothing found"
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl)",
        f"looked in pg_config --bindir, {_BIN_GLOB} and PATH ({looked}); "
        "install them with: apt-get install postgresql",
    )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def _run_as_prefix() -> list[str]:
    """``runuser -u postgres --`` when running as root (PostgreSQL refuses root), else nothing."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser is None:
        raise PostgresUnavailable(
            "runuser (util-linux)",
            "running as root, PostgreSQL must be started as another user through runuser",
        )
    try:
        pwd.getpwnam(_OS_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"a '{_OS_USER}' system user",
            "running as root, PostgreSQL must run as that user "
            "(apt-get install postgresql creates it)",
        ) from None
    return [runuser, "-u", _OS_USER, "--"]


def _make_work_dir(tmp_dir: Path, prefix: list[str]) -> tuple[Path, bool]:
    """A folder the server user owns. Returns it and whether it lives outside ``tmp_dir``.

    pytest's temporary folders are private to root (mode 0700), which the
    ``postgres`` user cannot enter; then, and when the path would make the unix
    socket path too long, a private folder under the system temp dir is used.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pg-", dir=tmp_dir))
    if len(str(work)) <= _MAX_SOCKET_DIR and _usable(work, prefix):
        return work, False
    shutil.rmtree(work, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
    if not _usable(work, prefix):
        shutil.rmtree(work, ignore_errors=True)
        raise PostgresUnavailable(
            f"a temporary folder the '{_OS_USER}' user can write",
            f"neither {tmp_dir} nor {tempfile.gettempdir()} is reachable by that user",
        )
    return work, True


def _usable(work: Path, prefix: list[str]) -> bool:
    if not prefix:
        return True
    shutil.chown(work, user=_OS_USER, group=pwd.getpwnam(_OS_USER).pw_gid)
    probe = subprocess.run([*prefix, "test", "-w", str(work), "-a", "-x", str(work)], timeout=30)
    return probe.returncode == 0


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)




@contextmanager
def postgres_server(tmp_dir: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """Run a throwaway PostgreSQL server on 127.0.0.1 for the duration of the block.

    Args:
        tmp_dir: a folder for the data directory, socket and log.
        timeout: seconds allowed for ``initdb``, start-up and shutdown each.

    Yields:
        A SQLAlchemy URL, ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``.

    Raises:
        PostgresUnavailable: the binaries, ``runuser`` or the ``postgres`` user are
            missing; the message names which.
        RuntimeError: PostgreSQL is installed but did not start; the message holds
            the end of its log.
    """
    bindir = find_bindir()
    prefix = _run_as_prefix()
    work, outside = _make_work_dir(Path(tmp_dir), prefix)
    data = work / "data"
    log = work / "postgres.log"
    try:
        init = _run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), f"--username={SUPERUSER}",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=work,
            timeout=timeout,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# shipyard.testing: loopback only, throwaway and fast\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{work}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )
        port = _start(bindir, prefix, data, log, work, timeout)
        logger.info("PostgreSQL up on 127.0.0.1:%d (data %s)", port, data)
        yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        try:
            if (data / "postmaster.pid").exists():
                _stop(bindir, prefix, data, work, timeout)
        finally:
            if outside:
                shutil.rmtree(work, ignore_errors=True)
            else:
                shutil.rmtree(data, ignore_errors=True)


def _start(bindir: Path, prefix: list[str], data: Path, log: Path, work: Path, timeout: float) -> int:
    """Start on a free port (retrying if another process takes it first); return the port."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        log_start = log_size(log)
        started = _run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
             "-t", str(int(timeout)), "-o", f"-p {port}", "start"],
            cwd=work,
            timeout=timeout + 10,
        )
        if started.returncode == 0:
            _wait_ready(bindir, prefix, port, work, time.monotonic() + timeout)
            return port
        tail = log_tail(log, since=log_start)
        port_taken = "could not bind" in tail or "already in use" in tail
        if port_taken and attempt < _START_ATTEMPTS:
            logger.info("port %d was taken before PostgreSQL bound it; retrying", port)
            continue
        raise RuntimeError(
            f"PostgreSQL did not start on 127.0.0.1:{port}: {started.stderr.strip()}\n"
            f"last lines of {log}:\n{tail}"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_ready(bindir: Path, prefix: list[str], port: int, work: Path, deadline: float) -> None:
    """Poll until the server answers on TCP (``pg_isready`` when present)."""
    isready = bindir / "pg_isready"
    while True:
        if os.access(isready, os.X_OK):
            ok = _run(
                [str(isready), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", DATABASE],
                cwd=work,
                timeout=10,
            ).returncode == 0
        else:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    ok = True
            except OSError:
                ok = False
        if ok:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL on 127.0.0.1:{port} did not become ready in time")
        time.sleep(0.05)


def _stop(bindir: Path, prefix: list[str], data: Path, work: Path, timeout: float) -> None:
    pg_ctl = str(bindir / "pg_ctl")
    stopped = _run(
        [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
        cwd=work,
        timeout=timeout + 10,
    )
    if stopped.returncode != 0 and (data / "postmaster.pid").exists():
        logger.warning("fast shutdown failed (%s); shutting down immediately", stopped.stderr.strip())
        _run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], cwd=work, timeout=timeout)
