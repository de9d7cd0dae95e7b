"""Tests for imagebridge.ehr.smart.client_assertion: RFC 7523 §3 / SMART client-confidential-asymmetric.

Each attack of the security catalogue (AS-22 … AS-29) is one test or one parameter below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from joserfc.jws import JWSRegistry

from imagebridge.ehr.smart.client_assertion import (
    MAX_LIFETIME,
    InvalidClient,
    MemoryReplayStore,
    VerifiedClient,
    verify_client_assertion,
)
from imagebridge.ehr.smart.jwks_fetch import JwksError

pytestmark = pytest.mark.anyio

CLIENT_ID = "backend-pipeline"
TOKEN_URL = "https://ehr.example.org/auth/token"
JWKS_URI = "https://pipeline.example.org/.well-known/jwks.json"
NOW = 1_750_000_000.0
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
ATTACKER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, other key
DROP = object()


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Client:
    client_id: str = CLIENT_ID
    jwks: dict[str, Any] | None = field(default_factory=lambda: public_jwks(RSA, EC))
    jwks_uri: str | None = None
    enabled: bool = True


@dataclass
class Env:
    """Registered clients, a recording JWKS fetcher and a replay store."""

    client: Client = field(default_factory=Client)
    remote_jwks: dict[str, Any] = field(default_factory=lambda: public_jwks(RSA, EC))
    fetched: list[str] = field(default_factory=list)
    replay: MemoryReplayStore = field(default_factory=lambda: MemoryReplayStore(clock=lambda: NOW))
    fetch_override: Callable[[str], Awaitable[KeySet]] | None = None

    async def resolve(self, client_id: str) -> Client | None:
        return self.client if client_id == self.client.client_id else None

    async def fetch(self, url: str) -> KeySet:
        self.fetched.append(url)
        if url != self.client.jwks_uri:
            raise AssertionError(f"fetched a URL that is not registered: {url}")
        return KeySet.import_key_set(self.remote_jwks)  # type: ignore[arg-type]

    async def verify(
        self, assertion: str, form_client_id: str | None = CLIENT_ID, **kw: Any
    ) -> VerifiedClient:
        return await verify_client_assertion(
            assertion,
            form_client_id=form_client_id,
            token_endpoint=TOKEN_URL,
            resolve_client=self.resolve,
            fetch_jwks=self.fetch_override or self.fetch,
            replay=self.replay,
            now=NOW,
            **kw,
        )

    async def rejects(self, assertion: str, match: str, **kw: Any) -> None:
        with pytest.raises(InvalidClient, match=match) as info:
            await self.verify(assertion, **kw)
        assert info.value.error == "invalid_client"
        if assertion:
            assert assertion not in info.value.error_description
        assert info.value.error_description == str(info.value)


def claims(**changes: object) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "exp": NOW + 240,
        "iat": NOW,
        "jti": uuid.uuid4().hex,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def sign(payload: dict[str, Any], key: Key = RSA, alg: str = "RS384", **header: object) -> str:
    protected: dict[str, Any] = {"alg": alg, "kid": key.kid, "typ": "JWT", **header}
    protected = {k: v for k, v in protected.items() if v is not DROP}
    return jws.serialize_compact(protected, json.dumps(payload), key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


RS384_HEADER = b'{"alg":"RS384","kid":"rsa-1"}'


def compact(header: bytes, payload: bytes, signature: str = "c2ln") -> str:
    return f"{b64(header)}.{b64(payload)}.{signature}"


def sign_raw(header: str, payload: str, key: Key = RSA, alg: str = "RS384") -> str:
    """Sign exact JSON texts (to smuggle duplicate members past any JSON library)."""
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    return f"{signing_input}.{b64(JWSRegistry.algorithms[alg].sign(signing_input.encode(), key))}"


def hmac_token(alg: str, secret: bytes, payload: dict[str, Any]) -> str:
    signing_input = (
        f"{b64(json.dumps({'alg': alg, 'kid': 'rsa-1'}).encode())}.{b64(json.dumps(payload).encode())}"
    )
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}"


# --- accepted -------------------------------------------------------------------------------------


async def test_rs384_with_inline_jwks() -> None:
    env = Env()
    payload = claims()
    verified = await env.verify(sign(payload))
    assert verified == VerifiedClient(CLIENT_ID, "rsa-1", "RS384", payload["jti"], NOW + 240)
    assert env.fetched == []


async def test_es384_with_registered_jwks_uri() -> None:
    env = Env(client=Client(jwks=None, jwks_uri=JWKS_URI))
    verified = await env.verify(sign(claims(), EC, "ES384"))
    assert (verified.key_id, verified.algorithm) == ("ec-1", "ES384")
    assert env.fetched == [JWKS_URI]


async def test_jku_equal_to_registered_uri_is_used() -> None:
    env = Env(client=Client(jwks_uri=JWKS_URI))
    await env.verify(sign(claims(), jku=JWKS_URI))
    assert env.fetched == [JWKS_URI]


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": [TOKEN_URL, "https://other.example/token"]},
        {"exp": NOW + MAX_LIFETIME},
        {"exp": NOW + MAX_LIFETIME + 60},  # within leeway
        {"exp": NOW - 30},  # expired 30 s ago: within leeway
        {"nbf": NOW + 8, "iat": NOW + 8},  # AS-29: small skew accepted
        {"iat": DROP},
        {"jti": "j" * 255},
        {"exp": int(NOW) + 100},
    ],
)
async def test_accepted_variants(changes: dict[str, object]) -> None:
    await Env().verify(sign(claims(**changes)))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", DROP])
async def test_typ_jwt_or_absent(typ: object) -> None:
    await Env().verify(sign(claims(), typ=typ))


async def test_form_client_id_optional() -> None:
    await Env().verify(sign(claims()), form_client_id=None)


# --- AS-22: unregistered key, corrupted signature -------------------------------------------------


async def test_unregistered_key_same_kid() -> None:
    await Env().rejects(sign(claims(), ATTACKER), "signature is invalid")


async def test_unregistered_key_other_kid() -> None:
    await Env().rejects(sign(claims(), RSAKey.generate_key(2048, parameters={"kid": "new"})), "no key")


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS384"), (EC, "ES384")])
async def test_corrupted_signature(key: Key, alg: str) -> None:
    token = sign(claims(), key, alg)
    head, _, sig = token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    await Env().rejects(f"{head}.{b64(bytes(raw))}", "signature is invalid")


async def test_payload_swapped_under_signature() -> None:
    header, _, signature = sign(claims()).split(".")
    forged = b64(json.dumps(claims(exp=NOW + 200)).encode())
    await Env().rejects(f"{header}.{forged}.{signature}", "signature is invalid")


# --- AS-23: replay --------------------------------------------------------------------------------


async def test_replayed_jti() -> None:
    env = Env()
    jti = uuid.uuid4().hex
    await env.verify(sign(claims(jti=jti)))
    await env.rejects(sign(claims(jti=jti, exp=NOW + 200)), "already been used")


async def test_jti_scoped_per_issuer() -> None:
    env = Env()
    await env.verify(sign(claims(jti="shared")))
    env.client = Client(client_id="other-client")
    await env.verify(sign(claims(jti="shared", iss="other-client", sub="other-client")), "other-client")


async def test_replay_checked_only_after_signature() -> None:
    env = Env()
    jti = uuid.uuid4().hex
    await env.rejects(sign(claims(jti=jti), ATTACKER), "signature")
    await env.verify(sign(claims(jti=jti)))  # the forged attempt did not burn the jti


async def test_memory_replay_store_expiry() -> None:
    now = [100.0]
    store = MemoryReplayStore(clock=lambda: now[0])
    assert await store.first_use("a", 200.0)
    assert not await store.first_use("a", 300.0)
    assert await store.first_use("b", 150.0)
    now[0] = 160.0
    assert await store.first_use("x", 170.0)
    assert len(store) == 2  # "b" was pruned
    now[0] = 200.0
    assert await store.first_use("a", 400.0)
    now[0] = 250.0
    assert not await store.first_use("a", 500.0)  # the renewed entry survived its old heap entry


# --- AS-24: claim mismatches ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"aud": "https://ehr.example.org/auth/token/"}, "aud"),
        ({"aud": "https://ehr.example.org/auth/authorize"}, "aud"),
        ({"aud": ["https://other.example/token"]}, "aud"),
        ({"aud": DROP}, "aud"),
        ({"aud": {"url": TOKEN_URL}}, "aud"),
        ({"sub": "someone-else"}, "sub must equal iss"),
        ({"sub": DROP}, "sub must equal iss"),
        ({"iss": DROP}, "iss is missing"),
        ({"iss": 42, "sub": 42}, "iss is missing"),
    ],
)
async def test_claim_mismatch(changes: dict[str, object], match: str) -> None:
    await Env().rejects(sign(claims(**changes)), match)


async def test_iss_not_registered() -> None:
    token = sign(claims(iss="intruder", sub="intruder"))
    await Env().rejects(token, "unknown", form_client_id="intruder")


async def test_form_client_id_differs_from_iss() -> None:
    await Env().rejects(sign(claims()), "client_id does not match", form_client_id="other-client")


async def test_disabled_client() -> None:
    await Env(client=Client(enabled=False)).rejects(sign(claims()), "disabled")


# --- AS-25: lifetime ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exp": NOW - 300}, "expired"),
        ({"exp": NOW - 60}, "expired"),
        ({"exp": DROP}, "exp is missing"),
        ({"exp": NOW + MAX_LIFETIME + 61}, "five minutes"),
        ({"exp": NOW + 3600}, "five minutes"),
        ({"exp": str(NOW + 100)}, "NumericDate"),
        ({"exp": True}, "NumericDate"),
        ({"exp": None}, "NumericDate"),
    ],
)
async def test_lifetime(changes: dict[str, object], match: str) -> None:
    await Env().rejects(sign(claims(**changes)), match)


async def test_leeway_is_configurable() -> None:
    await Env().rejects(sign(claims(nbf=NOW + 8)), "nbf", leeway=5)


# --- AS-26: algorithm attacks ---------------------------------------------------------------------

PUBLIC_PEM = RSA.get_op_key("verify").public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
PUBLIC_DER = RSA.get_op_key("verify").public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: compact(b'{"alg":"none","kid":"rsa-1"}', json.dumps(p).encode(), ""),
        lambda p: compact(b'{"alg":"none","kid":"rsa-1"}', json.dumps(p).encode()),
        lambda p: compact(b'{"alg":"NONE","kid":"rsa-1"}', json.dumps(p).encode()),
        lambda p: hmac_token("HS256", PUBLIC_PEM, p),
        lambda p: hmac_token("HS384", PUBLIC_PEM, p),
        lambda p: hmac_token("HS256", PUBLIC_DER, p),
        lambda p: hmac_token("HS256", json.dumps(RSA.as_dict(private=False)).encode(), p),
        lambda p: sign(p, RSA, "RS256"),
        lambda p: sign(p, RSA, "PS384"),
        lambda p: sign(p, RSA, "RS512"),
        lambda p: sign(p, ECKey.generate_key("P-256", parameters={"kid": "ec-1"}), "ES256"),
        lambda p: sign_raw('{"kid":"rsa-1"}', json.dumps(p)),
        lambda p: sign_raw('{"alg":["RS384"],"kid":"rsa-1"}', json.dumps(p)),
    ],
    ids=[
        *("none", "none-sig", "NONE", "HS256-pem", "HS384-pem", "HS256-der", "HS256-jwk"),
        *("RS256", "PS384", "RS512", "ES256", "no-alg", "alg-list"),
    ],
)
async def test_algorithm_attacks(make: Any) -> None:
    await Env().rejects(make(claims()), "alg|compact serialization")


@pytest.mark.parametrize(("key", "alg"), [(RSA, "ES384"), (EC, "RS384")])
async def test_kty_must_fit_alg(key: Key, alg: str) -> None:
    # Header names the other algorithm than the key's type: no key fits, nothing is verified.
    header = json.dumps({"alg": alg, "kid": key.kid})
    signing_alg = "RS384" if isinstance(key, RSAKey) else "ES384"
    await Env().rejects(sign_raw(header, json.dumps(claims()), key, signing_alg), "no key")


async def test_es384_needs_p384_curve() -> None:
    p256 = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    env = Env(client=Client(jwks=public_jwks(p256)))
    header = json.dumps({"alg": "ES384", "kid": "ec-1"})
    await env.rejects(sign_raw(header, json.dumps(claims()), p256, "ES256"), "no key")


async def test_short_rsa_key_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    weak = {"kty": "RSA", "kid": "weak", **_public_numbers(private.public_key())}
    header = json.dumps({"alg": "RS384", "kid": "weak"})
    signing_input = f"{b64(header.encode())}.{b64(json.dumps(claims()).encode())}"
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
    token = f"{signing_input}.{b64(signature)}"
    # Registered inline: refused when the JWKS is read.
    await Env(client=Client(jwks={"keys": [weak]})).rejects(token, "too weak")
    # Handed over by a fetcher that let it through: still never used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak_set = KeySet.import_key_set({"keys": [weak]})  # type: ignore[list-item]

    async def lenient(url: str) -> KeySet:
        return weak_set

    await Env(client=Client(jwks=None, jwks_uri=JWKS_URI), fetch_override=lenient).rejects(token, "no key")


def _public_numbers(public: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = public.public_numbers()
    return {
        "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }


# --- AS-27: key lookup injection ------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["../../dev/null", "' OR 1=1--", "rsa-1 ", "RSA-1", "*", "rsa-%31"])
async def test_kid_injection(kid: str) -> None:
    env = Env(client=Client(jwks_uri=JWKS_URI, jwks=None))
    await env.rejects(sign(claims(), kid=kid), "no key")
    assert env.fetched == [JWKS_URI]


@pytest.mark.parametrize("header", ['{"alg":"RS384"}', '{"alg":"RS384","kid":""}', '{"alg":"RS384","kid":7}'])
async def test_kid_required(header: str) -> None:
    await Env().rejects(sign_raw(header, json.dumps(claims())), "kid")


async def test_duplicate_kid_in_jwks() -> None:
    twin = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    await Env(client=Client(jwks=public_jwks(RSA, twin))).rejects(sign(claims()), "several keys")


async def test_same_kid_for_different_key_types_is_unambiguous() -> None:
    ec_twin = ECKey.generate_key("P-384", parameters={"kid": "rsa-1"})
    await Env(client=Client(jwks=public_jwks(RSA, ec_twin))).verify(sign(claims()))


async def test_key_restricted_to_other_use_or_alg() -> None:
    for extra in ({"use": "enc"}, {"alg": "RS256"}, {"key_ops": ["encrypt"]}):
        jwks = {"keys": [{**RSA.as_dict(private=False), **extra}]}
        await Env(client=Client(jwks=jwks)).rejects(sign(claims()), "no key")


@pytest.mark.parametrize(
    "client", [Client(jwks_uri=JWKS_URI), Client(), Client(jwks=None, jwks_uri=JWKS_URI)]
)
async def test_jku_to_attacker_never_fetched(client: Client) -> None:
    env = Env(client=client)
    attacker_jwks = "https://attacker.example/jwks.json"
    await env.rejects(sign(claims(), ATTACKER, jku=attacker_jwks), "jku")
    assert attacker_jwks not in env.fetched
    assert env.fetched == []


@pytest.mark.parametrize(
    "header",
    [
        {"jwk": ATTACKER.as_dict(private=False)},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIB"]},
        {"crit": ["exp"], "exp": NOW + 60},
        {"crit": ["b64"], "b64": True},
    ],
    ids=["jwk", "x5u", "x5c", "crit", "crit-b64"],
)
async def test_forbidden_headers(header: dict[str, object]) -> None:
    env = Env(client=Client(jwks_uri=JWKS_URI))
    await env.rejects(
        sign_raw(json.dumps({"alg": "RS384", "kid": "rsa-1", **header}), json.dumps(claims())), "header"
    )
    assert env.fetched == []


async def test_jku_not_a_string() -> None:
    header = json.dumps({"alg": "RS384", "kid": "rsa-1", "jku": [JWKS_URI]})
    await Env(client=Client(jwks_uri=JWKS_URI)).rejects(sign_raw(header, json.dumps(claims())), "jku")


# --- AS-28: cross-JWT confusion, duplicates -------------------------------------------------------


async def test_id_token_shaped_jwt() -> None:
    id_token = {
        "iss": "https://ehr.example.org",
        "sub": "Patient/123",
        "aud": CLIENT_ID,
        "exp": NOW + 240,
        "iat": NOW,
        "nonce": "n-0S6_WzA2Mj",
        "fhirUser": "Patient/123",
    }
    await Env().rejects(sign(id_token), "sub must equal iss|client_id does not match")
    await Env().rejects(sign(id_token), "sub must equal iss", form_client_id=None)


async def test_access_token_jwt_typ() -> None:
    await Env().rejects(sign(claims(), typ="at+jwt"), "typ")


async def test_duplicate_claim_names() -> None:
    payload = json.dumps(claims())[:-1] + f', "iss": "{CLIENT_ID}", "aud": "https://attacker.example"}}'
    await Env().rejects(sign_raw('{"alg":"RS384","kid":"rsa-1"}', payload), "duplicate")


async def test_duplicate_header_names() -> None:
    await Env().rejects(
        sign_raw('{"alg":"RS384","kid":"rsa-1","alg":"none"}', json.dumps(claims())), "duplicate"
    )


async def test_unusable_jwks_uri() -> None:
    async def failing(url: str) -> KeySet:
        raise JwksError("the JWKS URL answered HTTP 500")

    await Env(client=Client(jwks=None, jwks_uri=JWKS_URI), fetch_override=failing).rejects(
        sign(claims()), "HTTP 500"
    )


async def test_inline_jwks_with_private_key() -> None:
    await Env(client=Client(jwks={"keys": [RSA.as_dict(private=True)]})).rejects(sign(claims()), "private")


async def test_client_without_keys() -> None:
    await Env(client=Client(jwks=None)).rejects(sign(claims()), "no registered keys")


# --- AS-29: clock skew ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"nbf": NOW + 600}, "nbf"), ({"iat": NOW + 600}, "iat"), ({"nbf": "soon"}, "NumericDate")],
)
async def test_future_nbf_iat(changes: dict[str, object], match: str) -> None:
    await Env().rejects(sign(claims(**changes)), match)


# --- jti and shape --------------------------------------------------------------------------------


@pytest.mark.parametrize("jti", [DROP, "", "j" * 256, 12345, None])
async def test_bad_jti(jti: object) -> None:
    await Env().rejects(sign(claims(jti=jti)), "jti")


@pytest.mark.parametrize(
    "assertion",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d.e",  # JWE compact
        "!!.!!.!!",
        compact(b"[]", b"{}"),
        compact(RS384_HEADER, b"[1]"),
        compact(RS384_HEADER, b"\xff\xfe"),
        compact(RS384_HEADER, b'{"a":NaN}'),
        compact(RS384_HEADER, b"{}", "c2ln="),
        "x" * 20000,
    ],
)
async def test_malformed(assertion: str) -> None:
    await Env().rejects(assertion, "client assertion")
