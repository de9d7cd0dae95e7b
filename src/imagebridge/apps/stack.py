"""Running the two services as real processes on loopback: for the demo, the tests and bench/.

Each service is its own ``python -m imagebridge <service> serve`` process configured through
``IMAGEBRIDGE_*`` variables, exactly as an operator would run it. The imaging system is
registered once at the EHR as a Backend Services client with its own key.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from imagebridge.common import jose
from imagebridge.common.settings import EhrSettings, ImagingSettings

#: What the imaging system is registered for at the EHR.
IMAGING_CLIENT_SCOPE = "introspection system/ImagingStudy.cru system/Endpoint.cru system/AuditEvent.c"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def settings_env(prefix: str, values: dict[str, object]) -> dict[str, str]:
    return {
        f"IMAGEBRIDGE_{prefix}_{k.upper()}": (",".join(v) if isinstance(v, tuple) else str(v))
        for k, v in values.items()
    }


def start_service(
    name: str,
    env: dict[str, str],
    url: str,
    log_path: Path,
    *args: str,
    command: Sequence[str] = (),
    verify: ssl.SSLContext | bool = True,
) -> ServiceProcess:
    """Start ``imagebridge <name> serve`` (or ``command``) and wait until ``/healthz`` answers
    (over HTTPS: with a certificate ``verify`` trusts)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("ab")
    process = subprocess.Popen(
        list(command) or [sys.executable, "-m", "imagebridge", name, "serve", *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    service = ServiceProcess(name, url, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{service.log()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0, verify=verify).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    service.kill()
    raise RuntimeError(f"{name} did not become ready:\n{service.log()[-3000:]}")


@dataclass
class LocalStack:
    """An EHR and an imaging system wired to each other, with their data under ``data_dir``."""

    data_dir: Path
    ehr_port: int = 0
    imaging_port: int = 0
    ehr_database_url: str = ""
    imaging_database_url: str = ""
    imaging_blob_store: str = ""
    #: Proxy mode: the imaging system fronts this DICOMweb base (docs/proxy.md).
    upstream_url: str = ""
    extra_ehr_env: dict[str, str] = field(default_factory=dict)
    extra_imaging_env: dict[str, str] = field(default_factory=dict)
    ehr: ServiceProcess | None = None
    imaging: ServiceProcess | None = None

    def __post_init__(self) -> None:
        self.ehr_port = self.ehr_port or free_port()
        self.imaging_port = self.imaging_port or free_port()

    @property
    def ehr_settings(self) -> EhrSettings:
        return EhrSettings(
            port=self.ehr_port,
            data_dir=self.data_dir / "ehr",
            database_url=self.ehr_database_url,
            imaging_bases=(self.imaging_settings.dicomweb_base,),
        )

    @property
    def imaging_settings(self) -> ImagingSettings:
        return ImagingSettings(
            port=self.imaging_port,
            data_dir=self.data_dir / "imaging",
            database_url=self.imaging_database_url,
            blob_store=self.imaging_blob_store,
            ehr_fhir_base=f"http://127.0.0.1:{self.ehr_port}/fhir",
            private_key_file=self.data_dir / "imaging" / "client-key.json",
            upstream_url=self.upstream_url,
        )

    def ehr_env(self) -> dict[str, str]:
        s = self.ehr_settings
        env = settings_env(
            "EHR",
            {
                "port": s.port,
                "data_dir": s.data_dir,
                "database_url": s.database_url,
                "imaging_bases": s.imaging_bases,
            },
        )
        return {**env, **self.extra_ehr_env}

    def imaging_env(self) -> dict[str, str]:
        s = self.imaging_settings
        env = settings_env(
            "IMAGING",
            {
                "port": s.port,
                "data_dir": s.data_dir,
                "database_url": s.database_url,
                "blob_store": s.blob_store,
                "ehr_fhir_base": s.ehr_fhir_base,
                "private_key_file": s.private_key_file,
                "upstream_url": s.upstream_url,
            },
        )
        return {**env, **self.extra_imaging_env}

    def provision(self) -> None:
        """Migrate the EHR database and register the imaging system there (once)."""
        from imagebridge.ehr.admin import Admin
        from imagebridge.ehr.app import migrate

        settings = self.ehr_settings
        migrate(settings)
        key = jose.load_or_create_private_jwk(self.imaging_settings.private_key_file)

        async def register() -> None:
            admin = Admin(settings)
            try:
                if await admin.clients.get(self.imaging_settings.client_id) is None:
                    await admin.add_client(
                        self.imaging_settings.client_id,
                        "backend",
                        scope=IMAGING_CLIENT_SCOPE,
                        name="imagebridge imaging system",
                        jwks=jose.public_jwks(key),
                    )
            finally:
                await admin.close()

        asyncio.run(register())

    def start(self, imaging_args: tuple[str, ...] = ()) -> None:
        """Start both services; ``imaging_args`` go to ``imaging serve`` (e.g. ``--workers 2``)."""
        self.ehr = start_service(
            "ehr", self.ehr_env(), f"http://127.0.0.1:{self.ehr_port}", self.data_dir / "ehr.log"
        )
        self.start_imaging(*imaging_args)

    def start_imaging(self, *args: str) -> None:
        """(Re)start the imaging system alone, e.g. after killing it."""
        self.imaging = start_service(
            "imaging",
            self.imaging_env(),
            f"http://127.0.0.1:{self.imaging_port}",
            self.data_dir / "imaging.log",
            *args,
        )

    def stop(self) -> None:
        for service in (self.imaging, self.ehr):
            if service is not None:
                service.stop()
