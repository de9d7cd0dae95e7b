"""A small SMART client: Backend Services tokens, FHIR searches, and following ImagingStudy →
Endpoint → WADO-RS to the bytes (SMART App Launch 2.2; Argonaut SMART Imaging Access).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from imagebridge.common import jose
from imagebridge.common.multipart import iter_related

DICOM_UID_SYSTEM = "urn:dicom:uid"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: Largest part accepted in a response: a DICOM value length is at most 4 GiB.
MAX_PART_BYTES = 2**32


@dataclass(frozen=True)
class BackendClient:
    """A registered Backend Services client: its id and private key."""

    client_id: str
    private_jwk: dict[str, Any]


def discover(fhir_base: str, http: httpx.Client) -> dict[str, Any]:
    response = http.get(f"{fhir_base.rstrip('/')}/.well-known/smart-configuration")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def backend_token(fhir_base: str, client: BackendClient, scope: str, http: httpx.Client) -> dict[str, Any]:
    """``client_credentials`` with a ``private_key_jwt`` assertion (SMART Backend Services)."""
    token_endpoint = discover(fhir_base, http)["token_endpoint"]
    response = http.post(
        token_endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jose.client_assertion(client.client_id, token_endpoint, client.private_jwk),
        },
    )
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def study_uid(study: dict[str, Any]) -> str:
    """The plain Study Instance UID of an ImagingStudy (its ``urn:dicom:uid`` identifier)."""
    for ident in study.get("identifier", []):
        if ident.get("system") == DICOM_UID_SYSTEM:
            return str(ident["value"]).removeprefix("urn:oid:")
    raise ValueError("the ImagingStudy has no urn:dicom:uid identifier")


def wado_base(study: dict[str, Any], bundle: dict[str, Any]) -> str:
    """The WADO-RS base of a study's Endpoint: contained, included, or by reference in the bundle."""
    refs = [e.get("reference", "") for e in study.get("endpoint", [])]
    contained = {
        f"#{r.get('id')}": r for r in study.get("contained", []) if r.get("resourceType") == "Endpoint"
    }
    included = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in bundle.get("entry", [])
        if e.get("resource", {}).get("resourceType") == "Endpoint"
    }
    included.update(
        {
            e["fullUrl"]: e["resource"]
            for e in bundle.get("entry", [])
            if "fullUrl" in e and e.get("resource", {}).get("resourceType") == "Endpoint"
        }
    )
    for ref in refs:
        endpoint = contained.get(ref) or included.get(ref)
        if endpoint and endpoint.get("connectionType", {}).get("code") == "dicom-wado-rs":
            return str(endpoint["address"]).rstrip("/")
    raise ValueError("no dicom-wado-rs Endpoint found for the study")


def iter_multipart(response: httpx.Response) -> Iterator[bytes]:
    """The parts of a streamed ``multipart/related`` response, one whole part at a time.

    A response cut short (no closing delimiter) raises ``MultipartError`` (common.multipart): a
    server ends a body early when it cannot finish it; a shorter study must not pass for whole.
    """
    for _, body in iter_related(
        response.headers["content-type"], response.iter_bytes(), max_part_bytes=MAX_PART_BYTES
    ):
        yield body


def fetch_study(
    study: dict[str, Any], bundle: dict[str, Any], token: str, http: httpx.Client
) -> Iterable[bytes]:
    """Follow a study's Endpoint to WADO-RS and yield each instance's bytes."""
    url = f"{wado_base(study, bundle)}/studies/{study_uid(study)}"
    with http.stream(
        "GET", url, headers={"Authorization": f"Bearer {token}", "Accept": WADO_ACCEPT}
    ) as response:
        response.raise_for_status()
        yield from iter_multipart(response)


def write_parts(parts: Iterable[bytes], outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, part in enumerate(parts, 1):
        path = outdir / f"{n:05d}.dcm"
        path.write_bytes(part)
        paths.append(path)
    return paths
