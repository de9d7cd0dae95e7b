"""Round trip over pydicom's and pydicom-data's sample files, every transfer syntax among them.

For each sample (fresh UIDs, zeroed preamble, otherwise as shipped): STOW-RS it; retrieve it with
``transfer-syntax=*`` and get the identical bytes; retrieve it with the default transfer syntax
and get Explicit VR Little Endian whose pixels equal pydicom's decoding of the original (or 406
when no installed decoder can read the original, never a broken body); instances already in
Explicit VR Little Endian come back unchanged, even the odd ones (truncated pixel data, bad VRs).
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from tests.imaging.dicomweb.pixel_stack import PixelStack, Sample, corpus, split_multipart

Client = tuple[httpx.Client, dict[str, str]]
DICOM = 'multipart/related; type="application/dicom"'
#: Samples STOW-RS must refuse: structurally broken files.
REFUSED = {"rtplan_truncated.dcm"}
NAMES = [sample.name for sample in corpus()]


def _decoded(sample: Sample) -> np.ndarray | None:
    """pydicom's pixels for the original, or None when it has none or cannot decode them."""
    ds = sample.dataset
    if "PixelData" not in ds:
        return None
    try:
        return ds.pixel_array
    except Exception:  # no decoder for this syntax (e.g. 12-bit JPEG Extended)
        return None


def test_corpus_covers_the_transfer_syntaxes() -> None:
    syntaxes = {str(s.dataset.file_meta.TransferSyntaxUID) for s in corpus()}
    assert len(corpus()) > 100
    assert {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    } <= syntaxes


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(pixel_stack: PixelStack, pixel_http: Client, name: str) -> None:
    http, auth = pixel_http
    if name in REFUSED:
        assert name not in pixel_stack.samples
        return
    sample = pixel_stack.samples[name]
    stored = http.get(pixel_stack.url(name), headers={**auth, "Accept": f"{DICOM}; transfer-syntax=*"})
    assert stored.status_code == 200
    assert [body for _, body in split_multipart(stored)] == [sample.data]

    default = http.get(pixel_stack.url(name), headers={**auth, "Accept": DICOM})
    if sample.dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1":  # nothing to transcode
        assert [body for _, body in split_multipart(default)] == [sample.data]
        return
    expected = _decoded(sample)
    if expected is None and "PixelData" in sample.dataset:
        assert default.status_code == 406
        return
    assert default.status_code == 200, default.text
    [(headers, body)] = split_multipart(default)
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.SOPInstanceUID == sample.sop_uid
    if expected is not None:
        assert np.array_equal(got.pixel_array, expected)
