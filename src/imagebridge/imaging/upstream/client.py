"""The HTTP client of proxy mode: this system talking DICOMweb to an existing PACS (docs/proxy.md).

Requests go out with this system's own upstream credentials (``upstream_auth``), never the
caller's token, and carry only an allow-list of the caller's headers (RFC 9110 §7.6.1: hop-by-hop
headers stay on their hop). Known deviations of the upstream are smoothed here, behind
``upstream_quirks``:

* ``orthanc`` — Orthanc's DICOMweb plugin (1.7) does not percent-decode QIDO-RS query values
  (PS3.18 §8.3.4 says they are URL-encoded), so ``PatientName=Doe%5EJ%2A`` matches nothing; the
  values are sent with ``^ * ? , - . : / =`` unescaped. It also refuses frames requested as
  ``multipart/related; type="*/*"`` (PS3.18 §8.7.3.5.2), so that Accept is narrowed to
  ``application/octet-stream`` with any transfer syntax.
"""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx

from imagebridge.common import http
from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.upstream import relay

#: Caller headers that may travel to the upstream; everything else (Authorization, Cookie,
#: Connection, Host, Forwarded, …) stays behind.
FORWARDED_REQUEST_HEADERS = (
    "accept",
    "accept-charset",
    "accept-encoding",
    "content-type",
    "content-length",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "range",
)
#: Upstream response headers that never reach the caller: hop-by-hop (RFC 9110 §7.6.1) and the
#: upstream's own authentication and session state.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "www-authenticate",
        "set-cookie",
        "server",
        "date",
    }
)
#: What a frames request with ``type="*/*"`` becomes for Orthanc.
ORTHANC_FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
_ORTHANC_SAFE = "^*?,-.:/=_~"


class UpstreamError(Exception):
    """The upstream PACS could not be reached or answered with a server error."""


class UpstreamRefusal(Exception):
    """The upstream PACS refused the request as the caller made it (a 4xx about the query itself)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def upstream_fault(status: int, content_type: str | None) -> bool:
    """Whether an upstream answer is the PACS's (or imagebridge's) fault, never the caller's: 5xx;
    401/403/407 (imagebridge's own credentials refused: reading as the caller's token being
    invalid would mislead); a redirect (its target is the PACS's business; 304 is an answer);
    a success that is an HTML page (a login portal or error page, not DICOMweb)."""
    if status >= 500 or status in (401, 403, 407) or (300 <= status < 400 and status != 304):
        return True
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return 200 <= status < 300 and status != 204 and (not media or media == "text/html")


def auth_header(upstream_auth: str) -> dict[str, str]:
    """The ``Authorization`` header for ``basic:user:password`` or ``bearer:TOKEN`` (RFC 7617, 6750)."""
    if not upstream_auth:
        return {}
    kind, _, secret = upstream_auth.partition(":")
    if kind == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode("ascii")}


class UpstreamClient:
    """DICOMweb requests to ``settings.upstream_url`` with this system's credentials."""

    def __init__(self, settings: ImagingSettings, client: httpx.AsyncClient | None = None) -> None:
        self.base = settings.upstream_url.rstrip("/")
        self.own_base = settings.dicomweb_base
        self._quirks = settings.upstream_quirks
        self._timeout = settings.upstream_timeout
        self._auth = auth_header(settings.upstream_auth)
        #: One context for the pooled client and :meth:`relayed`'s own connections: the system's
        #: trust store plus ``upstream_ca_file``, host names checked, TLS 1.2 or newer.
        self._tls = http.trust(settings.upstream_ca_file)
        target = urllib.parse.urlsplit(self.base)
        proxies = urllib.request.getproxies()
        #: Whether whole retrievals may be read off a connection of their own (:meth:`relayed`):
        #: not when an HTTP proxy of the environment applies to the PACS (httpx honours those).
        self.direct = not (target.scheme in proxies or "all" in proxies) or bool(
            urllib.request.proxy_bypass(target.hostname or "")
        )
        self.http = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout, read=settings.upstream_timeout),
            headers=self._auth,
            follow_redirects=False,
            verify=self._tls,
        )

    async def quirks(self) -> str:
        """The active quirks; ``auto`` asks the upstream's origin for Orthanc's ``/system`` once."""
        if self._quirks == "auto":
            origin = self.base.rsplit("/", 1)[0] if self.base.count("/") > 2 else self.base
            try:
                response = await self.http.get(f"{origin}/system")
                body = response.json() if response.status_code == 200 else {}
            except (httpx.HTTPError, ValueError):
                return ""  # undecided: try again on the next request
            self._quirks = "orthanc" if isinstance(body, dict) and "ApiVersion" in body else ""
        return self._quirks

    async def query_string(self, items: Iterable[tuple[str, str]]) -> str:
        """Encode QIDO-RS query parameters the way the upstream understands them."""
        pairs = list(items)
        if await self.quirks() == "orthanc":
            return "&".join(
                f"{urllib.parse.quote(k, safe=_ORTHANC_SAFE)}={urllib.parse.quote(v, safe=_ORTHANC_SAFE)}"
                for k, v in pairs
            )
        return urllib.parse.urlencode(pairs)

    async def request_headers(self, caller: Mapping[str, str], *, identity: bool) -> dict[str, str]:
        """The caller's allow-listed headers; ``identity`` asks for an unencoded body (to rewrite it)."""
        headers = {name: caller[name] for name in FORWARDED_REQUEST_HEADERS if name in caller}
        # httpx would add its own "gzip, deflate" otherwise, and its bytes would go out unlabelled
        headers["accept-encoding"] = "identity" if identity else headers.get("accept-encoding", "identity")
        accept = headers.get("accept", "")
        if "*/*" in accept and "multipart/related" in accept and await self.quirks() == "orthanc":
            headers["accept"] = ORTHANC_FRAMES_ACCEPT
        return headers

    async def open(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        content: AsyncIterator[bytes] | None = None,
    ) -> httpx.Response:
        """Send one request and return the response with its body not yet read (close it!)."""
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        request = self.http.build_request(method, url, headers=dict(headers), content=content)
        try:
            return await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream PACS is unreachable: {type(exc).__name__}") from exc

    async def relayed(self, path: str, query: str, headers: Mapping[str, str]) -> relay.RelayedResponse:
        """A GET read straight off its own connection (:mod:`relay`: whole studies, series and
        instances); same credentials, TLS verification and timeout as :meth:`open`."""
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        try:
            return await relay.get(url, {**headers, **self._auth}, wait=self._timeout, tls=self._tls)
        except relay.RelayError as exc:
            raise UpstreamError(str(exc)) from exc

    async def search(self, path: str, params: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """One QIDO-RS request answered as a JSON array (204 and 404 mean no results)."""
        response = await self.open(
            "GET", path, await self.query_string(params), {"accept": "application/dicom+json"}
        )
        try:
            await response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream PACS broke off: {type(exc).__name__}") from exc
        finally:
            await response.aclose()
        if response.status_code in (204, 404):
            return []
        if 400 <= response.status_code < 500 and not upstream_fault(response.status_code, None):
            raise UpstreamRefusal(response.status_code, f"the upstream PACS refused the query ({path})")
        if response.status_code != 200:
            raise UpstreamError(f"the upstream PACS answered QIDO-RS {path} with {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamError("the upstream PACS answered QIDO-RS with invalid JSON") from exc
        if not isinstance(body, list):
            raise UpstreamError("the upstream PACS answered QIDO-RS with something other than an array")
        return [item for item in body if isinstance(item, dict)]

    async def aclose(self) -> None:
        await self.http.aclose()


def first_value(item: Mapping[str, Any], tag: str) -> Any:
    """The first Value of ``tag`` in a PS3.18 Annex F JSON data set, or None."""
    element = item.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None
