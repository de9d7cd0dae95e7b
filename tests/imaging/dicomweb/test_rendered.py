"""WADO-RS rendered and thumbnail resources (imaging/dicomweb/rendered.py), over HTTP and as units."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from tests.imaging.dicomweb.pixel_stack import STUDY_UID, PixelStack

from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.rendered import (
    Window,
    frame_attributes,
    parse_viewport,
    parse_window,
    to_8bit,
)

Client = tuple[httpx.Client, dict[str, str]]
MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n", "image/gif": b"GIF8"}


def _render(
    pixel_stack: PixelStack,
    pixel_http: Client,
    name: str,
    suffix: str = "/rendered",
    accept: str = "image/png",
    **params: str,
) -> httpx.Response:
    http, auth = pixel_http
    return http.get(pixel_stack.url(name, suffix), params=params, headers={**auth, "Accept": accept})


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png", "image/gif"])
def test_media_types(pixel_stack: PixelStack, pixel_http: Client, media_type: str) -> None:
    response = _render(pixel_stack, pixel_http, "CT_small.dcm", accept=media_type)
    assert response.headers["content-type"] == media_type
    assert response.content.startswith(MAGIC[media_type])
    assert _image(response).size == (128, 128)


def test_jpeg_is_the_default(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _render(pixel_stack, pixel_http, "CT_small.dcm", accept="*/*")
    assert response.content.startswith(MAGIC["image/jpeg"])


def test_quality_changes_jpeg_size(pixel_stack: PixelStack, pixel_http: Client) -> None:
    low = _render(pixel_stack, pixel_http, "MR2_UNCI.dcm", accept="image/jpeg", quality="5")
    high = _render(pixel_stack, pixel_http, "MR2_UNCI.dcm", accept="image/jpeg", quality="95")
    assert len(low.content) < len(high.content)


def test_viewport_fits_preserving_aspect(pixel_stack: PixelStack, pixel_http: Client) -> None:
    assert _image(_render(pixel_stack, pixel_http, "CT_small.dcm", viewport="64,32")).size == (32, 32)
    cropped = _render(pixel_stack, pixel_http, "CT_small.dcm", viewport="100,100,0,0,64,32")
    assert _image(cropped).size == (100, 50)


def test_viewport_source_region_and_flip(pixel_stack: PixelStack, pixel_http: Client) -> None:
    region = np.asarray(_image(_render(pixel_stack, pixel_http, "CT_small.dcm", viewport="64,64,0,0,64,64")))
    flipped = np.asarray(
        _image(_render(pixel_stack, pixel_http, "CT_small.dcm", viewport="64,64,64,0,-64,64"))
    )
    assert np.array_equal(flipped, region[:, ::-1])


def test_window_changes_the_image(pixel_stack: PixelStack, pixel_http: Client) -> None:
    narrow = np.asarray(_image(_render(pixel_stack, pixel_http, "CT_small.dcm", window="40,80")))
    wide = np.asarray(_image(_render(pixel_stack, pixel_http, "CT_small.dcm", window="40,4000")))
    above = np.asarray(_image(_render(pixel_stack, pixel_http, "CT_small.dcm", window="100000,10")))
    sigmoid = np.asarray(_image(_render(pixel_stack, pixel_http, "CT_small.dcm", window="40,80,sigmoid")))
    assert not np.array_equal(narrow, wide)
    assert narrow.std() > wide.std()
    assert above.max() == 0  # everything is below a window far above the data
    assert not np.array_equal(narrow, sigmoid)


def test_monochrome1_is_inverted(pixel_stack: PixelStack, pixel_http: Client) -> None:
    mono2 = np.asarray(_image(_render(pixel_stack, pixel_http, "CT_small.dcm", window="40,400"))).astype(int)
    mono1 = np.asarray(_image(_render(pixel_stack, pixel_http, "mono1.dcm", window="40,400"))).astype(int)
    assert np.array_equal(mono1, 255 - mono2)


def test_colour_multiframe_renders_requested_frame(pixel_stack: PixelStack, pixel_http: Client) -> None:
    first = _image(_render(pixel_stack, pixel_http, "color3d_jpeg_baseline.dcm", "/frames/1/rendered"))
    later = _image(_render(pixel_stack, pixel_http, "color3d_jpeg_baseline.dcm", "/frames/60/rendered"))
    assert first.mode == later.mode == "RGB"
    assert first.size == (640, 480)
    assert not np.array_equal(np.asarray(first), np.asarray(later))


def test_thumbnails_at_every_level(pixel_stack: PixelStack, pixel_http: Client) -> None:
    http, auth = pixel_http
    sample = pixel_stack.samples["MR2_UNCI.dcm"]
    instance = pixel_stack.url("MR2_UNCI.dcm")
    series = f"{pixel_stack.base}/studies/{STUDY_UID}/series/{sample.series_uid}"
    study = f"{pixel_stack.base}/studies/{STUDY_UID}"
    for url in (f"{instance}/thumbnail", f"{instance}/frames/1/thumbnail", f"{series}/thumbnail"):
        image = _image(http.get(url, headers=auth))
        assert image.format == "JPEG"
        assert max(image.size) == 128
    assert _image(http.get(f"{study}/thumbnail", headers=auth)).format == "JPEG"
    sized = _image(http.get(f"{instance}/thumbnail", params={"viewport": "32,32"}, headers=auth))
    assert sized.size == (32, 32)


@pytest.mark.parametrize(
    "params",
    [{"quality": "0"}, {"quality": "x"}, {"window": "abc"}, {"window": "1,2,cubic"}, {"viewport": "0,0"}],
)
def test_bad_parameters_are_400(pixel_stack: PixelStack, pixel_http: Client, params: dict[str, str]) -> None:
    assert _render(pixel_stack, pixel_http, "CT_small.dcm", **params).status_code == 400


def test_unacceptable_media_type_is_406(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _render(pixel_stack, pixel_http, "CT_small.dcm", accept="text/plain")
    assert response.status_code == 406
    assert "image/png" in response.json()["message"]


@pytest.mark.parametrize("name", ["bomb.dcm", "native-bomb.dcm"])
def test_decode_bombs_are_413(pixel_stack: PixelStack, pixel_http: Client, name: str) -> None:
    assert _render(pixel_stack, pixel_http, name).status_code == 413
    assert _render(pixel_stack, pixel_http, name, "/thumbnail").status_code == 413


def test_undecodable_pixel_data_is_406(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _render(pixel_stack, pixel_http, "JPEG-lossy.dcm")
    assert response.status_code == 406
    assert "cannot be decoded" in response.json()["message"]


def test_rendered_needs_a_token(pixel_stack: PixelStack) -> None:
    assert httpx.get(pixel_stack.url("CT_small.dcm", "/rendered")).status_code == 401


def test_voi_lut_and_modality_lut_units() -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 0, 101
    frame = np.array([[0, 50, 100]], dtype=np.uint16)  # modality values -100, 0, 100
    assert to_8bit(frame, ds, None).tolist() == [[0, 129, 255]]  # PS3.3 C.11.2.1.2.1
    assert to_8bit(frame, ds, Window(100, 2)).tolist() == [[0, 0, 255]]


def test_parameter_units() -> None:
    assert parse_window("40, 400 ,SIGMOID") == Window(40, 400, "sigmoid")
    assert parse_viewport("10,20").source is None
    with pytest.raises(DicomwebError):
        parse_viewport("1,2,3")
    with pytest.raises(DicomwebError):
        parse_window("nan,3")


def test_dicomweb_client_reads_frames_and_rendered(pixel_stack: PixelStack, pixel_http: Client) -> None:
    """dicomweb-client, an independent implementation, negotiates frames and rendered images."""
    _, auth = pixel_http
    client = DICOMwebClient(pixel_stack.base, headers=auth)
    sample = pixel_stack.samples["693_J2KR.dcm"]
    uids = (STUDY_UID, sample.series_uid, sample.sop_uid)
    [frame] = client.retrieve_instance_frames(*uids, [1])
    assert frame == get_frame(sample.dataset.PixelData, 0)
    assert client.retrieve_instance_rendered(*uids).startswith(MAGIC["image/jpeg"])
    rendered = client.retrieve_instance_frames_rendered(*uids, [1], media_types=("image/png",))
    assert rendered.startswith(MAGIC["image/png"])


def test_enhanced_multiframe_uses_functional_groups() -> None:
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    view = frame_attributes(ds, 1)
    assert float(view.RescaleIntercept) == -1024
    assert "WindowCenter" in view
    assert "RescaleIntercept" not in ds  # the stored data set is not changed
