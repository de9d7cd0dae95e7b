"""WADO-RS study retrieval (PS3.18 §10.4) framing: instances served as stored go out with an exact
``Content-Length`` (RFC 9112 §6.3); a blob that no longer holds the indexed bytes cuts the response
off instead of passing a corrupt part for whole; responses through the transcoder stay chunked."""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import ArchiveStack, instance, part10

from imagebridge.apps.smart_client import WADO_ACCEPT, iter_multipart


def _stored(archive_stack: ArchiveStack, sides: list[int], seed: int) -> tuple[str, list[bytes]]:
    """A study of one instance per entry of ``sides`` (rows = columns), stored and published."""
    study, series = generate_uid(), generate_uid()
    parts = [
        part10(instance(study=study, series=series, number=n + 1, rows=side, columns=side, seed=seed + n))
        for n, side in enumerate(sides)
    ]
    assert archive_stack.stow(parts).status_code == 200
    assert sorted(archive_stack.retrieve(study)) == sorted(parts)  # waits until it is published
    return study, parts


def _blob(archive_stack: ArchiveStack, data: bytes) -> Path:
    key = hashlib.sha256(data).hexdigest()
    return Path(archive_stack.stack.imaging_settings.resolved_blob_store) / key[:2] / key[2:4] / key


def _as_stored(
    archive_stack: ArchiveStack, http: httpx.Client, study: str
) -> AbstractContextManager[httpx.Response]:
    """The study asked for with ``transfer-syntax=*``, its body not read yet."""
    return http.stream(
        "GET", f"{archive_stack.base}/studies/{study}", headers=archive_stack.headers(Accept=WADO_ACCEPT)
    )


def test_a_study_served_as_stored_has_an_exact_content_length(archive_stack: ArchiveStack) -> None:
    # small instances are read a few per worker-thread hop, one above 1 MiB is streamed alone
    study, parts = _stored(archive_stack, [32, 33, 900, 34], seed=501)
    with httpx.Client(timeout=60) as http, _as_stored(archive_stack, http, study) as response:
        assert response.status_code == 200
        assert "transfer-encoding" not in response.headers
        body = response.read()
        assert int(response.headers["content-length"]) == len(body)
        assert list(iter_multipart(response)) == parts  # in instance-number order


def test_a_study_asked_for_without_any_transfer_syntax_is_chunked(archive_stack: ArchiveStack) -> None:
    """Without ``transfer-syntax=*`` instances go through the transcoder (sizes not known ahead)."""
    study, parts = _stored(archive_stack, [32, 33], seed=511)
    with httpx.Client(timeout=60) as http:
        response = http.get(
            f"{archive_stack.base}/studies/{study}",
            headers=archive_stack.headers(Accept='multipart/related; type="application/dicom"'),
        )
    assert response.status_code == 200
    assert response.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.headers
    assert sorted(iter_multipart(response)) == sorted(parts)  # stored in the default syntax already


@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_a_blob_of_another_size_than_indexed_cuts_the_response_off(
    archive_stack: ArchiveStack, change: str
) -> None:
    study, parts = _stored(archive_stack, [32, 33], seed=521 if change == "shorter" else 531)
    blob = _blob(archive_stack, parts[1])
    data = blob.read_bytes()
    blob.write_bytes(data[:-100] if change == "shorter" else data + b"\0" * 100)
    with httpx.Client(timeout=60) as http, _as_stored(archive_stack, http, study) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
