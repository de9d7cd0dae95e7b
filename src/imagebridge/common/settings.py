"""Settings for both services: embedded defaults, a TOML file, then ``IMAGEBRIDGE_*`` variables.

Precedence (lowest first): the defaults below, the TOML file named by ``IMAGEBRIDGE_CONFIG`` (or
passed explicitly), then environment variables. A service's variables are prefixed with its
name: ``IMAGEBRIDGE_EHR_DATABASE_URL``, ``IMAGEBRIDGE_IMAGING_REVOCATION_WINDOW`` and so on; the
TOML file uses one table per service (``[ehr]``, ``[imaging]``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from imagebridge.common.cors import is_origin

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value of the wrong form."""


def _origin(public_url: str, host: str, port: int, tls_certfile: str) -> str:
    """Where clients reach the service: ``public_url``, else its own address (https with TLS on)."""
    scheme = "https" if tls_certfile else "http"
    return (public_url or f"{scheme}://{host}:{port}").rstrip("/")


@dataclasses.dataclass(frozen=True)
class EhrSettings:
    """The EHR: SMART authorization server and FHIR R4 API."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: The externally visible origin, e.g. ``https://ehr.example.org``; derived from host/port if empty.
    public_url: str = ""
    #: PEM certificate chain and key to serve HTTPS directly (TLS 1.2+); empty: plain HTTP, for a
    #: TLS-terminating reverse proxy in front (docs/deployment.md).
    tls_certfile: str = ""
    tls_keyfile: str = ""
    data_dir: Path = Path("var/ehr")
    #: SQLAlchemy URL; empty means SQLite in ``data_dir``.
    database_url: str = ""
    #: DICOMweb bases of imaging systems that trust this EHR (``associated_endpoints``, token ``aud``).
    imaging_bases: tuple[str, ...] = ()
    #: Identifier system of medical record numbers, used to match DICOM PatientID to Patient.
    mrn_system: str = "urn:imagebridge:mrn"
    access_token_lifetime: int = 3600
    backend_token_lifetime: int = 300
    #: Ceiling, in seconds, of an ``online_access`` refresh token, which also ends with the user's
    #: EHR sign-in (signing out or the session expiring).
    online_access_lifetime: int = 8 * 3600
    #: Dynamic registrations (RFC 7591) one client IP address may attempt per window (429 beyond).
    registration_rate_limit: int = 100
    #: That window, in seconds.
    registration_rate_window: int = 3600
    #: Most entries a FHIR ``batch`` Bundle may hold (413 beyond it).
    batch_max_entries: int = 1000
    #: fdatasync the audit journal before each response starts (docs/audit.md: its records then
    #: survive power loss too); off: a killed process loses none, power loss the last ~0.25 s.
    audit_fsync: bool = False
    log_level: str = "info"

    @property
    def origin(self) -> str:
        return _origin(self.public_url, self.host, self.port, self.tls_certfile)

    @property
    def fhir_base(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'ehr.sqlite3'}"


@dataclasses.dataclass(frozen=True)
class ImagingSettings:
    """The imaging system: DICOMweb origin server (or proxy) behind the delegated-authorization gate."""

    host: str = "127.0.0.1"
    port: int = 8081
    public_url: str = ""
    #: PEM certificate chain and key to serve HTTPS directly (TLS 1.2+); empty: plain HTTP, for a
    #: TLS-terminating reverse proxy in front (docs/deployment.md).
    tls_certfile: str = ""
    tls_keyfile: str = ""
    data_dir: Path = Path("var/imaging")
    database_url: str = ""
    #: Where DICOM blobs live: a folder path, or ``s3://bucket/prefix``.
    blob_store: str = ""
    #: The EHR this imaging system trusts, by its FHIR base URL.
    ehr_fhir_base: str = "http://127.0.0.1:8080/fhir"
    #: PEM CA bundle trusted for the EHR's certificate in addition to the system's (a private CA).
    ehr_ca_file: str = ""
    #: This system's own Backend Services registration at the EHR.
    client_id: str = "imaging"
    private_key_file: Path = Path("var/imaging/client-key.json")
    #: Browser origins allowed to call DICOMweb (CORS), e.g. the OHIF viewer's
    #: ``https://viewer.example.org``; none by default; "*" = any (bearer tokens are not cookies).
    cors_allowed_origins: tuple[str, ...] = ()
    #: Seconds a positive introspection answer may be reused: the revocation promise.
    revocation_window: int = 30
    #: Seconds a negative introspection answer is remembered.
    negative_cache_ttl: int = 5
    #: Seconds to wait for the EHR before answering 503.
    ehr_timeout: float = 2.0
    #: Out-of-band introspection endpoint, for EHRs that do not advertise one (empty: discover it).
    introspection_endpoint: str = ""
    #: Where introspection and study decisions are cached: empty (per process) or ``redis://…``.
    cache_url: str = ""
    #: Issue and accept capability URLs (``requires-access-token = false``); off by default.
    capability_urls: bool = False
    #: Identifier system of the DICOM PatientID when publishing studies to the EHR.
    mrn_system: str = "urn:imagebridge:mrn"
    #: Largest accepted STOW-RS request body, in bytes (413 beyond it).
    max_request_bytes: int = 4 * 1024**3
    #: Largest accepted single instance (one multipart part) in a STOW-RS request, in bytes.
    max_instance_bytes: int = 2 * 1024**3
    #: Largest size a Deflated Explicit VR Little Endian data set may inflate to, in bytes.
    max_inflated_bytes: int = 256 * 1024**2
    #: Same SOP Instance UID stored again with other bytes: "reject" (failure 0x0111) or "replace".
    stow_overwrite: str = "reject"
    #: Blobs without an index row are swept only when older than this many seconds.
    orphan_grace_seconds: int = 3600
    #: S3-compatible blob store (``blob_store = "s3://bucket/prefix"``): endpoint and credentials.
    s3_endpoint_url: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_region: str = "us-east-1"
    #: Proxy mode (docs/proxy.md): the DICOMweb base of an existing PACS that keeps the archive.
    upstream_url: str = ""
    #: How this system authenticates to the upstream: "", ``basic:user:pass`` or ``bearer:TOKEN``.
    upstream_auth: str = ""
    #: PEM CA bundle trusted for the upstream's certificate in addition to the system's (a PACS
    #: whose certificate a private CA issued).
    upstream_ca_file: str = ""
    #: Work around a known upstream's deviations: "" (none), "orthanc", or "auto" (ask /system).
    upstream_quirks: str = "auto"
    #: Seconds between scans of the upstream for studies to publish to the EHR.
    upstream_sync_interval: float = 60.0
    #: Seconds to wait for the upstream to start answering (connect and first byte).
    upstream_timeout: float = 30.0
    #: fdatasync the audit journal before each response starts (docs/audit.md: its records then
    #: survive power loss too); off: a killed process loses none, power loss the last ~0.25 s.
    audit_fsync: bool = False
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.upstream_quirks not in ("", "orthanc", "auto"):
            raise SettingsError(
                f"upstream_quirks must be '', 'orthanc' or 'auto', not {self.upstream_quirks!r}"
            )
        if self.upstream_auth and self.upstream_auth.split(":", 1)[0] not in ("basic", "bearer"):
            raise SettingsError("upstream_auth must be 'basic:user:password' or 'bearer:TOKEN'")
        if self.stow_overwrite not in ("reject", "replace"):
            raise SettingsError(f"stow_overwrite must be 'reject' or 'replace', not {self.stow_overwrite!r}")
        for entry in self.cors_allowed_origins:
            if entry != "*" and not is_origin(entry):
                raise SettingsError(
                    f"cors_allowed_origins: {entry!r} is not an origin (scheme://host[:port]) nor '*'"
                )

    @property
    def origin(self) -> str:
        return _origin(self.public_url, self.host, self.port, self.tls_certfile)

    @property
    def dicomweb_base(self) -> str:
        return f"{self.origin}/dicom-web"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'imaging.sqlite3'}"

    @property
    def resolved_blob_store(self) -> str:
        return self.blob_store or str(self.data_dir / "blobs")


def _convert(raw: Any, hint: Any, name: str) -> Any:
    """Convert a TOML or environment value to the dataclass field's type."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in {"1", "true", "yes", "on"}
        if hint in (int, float, str):
            return hint(raw)
        if hint is Path:
            return Path(raw)
        if origin is tuple:
            if isinstance(raw, str):
                return tuple(item.strip() for item in raw.split(",") if item.strip())
            return tuple(str(item) for item in raw)
        if origin in (typing.Union, types.UnionType):
            return raw
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r}: {exc}") from exc
    raise SettingsError(f"setting {name!r} has an unsupported type {hint!r}")


def load(
    cls: type[T],
    section: str,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> T:
    """Build ``cls`` from defaults, the TOML ``[section]``, ``IMAGEBRIDGE_<SECTION>_*`` and overrides."""
    env = os.environ if environ is None else environ
    path = config_file or (Path(env["IMAGEBRIDGE_CONFIG"]) if env.get("IMAGEBRIDGE_CONFIG") else None)
    table: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as fh:
            table = dict(tomllib.load(fh).get(section, {}))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"IMAGEBRIDGE_{section.upper()}_{field.name.upper()}"
        if field.name in overrides and overrides[field.name] is not None:
            values[field.name] = overrides[field.name]
        elif key in env:
            values[field.name] = _convert(env[key], hints[field.name], key)
        elif field.name in table:
            values[field.name] = _convert(table[field.name], hints[field.name], field.name)
    unknown = set(table) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise SettingsError(f"unknown settings in [{section}]: {', '.join(sorted(unknown))}")
    return cls(**values)
