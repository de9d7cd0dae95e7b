"""DICOMweb media types: Accept parsing and content negotiation, STOW-RS Content-Type.

Implements the Accept grammar of RFC 9110 §12.5.1 with the DICOMweb parameters of PS3.18
§8.7.3.5 (``type``, ``transfer-syntax`` including the ``*`` wildcard) and the selection rules of
PS3.18 §8.7.4 / RFC 9110 §12.5.1: the most specific matching media range decides an offer's
quality; ``q=0`` excludes. A media range without ``transfer-syntax`` asks for the default transfer
syntax of its media type (PS3.18 Table 8.7.3-5).

Parsing is tolerant where real clients differ (quoted or unquoted ``type``, any case in names,
spaces around ``;`` and ``=``, a bare ``*``) and skips media ranges it cannot read.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from imagebridge.common.multipart import MultipartError, content_type_related, validate_boundary

MULTIPART_RELATED = "multipart/related"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
"""PS3.18 §9.4.2.4: "the default Transfer Syntax for DICOM Web Services"."""

_JPEG = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
)
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_JPEG_2000_PART2 = ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93")
_RLE = ("1.2.840.10008.1.2.5",)

PIXEL_MEDIA_TYPES: Mapping[str, tuple[str, ...]] = {
    "application/octet-stream": (EXPLICIT_VR_LITTLE_ENDIAN,),
    "image/jpeg": _JPEG,
    "image/jls": _JPEG_LS,
    "image/jp2": _JPEG_2000,
    "image/jpx": _JPEG_2000_PART2,
    "image/x-dicom-rle": _RLE,
}
"""PS3.18 Table 8.7.3-5: transfer syntaxes of each bulk/pixel data media type, default first."""

_ALIASES = {"image/dicom-rle": "image/x-dicom-rle", "image/x-jls": "image/jls"}

DEFAULT_TRANSFER_SYNTAX: Mapping[str, str] = {
    "application/dicom": EXPLICIT_VR_LITTLE_ENDIAN,
    **{media: syntaxes[0] for media, syntaxes in PIXEL_MEDIA_TYPES.items()},
    **{alias: PIXEL_MEDIA_TYPES[media][0] for alias, media in _ALIASES.items()},
}
"""Default transfer syntax per media type (PS3.18 Tables 8.7.3-2, 8.7.3-5)."""

_COMPRESSED = {ts: media for media, syntaxes in PIXEL_MEDIA_TYPES.items() for ts in syntaxes}
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_SHOWN = 200  # longest excerpt of a client's header quoted back in an error message


def pixel_media_type(transfer_syntax: str) -> str | None:
    """The media type carrying frames of ``transfer_syntax`` unchanged (PS3.18 Table 8.7.3-5).

    ``application/octet-stream`` for Explicit VR Little Endian, None when the table has no entry.
    """
    return _COMPRESSED.get(transfer_syntax)


@dataclass(frozen=True, slots=True)
class Offer:
    """One representation the origin server can produce for a resource.

    ``media_type`` is the response's top-level type (``multipart/related``, ``application/dicom+json``,
    ``image/png``...). ``related_type`` is the multipart ``type`` parameter, required for
    ``multipart/related`` and forbidden otherwise. ``transfer_syntax`` is the syntax the
    representation uses, or None where none applies (JSON, rendered images). Names are lower-cased.
    """

    media_type: str
    related_type: str | None = None
    transfer_syntax: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "media_type", self.media_type.lower())
        if self.related_type is not None:
            object.__setattr__(self, "related_type", self.related_type.lower())
        if (self.media_type == MULTIPART_RELATED) != (self.related_type is not None):
            raise ValueError("an Offer has a related_type exactly when it is multipart/related")

    @property
    def representation(self) -> str:
        """The media type of the content itself: the multipart ``type`` or the media type."""
        return self.related_type or self.media_type

    @property
    def is_default_syntax(self) -> bool:
        """True when a request naming no transfer syntax accepts this offer (PS3.18 §8.7.3.5.2)."""
        default = DEFAULT_TRANSFER_SYNTAX.get(self.representation, self.transfer_syntax)
        return self.transfer_syntax is None or self.transfer_syntax == default

    @property
    def part_content_type(self) -> str:
        """The ``Content-Type`` of the content (of each part, for multipart offers)."""
        if self.transfer_syntax is None:
            return self.representation
        return f"{self.representation}; transfer-syntax={self.transfer_syntax}"

    def content_type(self, boundary: str | None = None) -> str:
        """The response ``Content-Type``; multipart offers need the body's ``boundary``."""
        if self.related_type is None:
            return self.part_content_type
        if boundary is None:
            raise ValueError("a multipart/related Content-Type needs a boundary")
        return content_type_related(self.related_type, boundary, self.transfer_syntax)

    def __str__(self) -> str:
        if self.related_type is None:
            return self.part_content_type
        syntax = "" if self.transfer_syntax is None else f"; transfer-syntax={self.transfer_syntax}"
        return f'{MULTIPART_RELATED}; type="{self.related_type}"{syntax}'


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One parsed element of an Accept header (RFC 9110 §12.5.1).

    ``params`` has lower-cased names, unquoted values, the ``type`` value lower-cased, and no ``q``.
    """

    type: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def related_type(self) -> str | None:
        """The multipart ``type`` parameter, if present."""
        return self.params.get("type")

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter (a UID or ``*``), if present."""
        return self.params.get("transfer-syntax")

    def _specificity(self) -> tuple[bool, bool, bool, bool, bool]:
        ts = self.transfer_syntax
        return (
            self.type != "*",
            self.subtype != "*",
            self.related_type is not None,
            ts not in (None, "*"),
            ts is not None,
        )

    def _matches(self, offer: Offer) -> bool:
        if not _type_matches(self.type, self.subtype, offer.media_type):
            return False
        if offer.related_type is not None and self.related_type is not None:
            wanted_type, _, wanted_subtype = self.related_type.partition("/")
            if not _type_matches(wanted_type, wanted_subtype, offer.related_type):
                return False
        ts = self.transfer_syntax
        if ts is None:
            return offer.is_default_syntax
        return ts == "*" or ts == offer.transfer_syntax


def _type_matches(type_: str, subtype: str, media_type: str) -> bool:
    offered_type, _, offered_subtype = media_type.partition("/")
    return type_ in ("*", offered_type) and subtype in ("*", offered_subtype)


class NotAcceptable(Exception):
    """No offer is acceptable (PS3.18 Table 10.4.3-1: 406); ``detail`` is the response text."""

    def __init__(self, offers: Sequence[Offer], accept: str | None = None) -> None:
        self.offers = tuple(offers)
        self.accept = accept
        asked = "" if accept is None else f" for Accept {_excerpt(accept)}"
        available = ", ".join(str(offer) for offer in self.offers) or "nothing"
        self.detail = f"No acceptable representation{asked}. Available: {available}"
        super().__init__(self.detail)


class UnsupportedMediaType(ValueError):
    """A request body's Content-Type the server cannot take (PS3.18 Table 10.5.3-1: 415)."""


@dataclass(frozen=True, slots=True)
class MultipartRelated:
    """A ``multipart/related`` request Content-Type (RFC 2387 §3.1): its ``type`` and boundary."""

    related_type: str
    boundary: str


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted-strings (RFC 9110 §5.6.4), in one linear pass."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Parse ``type/subtype; name=value...`` (RFC 9110 §8.3.1) into a lower-cased media type and params.

    Parameter names are lower-cased, values unquoted; the ``type`` parameter value is lower-cased.
    A bare ``*`` reads as ``*/*``. Raises ValueError when the media type itself is malformed.
    """
    head, *rest = _split(value, ";")
    media_type = head.strip().lower()
    if media_type == "*":
        media_type = "*/*"
    type_, slash, subtype = media_type.partition("/")
    if not slash or not type_ or not subtype or "/" in subtype or (type_ == "*" and subtype != "*"):
        raise ValueError(f"malformed media type {_excerpt(head.strip())}")
    params: dict[str, str] = {}
    for piece in rest:
        name, equals, raw = piece.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        params[name] = _unquote(raw).lower() if name == "type" else _unquote(raw) if equals else ""
    return media_type, params


def parse_accept(accept: str | None) -> list[MediaRange]:
    """Parse an Accept header (RFC 9110 §12.5.1); absent or blank means ``*/*``.

    Unreadable media ranges and ones with an invalid ``q`` are skipped.
    """
    if accept is None or not accept.strip():
        return [MediaRange("*", "*")]
    ranges = []
    for element in _split(accept, ","):
        if not element.strip():
            continue
        try:
            media_type, params = parse_media_type(element)
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        if 0.0 <= q <= 1.0:
            type_, _, subtype = media_type.partition("/")
            ranges.append(MediaRange(type_, subtype, params, q))
    return ranges


def negotiate(accept: str | None, offers: Sequence[Offer]) -> Offer:
    """Choose the offer to send for ``accept`` (PS3.18 §8.7.4, RFC 9110 §12.5.1).

    Each offer takes the ``q`` of the most specific media range matching it; the highest ``q``
    wins, then the more specific match, then the earlier offer (list offers in server preference
    order, e.g. the as-stored transfer syntax before a transcoded one). Raises
    :class:`NotAcceptable` when no offer has a positive ``q``.
    """
    ranges = parse_accept(accept)
    best: tuple[float, tuple[bool, ...], int] | None = None
    chosen: Offer | None = None
    for index, offer in enumerate(offers):
        matching = [r for r in ranges if r._matches(offer)]
        if not matching:
            continue
        top = max(r._specificity() for r in matching)
        q = max(r.q for r in matching if r._specificity() == top)
        rank = (q, top, -index)
        if q > 0 and (best is None or rank > best):
            best, chosen = rank, offer
    if chosen is None:
        raise NotAcceptable(offers, accept)
    return chosen


def parse_stow_content_type(
    value: str | None, accepted_types: Collection[str] = ("application/dicom",)
) -> MultipartRelated:
    """Read a STOW-RS request Content-Type (PS3.18 §10.5.1.1).

    It must be ``multipart/related`` with a ``type`` among ``accepted_types`` and a usable
    boundary (RFC 2046 §5.1.1); anything else raises :class:`UnsupportedMediaType` (415).
    """
    expected = " or ".join(f'multipart/related; type="{t}"; boundary=...' for t in accepted_types)
    if value is None or not value.strip():
        raise UnsupportedMediaType(f"Content-Type is required: {expected}")
    try:
        media_type, params = parse_media_type(value)
    except ValueError as error:
        raise UnsupportedMediaType(f"{error}; expected {expected}") from None
    related_type = params.get("type")
    if media_type != MULTIPART_RELATED or related_type is None or related_type not in accepted_types:
        raise UnsupportedMediaType(f"unsupported Content-Type {_excerpt(value)}; expected {expected}")
    try:
        boundary = validate_boundary(params.get("boundary", ""))
    except MultipartError as error:
        raise UnsupportedMediaType(str(error)) from None
    return MultipartRelated(related_type, boundary)


def _excerpt(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "…")
