"""A real, throwaway S3-compatible server on 127.0.0.1 for tests: moto's server mode (``moto[server]``).

Example (pytest)::

    @pytest.fixture(scope="module")
    def s3_endpoint(tmp_path_factory):
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(s3_server(tmp_path_factory.mktemp("s3"), buckets=["models"]))
            except S3Unavailable as exc:
                pytest.skip(str(exc))
            yield url

Clients point at the yielded endpoint (fsspec/s3fs and boto3 read ``AWS_ENDPOINT_URL``) with any access
key and secret. The server keeps its objects in memory and is stopped when the block exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from shipyard.testing._ports import free_port
from shipyard.testing._process import ServiceUnavailable, log_tail, stop_process

logger = logging.getLogger(__name__)


class S3Unavailable(ServiceUnavailable):
    """The S3-compatible test server cannot be started here because something is missing."""

    service = "S3-compatible server (moto)"
    default_hint = "install it with: pip install 'moto[server]'"


def find_moto_server() -> Path:
    """``moto_server``: beside this Python (its virtual environment), else on ``PATH``.

    Raises:
        S3Unavailable: neither has it.
    """
    found = shutil.which("moto_server", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                               os.environ.get("PATH", "")]))
    if found is None:
        raise S3Unavailable("no moto_server binary (looked beside this Python and on PATH)")
    return Path(found)


@contextmanager
def s3_server(folder: Path, *, buckets: Sequence[str] = (), timeout: float = 30.0) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 for the duration of the block.

    Args:
        folder: a folder for the server's log.
        buckets: buckets to create before yielding.
        timeout: seconds allowed for start-up.

    Yields:
        The endpoint URL, ``http://127.0.0.1:PORT``.

    Raises:
        S3Unavailable: moto's server is not installed; the message says how to get it.
        RuntimeError: it is installed but did not start; the message holds the end of its log.
    """
    binary = find_moto_server()
    work = Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "moto.log"
    port = free_port()
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], cwd=work,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {url} (exit code {process.poll()}); "
                                   f"last lines of {log_path}:\n{log_tail(log_path)}")
            time.sleep(0.05)
        for bucket in buckets:
            # moto checks no signature: a plain PUT creates a bucket, so no S3 client library is needed here
            urllib.request.urlopen(urllib.request.Request(f"{url}/{bucket}", method="PUT"), timeout=10).close()
        logger.info("S3 (moto) up on %s", url)
        yield url
    finally:
        stop_process(process, "moto_server")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
