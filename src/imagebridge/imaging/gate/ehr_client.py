"""The imaging system's own connection to the EHR, as a registered Backend Services client.

It discovers the EHR's endpoints from ``{fhir}/.well-known/smart-configuration`` (SMART App
Launch 2.2 §"Conformance"), obtains its own access token with ``client_credentials`` and a
signed assertion (RFC 7523 §2.2), reuses it until shortly before expiry, and makes the
introspection (RFC 7662 §2.1) and FHIR calls the gate and the publisher need.

The gate's questions (introspection, and FHIR queries with the caller's token) are bounded as a
whole by ``deadline`` seconds, discovery and token renewal included: an EHR that is down, slow
or drip-feeding bytes costs at most that long before the gate answers 503 (security.md FT-02).
Within one request (:func:`request_budget`) the questions share that budget: an introspection
that took most of it leaves only the rest to the study query. Questions asked concurrently
(a QIDO-RS page's study batches) spend the budget once for the time they overlap: it counts the
wall-clock time during which at least one question was waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from imagebridge.common import jose


class _Budget:
    """Seconds of EHR waiting a request has left; overlapping waits are counted once."""

    def __init__(self, seconds: float) -> None:
        self.remaining = seconds
        self.waiting = 0  # questions in flight now
        self.since = 0.0  # when the current stretch of waiting began

    def left(self, now: float) -> float:
        return self.remaining - (now - self.since if self.waiting else 0.0)

    def enter(self, now: float) -> None:
        if not self.waiting:
            self.since = now
        self.waiting += 1

    def leave(self, now: float) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.remaining -= now - self.since


#: The EHR waiting budget of the current request (None outside a request: each call gets the
#: full deadline). Tasks started within the request share the same object.
_BUDGET: ContextVar[_Budget | None] = ContextVar("ehr_budget", default=None)


def request_budget(seconds: float) -> None:
    """Give the current request (its task's context) ``seconds`` of EHR waiting in total."""
    _BUDGET.set(_Budget(seconds))


class EhrUnavailable(Exception):
    """The EHR could not be asked, or answered something unusable (fail closed: 503)."""


@dataclass(frozen=True)
class EhrEndpoints:
    token: str
    introspection: str


class EhrClient:
    """Discovery, own-token management, introspection and FHIR requests against one EHR."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        fhir_base: str,
        client_id: str,
        private_jwk: dict[str, Any],
        scope: str,
        *,
        introspection_endpoint: str | None = None,
        deadline: float = 2.0,
    ) -> None:
        self.http = http
        self.fhir_base = fhir_base.rstrip("/")
        self.client_id = client_id
        self.private_jwk = private_jwk
        self.scope = scope
        self._override = introspection_endpoint or None
        self.deadline = deadline
        self._endpoints: EhrEndpoints | None = None
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    async def endpoints(self) -> EhrEndpoints:
        if self._endpoints is None:
            doc = await self._json("GET", f"{self.fhir_base}/.well-known/smart-configuration")
            token = doc.get("token_endpoint")
            introspection = self._override or doc.get("introspection_endpoint")
            if not isinstance(token, str) or not isinstance(introspection, str):
                raise EhrUnavailable("the EHR does not advertise token and introspection endpoints")
            self._endpoints = EhrEndpoints(token=token, introspection=introspection)
        return self._endpoints

    async def own_token(self) -> str:
        """This system's Backend Services token, renewed 30 s before it expires."""
        async with self._lock:
            if self._token and self._token[1] - 30 > time.time():
                return self._token[0]
            endpoints = await self.endpoints()
            body = await self._json(
                "POST",
                endpoints.token,
                data={
                    "grant_type": "client_credentials",
                    "scope": self.scope,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": jose.client_assertion(
                        self.client_id, endpoints.token, self.private_jwk
                    ),
                },
            )
            token, lifetime = body.get("access_token"), body.get("expires_in", 60)
            if not isinstance(token, str) or not isinstance(lifetime, int):
                raise EhrUnavailable("the EHR returned no usable access token")
            self._token = (token, time.time() + lifetime)
            return token

    async def introspect(self, token: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        """RFC 7662 §2.1: POST the token, authenticated with this system's own bearer token;
        ``extra`` are further request parameters (§2.1 allows them; docs/gate.md "Writing")."""
        async with self._bounded():
            return await self._introspect(token, extra or {})

    @contextlib.asynccontextmanager
    async def _bounded(self) -> AsyncIterator[None]:
        """At most what is left of the request's budget (or ``deadline``), then EhrUnavailable."""
        budget = _BUDGET.get()
        started = time.monotonic()
        allowed = self.deadline if budget is None else min(self.deadline, budget.left(started))
        if budget is not None:
            budget.enter(started)
        try:
            async with asyncio.timeout(max(allowed, 0.0)):
                yield
        except TimeoutError as exc:
            raise EhrUnavailable(f"the EHR did not answer within {self.deadline} s") from exc
        finally:
            if budget is not None:
                budget.leave(time.monotonic())

    async def _introspect(self, token: str, extra: dict[str, str]) -> dict[str, Any]:
        endpoints = await self.endpoints()
        for attempt in (0, 1):
            own = await self.own_token()
            response = await self._send(
                "POST",
                endpoints.introspection,
                data={**extra, "token": token},
                headers={"Authorization": f"Bearer {own}"},
            )
            if response.status_code == 401 and attempt == 0:
                self._token = None  # our own token was revoked or expired early: renew once
                continue
            return _json_body(response)
        raise EhrUnavailable("the EHR refused this system's credentials")

    async def fhir_get(self, path: str, params: dict[str, str], token: str) -> tuple[int, dict[str, Any]]:
        """A FHIR GET with the caller's token (criterion f, channel 1); returns status and body."""
        async with self._bounded():
            response = await self._send(
                "GET",
                f"{self.fhir_base}/{path}",
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
            )
        if response.status_code >= 500:
            raise EhrUnavailable(f"the EHR answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise EhrUnavailable("the EHR answered with invalid JSON") from exc
        return response.status_code, body if isinstance(body, dict) else {}

    async def fhir_put(self, path: str, params: dict[str, str], resource: dict[str, Any]) -> dict[str, Any]:
        """A conditional update with this system's own token (publishing)."""
        return await self._own_write("PUT", path, resource, params=params)

    async def fhir_create(self, resource_type: str, resource: dict[str, Any], if_none_exist: str) -> None:
        """A conditional create (FHIR R4 §3.1.0.8 ``If-None-Exist``) with this system's own token,
        for an EHR without the batch interaction: a retry after a lost response matches the first
        copy instead of adding a second."""
        await self._own_write("POST", resource_type, resource, headers={"If-None-Exist": if_none_exist})

    async def fhir_batch(self, entries: list[dict[str, Any]], *, wait: float) -> list[dict[str, Any]]:
        """``POST [base]`` with a ``batch`` Bundle of ``entries`` (FHIR R4 §3.1.0.11) with this
        system's own token, waiting up to ``wait`` s; the ``response`` of each entry, in order.

        A Bundle refused whole is :class:`PublishRefused`; an answer that is not a
        ``batch-response`` with one entry per request entry is :class:`EhrUnavailable`.
        """
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
        answer = await self._own_write("POST", "", bundle, headers={"Prefer": "return=minimal"}, wait=wait)
        answers = answer.get("entry", [])
        if (
            answer.get("type") != "batch-response"
            or not isinstance(answers, list)
            or len(answers) != len(entries)
        ):
            raise EhrUnavailable("the EHR's batch-response does not answer each entry")
        return [
            a["response"] if isinstance(a, dict) and isinstance(a.get("response"), dict) else {}
            for a in answers
        ]

    async def _own_write(
        self,
        method: str,
        path: str,
        resource: dict[str, Any],
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        own = await self.own_token()
        response = await self._send(
            method,
            f"{self.fhir_base}/{path}" if path else self.fhir_base,
            params=params,
            content=orjson.dumps(resource),  # stdlib json (httpx's json=) took 12x the CPU
            timeout=wait if wait is not None else self.http.timeout,
            headers={
                "Authorization": f"Bearer {own}",
                "Content-Type": "application/fhir+json",
                **(headers or {}),
            },
        )
        if response.status_code == 401:
            self._token = None  # our own token was revoked or expired early: renewed next time
        if 400 <= response.status_code < 500:  # its body may be an OperationOutcome, or anything
            raise PublishRefused(response.status_code, response.text[:500])
        return _json_body(response)

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        return _json_body(await self._send(method, url, **kwargs))

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise EhrUnavailable(f"the EHR could not be reached ({type(exc).__name__})") from exc


class PublishRefused(Exception):
    """The EHR refused a published resource (4xx); retrying the same write will not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


def _json_body(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise EhrUnavailable(f"the EHR answered {response.status_code}")
    try:
        body = response.json()
    except ValueError as exc:
        raise EhrUnavailable("the EHR answered with invalid JSON") from exc
    if not isinstance(body, dict):
        raise EhrUnavailable("the EHR answered with a JSON value that is not an object")
    return body
