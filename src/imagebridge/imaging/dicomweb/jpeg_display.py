"""Colour JPEG frames decoded for display by Pillow (libjpeg-turbo), for ``/rendered``.

A JPEG Baseline frame (PS3.5 A.4.1, 8 bits, three samples) whose Photometric Interpretation is
YBR_FULL_422 or YBR_FULL (PS3.3 C.7.6.3.1.2) is decoded to its YCbCr samples and converted to RGB
by Pillow, both in C: about a third of the CPU of pydicom's decoder followed by its NumPy colour
conversion. The two decoders upsample chroma differently, so samples may differ by a few units
out of 255: invisible in a rendered image, which is why :mod:`frames` (native bytes, where values
matter) keeps pydicom's. Any other frame, or a JPEG stream whose own size is not the header's
(Pillow would allocate what the stream says), takes pydicom's path.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit

from imagebridge.imaging.dicomweb import pixels

_YBR = ("YBR_FULL_422", "YBR_FULL")


def _fits(header: pixels.PixelHeader) -> bool:
    photometric = str(header.dataset.get("PhotometricInterpretation", "")).upper()
    return (
        header.transfer_syntax == JPEGBaseline8Bit
        and header.samples == 3
        and header.bits_allocated == 8
        and photometric in _YBR
        and header.value_offset is not None
        and header.value_length is None
    )


def display_frame(fp: io.BufferedReader, header: pixels.PixelHeader, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) as RGB (or as :func:`pixels.decode_frame` gives it) for rendering."""
    if _fits(header):
        stream = pixels.encapsulated_frame(fp, header, index)
        try:
            with Image.open(io.BytesIO(stream), formats=("JPEG",)) as image:
                if (
                    image.size == (header.columns, header.rows)
                    and image.mode == "RGB"
                    and "adobe_transform" not in image.info
                ):
                    image.draft("YCbCr", image.size)
                    return np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError):  # a stream Pillow refuses: pydicom may decode it
            pass
    return pixels.decode_frame(fp, header, index)
