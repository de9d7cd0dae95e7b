"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on loopback, for proxy-mode tests.

The configuration uses absolute paths and free ports; HTTP authentication is on (one registered
user) and HTTP tracing writes every request header to the log, so tests can check what reached
it. Orthanc 1.10 binds 0.0.0.0 whatever the configuration says; tests only ever target 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagebridge.apps.stack import free_port
from tests.services import missing, require_executable

PLUGINS = Path("/usr/share/orthanc/plugins")
USER, PASSWORD = "imagebridge", "upstream-secret-7f3a"


@dataclass
class Orthanc:
    port: int
    log_path: Path

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_base(self) -> str:
        return f"{self.origin}/dicom-web"

    @property
    def auth(self) -> str:
        """The ``upstream_auth`` setting for this server."""
        return f"basic:{USER}:{PASSWORD}"

    def client(self) -> httpx.Client:
        return httpx.Client(auth=(USER, PASSWORD), timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _config(folder: Path, http_port: int, dicom_port: int) -> dict[str, object]:
    plugin = PLUGINS / "libOrthancDicomWeb.so"
    if not plugin.exists():
        missing(f"{plugin} not found (Debian package orthanc-dicomweb)")
    return {
        "Name": "ImagebridgeTestOrthanc",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "DicomPort": dicom_port,
        "HttpThreadsCount": 8,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Host": f"127.0.0.1:{http_port}",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


@contextmanager
def orthanc(folder: Path) -> Iterator[Orthanc]:
    """Start Orthanc by PID, wait for ``/system``, and stop it by PID afterwards."""
    executable = require_executable("Orthanc", "orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(free_port(), folder / "orthanc.log")
    config = folder / "orthanc.json"
    config.write_text(json.dumps(_config(folder, server.port, free_port()), indent=2))
    with server.log_path.open("ab") as log:
        process = subprocess.Popen(
            [executable, "--trace-http", str(config)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "LANG": "C"},
        )
    try:
        deadline = time.monotonic() + 60
        with server.client() as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{server.log()[-3000:]}")
                try:
                    if client.get(f"{server.origin}/system", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start:\n{server.log()[-3000:]}")
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
