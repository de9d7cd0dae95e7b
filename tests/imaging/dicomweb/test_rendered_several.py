"""Rendered Study and Rendered Series (PS3.18 Table 10.3-2, §10.4.1.1.4) against the real process:
one rendered image per instance with pixel data, the same parameters and gate as instance level.
(Another patient's token on these routes: tests/security/test_iso_imaging.py walks every route.)
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import ArchiveStack, instance, part10
from tests.imaging.dicomweb.pixel_stack import split_multipart

PNG = b"\x89PNG\r\n\x1a\n"


def _no_pixels(study: str, series: str) -> bytes:
    """An instance without Pixel Data (as an SR or a presentation state would be)."""
    ds = instance(study=study, series=series, number=99)
    ds.SeriesNumber = 2  # the series it joins is number 2: one series, one number
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    return part10(ds)


@pytest.fixture(scope="module")
def study(archive_stack: ArchiveStack) -> tuple[str, list[str], list[str]]:
    """A study of two series: three 16 x 16 images and one instance without pixel data."""
    study, first, second = generate_uid(), generate_uid(), generate_uid()
    images = [
        instance(study=study, series=first, number=1, seed=1),
        instance(study=study, series=first, number=2, seed=2),
        instance(study=study, series=second, number=1, seed=3, rows=8, columns=32),
    ]
    images[2].SeriesNumber = 2
    answer = archive_stack.stow([*(part10(ds) for ds in images), _no_pixels(study, second)])
    assert answer.status_code == 200, answer.text
    archive_stack.retrieve(study)  # waits until the study is published at the EHR
    return study, [first, first, second], [str(ds.SOPInstanceUID) for ds in images]


def _get(stack: ArchiveStack, path: str, accept: str, **params: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(
            f"{stack.base}/{path}", params=params, headers=stack.headers(Accept=accept), timeout=60
        )
        if response.status_code != 404 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_rendered_study_has_one_image_per_instance_in_order(
    archive_stack: ArchiveStack, study: tuple[str, list[str], list[str]]
) -> None:
    uid, series, sops = study
    response = _get(archive_stack, f"studies/{uid}/rendered", "multipart/related; type=image/png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="image/png"; boundary=')
    parts = split_multipart(response)
    assert [h["content-location"] for h, _ in parts] == [
        f"{archive_stack.base}/studies/{uid}/series/{se}/instances/{sop}/rendered"
        for se, sop in zip(series, sops, strict=True)
    ]
    for (headers, body), se, sop in zip(parts, series, sops, strict=True):
        assert headers["content-type"] == "image/png"
        alone = _get(archive_stack, f"studies/{uid}/series/{se}/instances/{sop}/rendered", "image/png")
        assert body == alone.content  # each part is what the instance's own /rendered answers
    assert [Image.open(io.BytesIO(body)).size for _, body in parts] == [(16, 16), (16, 16), (32, 8)]


def test_rendered_series_takes_the_instance_parameters(
    archive_stack: ArchiveStack, study: tuple[str, list[str], list[str]]
) -> None:
    uid, series, _ = study
    path = f"studies/{uid}/series/{series[0]}/rendered"
    response = _get(archive_stack, path, "image/jpeg", viewport="64,64", quality="50", window="2000,4000")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    images = [Image.open(io.BytesIO(body)) for _, body in split_multipart(response)]
    assert [(image.format, image.size) for image in images] == [("JPEG", (64, 64))] * 2
    assert _get(archive_stack, path, "image/png", viewport="0,0").status_code == 400
    refused = _get(archive_stack, path, "text/plain")
    assert refused.status_code == 406
    assert 'multipart/related; type="image/png"' in refused.json()["message"]


def test_study_without_pixel_data_is_404(archive_stack: ArchiveStack) -> None:
    uid = generate_uid()
    answer = archive_stack.stow([_no_pixels(uid, generate_uid())])
    assert answer.status_code == 200, answer.text
    archive_stack.retrieve(uid)
    response = httpx.get(f"{archive_stack.base}/studies/{uid}/rendered", headers=archive_stack.headers())
    assert response.status_code == 404
    assert "no instance here has pixel data" in response.json()["message"]


def test_rendered_study_needs_a_token(
    archive_stack: ArchiveStack, study: tuple[str, list[str], list[str]]
) -> None:
    response = httpx.get(f"{archive_stack.base}/studies/{study[0]}/rendered")
    assert response.status_code == 401


def test_dicomweb_client_retrieves_a_rendered_series(
    archive_stack: ArchiveStack, study: tuple[str, list[str], list[str]]
) -> None:
    uid, series, _ = study
    client = DICOMwebClient(archive_stack.base, headers={"Authorization": f"Bearer {archive_stack.token()}"})
    body = client.retrieve_series_rendered(uid, series[2], media_types=("image/png",))
    assert body.startswith(b"--")
    response = httpx.Response(
        200, content=body, headers={"content-type": f"multipart/related; boundary={body[2:34].decode()}"}
    )
    [(headers, image)] = split_multipart(response)
    assert headers["content-type"] == "image/png"
    assert image.startswith(PNG)
