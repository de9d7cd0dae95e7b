"""Tests for imagebridge.imaging.dicomweb.media (PS3.18 §8.7.3-§8.7.4, RFC 9110 §12.5.1)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagebridge.imaging.dicomweb.media import (
    DEFAULT_TRANSFER_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    MediaRange,
    MultipartRelated,
    NotAcceptable,
    Offer,
    UnsupportedMediaType,
    negotiate,
    parse_accept,
    parse_media_type,
    parse_stow_content_type,
    pixel_media_type,
)

ELE = EXPLICIT_VR_LITTLE_ENDIAN
JPEG = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"
STORED = Offer("multipart/related", "application/dicom", J2K)
TRANSCODED = Offer("multipart/related", "application/dicom", ELE)
INSTANCES = [STORED, TRANSCODED]
METADATA = [Offer("application/dicom+json"), Offer("application/json")]
RENDERED = [Offer("image/jpeg"), Offer("image/png"), Offer("image/gif")]
FRAMES = [
    Offer("multipart/related", "image/jpeg", JPEG),
    Offer("multipart/related", "application/octet-stream", ELE),
]


# --- Accept parsing ----------------------------------------------------------------------------


def test_parse_accept_absent_or_blank_is_anything() -> None:
    assert parse_accept(None) == [MediaRange("*", "*")]
    assert parse_accept("  ") == [MediaRange("*", "*")]


def test_parse_accept_parameters_quoting_case_and_spaces() -> None:
    ranges = parse_accept(
        ' Multipart/Related ; TYPE = "Application/DICOM" ; Transfer-Syntax=1.2.840.10008.1.2.1 ; q=0.5 ,'
        "multipart/related;type=application/dicom;transfer-syntax=*,"
        'application/dicom+json; charset="utf-8", *'
    )
    assert ranges == [
        MediaRange("multipart", "related", {"type": "application/dicom", "transfer-syntax": ELE}, 0.5),
        MediaRange("multipart", "related", {"type": "application/dicom", "transfer-syntax": "*"}),
        MediaRange("application", "dicom+json", {"charset": "utf-8"}),
        MediaRange("*", "*"),
    ]
    assert ranges[0].related_type == "application/dicom"
    assert ranges[0].transfer_syntax == ELE
    assert ranges[2].related_type is None


def test_parse_accept_quoted_commas_and_escapes() -> None:
    (only,) = parse_accept('text/plain; x="a,b;c\\"d"')
    assert only.params == {"x": 'a,b;c"d'}


@pytest.mark.parametrize(
    "bad", ["text", "/x", "x/", "*/json", "a/b/c", "image/png; q=2", "image/png;q=x", "image/png;q=-1"]
)
def test_parse_accept_skips_unreadable_ranges(bad: str) -> None:
    assert parse_accept(f"{bad}, image/gif") == [MediaRange("image", "gif")]


@given(st.text(max_size=200))
def test_parse_accept_never_raises(header: str) -> None:
    for media_range in parse_accept(header):
        assert 0.0 <= media_range.q <= 1.0


def test_parse_media_type_errors() -> None:
    with pytest.raises(ValueError, match="malformed media type"):
        parse_media_type("nonsense")
    assert parse_media_type("A/B; Flag; x=") == ("a/b", {"flag": "", "x": ""})


# --- negotiation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, TRANSCODED),
        ("*/*", TRANSCODED),
        ("multipart/related", TRANSCODED),
        ('multipart/related; type="application/dicom"', TRANSCODED),
        ("multipart/related; type=application/dicom", TRANSCODED),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', STORED),
        (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}', TRANSCODED),
        (f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', STORED),
        (f"multipart/related; type=application/dicom; transfer-syntax={J2K}; q=0.4, */*; q=0.5", TRANSCODED),
        (
            f"multipart/related; type=application/dicom; transfer-syntax={J2K}, multipart/related;q=0.9",
            STORED,
        ),
        ("multipart/*; transfer-syntax=*", STORED),
    ],
)
def test_negotiate_instances(accept: str | None, expected: Offer) -> None:
    assert negotiate(accept, INSTANCES) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "text/plain",
        "application/dicom",  # single part is not offered here
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
        "*/*; q=0",
        "multipart/related; type=application/dicom; transfer-syntax=*; q=0, */*",
    ],
)
def test_negotiate_instances_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate(accept, INSTANCES)
    assert caught.value.offers == tuple(INSTANCES)
    assert caught.value.detail == (
        f"No acceptable representation for Accept {accept!r}. Available: "
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K}, '
        f'multipart/related; type="application/dicom"; transfer-syntax={ELE}'
    )


def test_more_specific_range_overrides_q() -> None:
    assert negotiate("image/*; q=0.2, image/png; q=0, */*; q=0.1", RENDERED) == Offer("image/jpeg")
    assert negotiate("*/*; q=0.1, image/gif", RENDERED) == Offer("image/gif")
    assert negotiate("*/*, image/png", RENDERED) == Offer("image/png")  # tie broken by specificity
    assert negotiate("image/*", RENDERED) == Offer("image/jpeg")  # then by server order
    with pytest.raises(NotAcceptable):
        negotiate("image/*; q=0", RENDERED)


def test_negotiate_metadata_and_frames() -> None:
    assert negotiate("application/dicom+json", METADATA) == METADATA[0]
    assert negotiate("application/json", METADATA) == METADATA[1]
    assert negotiate('application/dicom+json; charset="UTF-8"', METADATA) == METADATA[0]
    assert negotiate(None, METADATA) == METADATA[0]
    assert negotiate('multipart/related; type="image/jpeg"', FRAMES) == FRAMES[0]
    assert negotiate(f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}', FRAMES) == FRAMES[0]
    assert negotiate('multipart/related; type="application/octet-stream"', FRAMES) == FRAMES[1]
    assert negotiate("multipart/related; type=application/*", FRAMES) == FRAMES[1]
    assert negotiate("multipart/related; type=image/*", FRAMES) == FRAMES[0]
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70', FRAMES)


def test_non_default_syntax_needs_explicit_request() -> None:
    lossless = Offer("multipart/related", "image/jpeg", "1.2.840.10008.1.2.4.70")
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="image/jpeg"', [lossless])
    assert negotiate('multipart/related; type="image/jpeg"; transfer-syntax=*', [lossless]) == lossless


def test_not_acceptable_without_offers_or_accept() -> None:
    assert NotAcceptable([]).detail == "No acceptable representation. Available: nothing"
    long = NotAcceptable([Offer("image/png")], "x/" + "y" * 10_000).detail
    assert len(long) < 300


# --- Offer -------------------------------------------------------------------------------------


def test_offer_headers() -> None:
    assert (
        STORED.content_type("bnd")
        == f'multipart/related; type="application/dicom"; transfer-syntax={J2K}; boundary=bnd'
    )
    assert STORED.part_content_type == f"application/dicom; transfer-syntax={J2K}"
    assert STORED.representation == "application/dicom"
    assert Offer("image/png").content_type() == "image/png"
    assert Offer("image/png").part_content_type == "image/png"
    assert (
        str(Offer("multipart/related", "application/dicom+xml"))
        == 'multipart/related; type="application/dicom+xml"'
    )
    with pytest.raises(ValueError, match="needs a boundary"):
        STORED.content_type()


def test_offer_normalizes_and_validates() -> None:
    assert Offer("Multipart/Related", "Application/DICOM", ELE) == TRANSCODED
    with pytest.raises(ValueError, match="related_type"):
        Offer("multipart/related")
    with pytest.raises(ValueError, match="related_type"):
        Offer("application/dicom", "application/dicom")


def test_default_syntax_table() -> None:
    assert DEFAULT_TRANSFER_SYNTAX["application/dicom"] == ELE
    assert DEFAULT_TRANSFER_SYNTAX["application/octet-stream"] == ELE
    assert DEFAULT_TRANSFER_SYNTAX["image/jpeg"] == JPEG
    assert DEFAULT_TRANSFER_SYNTAX["image/jp2"] == J2K
    assert (
        DEFAULT_TRANSFER_SYNTAX["image/jls"]
        == DEFAULT_TRANSFER_SYNTAX["image/x-jls"]
        == "1.2.840.10008.1.2.4.80"
    )
    assert (
        DEFAULT_TRANSFER_SYNTAX["image/x-dicom-rle"]
        == DEFAULT_TRANSFER_SYNTAX["image/dicom-rle"]
        == "1.2.840.10008.1.2.5"
    )
    assert Offer("image/png").is_default_syntax
    assert Offer("multipart/related", "video/mp4", "1.2.840.10008.1.2.4.102").is_default_syntax


@pytest.mark.parametrize(
    ("syntax", "media"),
    [
        (ELE, "application/octet-stream"),
        ("1.2.840.10008.1.2.4.51", "image/jpeg"),
        ("1.2.840.10008.1.2.4.57", "image/jpeg"),
        ("1.2.840.10008.1.2.4.70", "image/jpeg"),
        ("1.2.840.10008.1.2.4.81", "image/jls"),
        ("1.2.840.10008.1.2.4.91", "image/jp2"),
        ("1.2.840.10008.1.2.4.92", "image/jpx"),
        ("1.2.840.10008.1.2.5", "image/x-dicom-rle"),
        ("1.2.840.10008.1.2", None),
    ],
)
def test_pixel_media_type(syntax: str, media: str | None) -> None:
    assert pixel_media_type(syntax) == media


# --- STOW-RS Content-Type ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        'multipart/related; type="application/dicom"; boundary=abc',
        "Multipart/Related;Type=Application/Dicom;Boundary=abc",
        'multipart/related; boundary="abc"; type="application/dicom"; start="<x>"',
    ],
)
def test_parse_stow_content_type(value: str) -> None:
    assert parse_stow_content_type(value) == MultipartRelated("application/dicom", "abc")


def test_parse_stow_content_type_accepted_types() -> None:
    value = 'multipart/related; type="application/dicom+json"; boundary=q'
    assert parse_stow_content_type(value, ("application/dicom", "application/dicom+json")).related_type == (
        "application/dicom+json"
    )
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Type"):
        parse_stow_content_type(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Content-Type is required"),
        ("", "Content-Type is required"),
        ("application/dicom", "unsupported Content-Type"),
        ("multipart/related; boundary=abc", "unsupported Content-Type"),
        ("multipart/form-data; type=application/dicom; boundary=abc", "unsupported Content-Type"),
        ("garbage", "malformed media type"),
        ("multipart/related; type=application/dicom", "boundary is missing"),
        ('multipart/related; type=application/dicom; boundary=""', "boundary is missing"),
        ("multipart/related; type=application/dicom; boundary=" + "b" * 71, "71 characters"),
        ('multipart/related; type=application/dicom; boundary="' + "\\\\" * 200 + '"', "200 characters"),
    ],
)
def test_parse_stow_content_type_rejects(value: str | None, message: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=message):
        parse_stow_content_type(value)
    assert issubclass(UnsupportedMediaType, ValueError)
