"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on loopback, for the proxy-mode tests
and for bench/ (which imports this module without pytest: a missing Orthanc is reported by
:func:`unavailable`, and the tests turn that into a skip or a CI failure themselves).

The configuration uses absolute paths and free ports. For the tests, HTTP authentication is on
(one registered user) and HTTP tracing writes every request header to the log, so tests can check
what reached it; the benchmark turns both off (``auth=False, trace=False``). Storage compression is
off. Orthanc 1.10 binds 0.0.0.0 whatever the configuration says; callers only target 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagebridge.apps.stack import free_port

PLUGINS = Path("/usr/share/orthanc/plugins")
PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
USER, PASSWORD = "imagebridge", "upstream-secret-7f3a"


@dataclass
class Orthanc:
    port: int
    log_path: Path
    auth_enabled: bool = True
    pid: int = 0

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
        return httpx.Client(auth=(USER, PASSWORD) if self.auth_enabled else None, timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def unavailable() -> str | None:
    """Why Orthanc cannot run here (binary or DICOMweb plugin missing), or None when it can."""
    if shutil.which("Orthanc") is None:
        return "Orthanc not found (Debian package orthanc; `make test` installs it as root)"
    if not PLUGIN.exists():
        return f"{PLUGIN} not found (Debian package orthanc-dicomweb)"
    return None


def _config(folder: Path, http_port: int, dicom_port: int, auth: bool, threads: int) -> dict[str, object]:
    return {
        "Name": "ImagebridgeTestOrthanc",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD} if auth else {},
        "DicomServerEnabled": False,
        "DicomPort": dicom_port,
        "HttpThreadsCount": threads,
        "Plugins": [str(PLUGIN)],
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
def orthanc(folder: Path, *, auth: bool = True, trace: bool = True, threads: int = 8) -> Iterator[Orthanc]:
    """Start Orthanc by PID, wait for ``/system``, and stop it by PID afterwards (``threads``: its
    ``HttpThreadsCount``; Orthanc's own default is 50)."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(free_port(), folder / "orthanc.log", auth)
    config = folder / "orthanc.json"
    config.write_text(json.dumps(_config(folder, server.port, free_port(), auth, threads), indent=2))
    with server.log_path.open("ab") as log:
        process = subprocess.Popen(
            ["Orthanc", *(["--trace-http"] if trace else []), str(config)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "LANG": "C"},
        )
    server.pid = process.pid
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
