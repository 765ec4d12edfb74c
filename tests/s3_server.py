"""A real S3 server for tests: versitygw (the model store of the local cluster, hack/models) with its POSIX
backend in a temporary folder, on a free port of 127.0.0.1, with fixed root keys.

Objects are put with boto3, a third-party client, never with our own fetcher: what the tests read back
is then known to be what S3 holds, whoever wrote the reader.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY = "MODELSHIPTESTACCESS"
SECRET_KEY = "modelship-test-secret-never-shown"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def versitygw_version(versions_env: Path = ROOT / "hack" / "versions.env") -> str:
    for line in versions_env.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "VERSITYGW_VERSION":
            return value.strip()
    raise RuntimeError(f"no VERSITYGW_VERSION in {versions_env}")


def versitygw_binary() -> Path:
    """$MODELSHIP_VERSITYGW, else the binary `hack/cluster build-addons` compiles into the cache."""
    explicit = os.environ.get("MODELSHIP_VERSITYGW")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("MODELSHIP_CACHE") or Path.home() / ".cache" / "modelship")
    return cache / "addons" / f"versitygw-{versitygw_version()}" / "versitygw"


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    root: Path
    log_path: Path

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client of the root user, path-style (the store has no per-bucket host names)."""
        import boto3
        from botocore.config import Config

        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
            **overrides,
        }
        return boto3.client("s3", **settings)

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        with suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)

    def upload(self, bucket: str, key: str, data: bytes | Path) -> None:
        """Put `data` (bytes, or a file streamed from disk) at `key`, making the bucket if needed."""
        self.create_bucket(bucket)
        client = self.client()
        if isinstance(data, Path):
            with open(data, "rb") as body:
                client.put_object(Bucket=bucket, Key=key, Body=body)
        else:
            client.put_object(Bucket=bucket, Key=key, Body=data)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_versitygw(folder: Path) -> Iterator[S3Server]:
    """versitygw serving `folder`/root until the block ends; fails (never skips) without its binary."""
    binary = versitygw_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no versitygw at {binary}: run `hack/cluster build-addons` (or set MODELSHIP_VERSITYGW)")
    root = folder / "root"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = S3Server(
        f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, REGION, root, folder / "versitygw.log"
    )
    # The keys in the environment, not on the command line, where any `ps` would show them.
    env = {**os.environ, "ROOT_ACCESS_KEY_ID": ACCESS_KEY, "ROOT_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(server.log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "--port", f"127.0.0.1:{port}", "--region", REGION, "--quiet", "posix", str(root)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"versitygw exited with {proc.returncode}:\n{server.log()}")
            # Any answer will do (an unsigned request is refused): the listener is up and speaks HTTP.
            return httpx.get(server.endpoint + "/", timeout=2).status_code > 0

        wait_until(answers, timeout=30, interval=0.05, what=f"versitygw on port {port} to answer")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
