"""Bearer tokens (`AUTH_MODE=jwt`) against a loopback OpenID Connect issuer with real keys:
every forgery an attacker would try is refused with a 401 that says nothing of why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.config import Settings
from shared.errors import ConfigError
from shared.security.identity import (
    SHARED_OWNER,
    AuthUnavailable,
    Unauthorized,
    client_address,
    identify,
    owner_of,
)
from shared.security.tokens import MIN_REFRESH_INTERVAL_S, TokenPolicy, TokenVerifier
from tests.oidc import AUDIENCE, SCOPE, TENANT, Issuer


@pytest.fixture
def issuer():
    with Issuer() as running:
        yield running


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(issuer: Issuer, clock: Clock) -> TokenVerifier:
    return TokenVerifier(issuer.url, AUDIENCE, TokenPolicy(SCOPE), clock=clock)


def _b64(part: dict) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")


def _unsigned(header: dict, claims: dict) -> str:
    return f"{_b64(header).decode()}.{_b64(claims).decode()}."


def test_a_valid_token_names_its_issuer_and_subject(issuer, verifier) -> None:
    assert verifier.identity(issuer.token("alice")) == f"{issuer.url}\nalice"
    assert verifier.identity(issuer.token("bob")) != verifier.identity(issuer.token("alice"))


def test_an_entra_token_names_its_tenant_and_object_id(issuer, verifier) -> None:
    # Entra's `sub` differs per application; `oid` is the user in the tenant (the tenant in
    # the issuer's address).
    one = verifier.identity(issuer.token("pairwise-1", tid=TENANT, oid="user-7"))
    two = verifier.identity(issuer.token("pairwise-2", tid=TENANT, oid="user-7"))
    assert one == two == f"entra\n{TENANT}\nuser-7"


def test_tenant_and_object_id_claims_of_another_tenant_are_not_trusted(issuer, verifier) -> None:
    # An issuer that lets users set custom claims must not let Mallory become Alice.
    alice = verifier.identity(issuer.token("alice", tid=TENANT, oid="user-7"))
    mallory = verifier.identity(issuer.token("mallory", tid="other", oid="user-7"))
    assert mallory == f"{issuer.url}\nmallory" != alice


def _forgeries(issuer: Issuer) -> dict[str, str]:
    now = int(time.time())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "alice", "exp": now + 600}
    public_pem = (
        issuer.keys[issuer.current]
        .public_key()
        .public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return {
        "expired": issuer.token(exp=now - 120),
        "not yet valid": issuer.token(nbf=now + 600),
        "wrong audience": issuer.token(aud="api://another-app"),
        "wrong issuer": issuer.token(iss="https://evil.example/v2.0"),
        "no expiry": issuer.token(exp=None),
        "no subject": issuer.token(sub=None),
        "signed by another key under the issuer's key id": jwt.encode(
            claims, other_key, algorithm="RS256", headers={"kid": issuer.current}
        ),
        "alg none": _unsigned({"alg": "none", "kid": issuer.current}, claims),
        "HS256 with the public key as the secret": _hs256(claims, public_pem, issuer.current),
        "an unknown key id": jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": "x"}),
        "ES256 under the issuer's RSA key id": jwt.encode(
            claims,
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": issuer.current},
        ),
        "PS256 signed by another key under the issuer's key id": jwt.encode(
            claims, other_key, algorithm="PS256", headers={"kid": issuer.current}
        ),
        "no key id": jwt.encode(claims, issuer.keys[issuer.current], algorithm="RS256"),
        "not a token": "not.a.token",
        "garbage": "\x00" * 40,
    }


def _hs256(claims: dict, secret: bytes, kid: str) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = _b64(header) + b"." + _b64(claims)
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def test_every_forgery_is_refused_without_saying_why(issuer, verifier) -> None:
    for name, token in _forgeries(issuer).items():
        with pytest.raises(Unauthorized) as refused:
            verifier.identity(token)
        assert refused.value.message == "the bearer token is not valid", name


def test_clock_skew_up_to_a_minute_is_tolerated(issuer, verifier) -> None:
    now = int(time.time())
    assert verifier.identity(issuer.token(exp=now - 30))
    assert verifier.identity(issuer.token(nbf=now + 30))


def test_a_key_rotation_at_the_issuer_is_picked_up(issuer, verifier, clock) -> None:
    verifier.identity(issuer.token())
    assert issuer.key_requests() == 1
    clock.now += MIN_REFRESH_INTERVAL_S  # keys were read a minute ago
    issuer.rotate()
    assert verifier.identity(issuer.token("alice")) == f"{issuer.url}\nalice"
    assert issuer.key_requests() == 2


def test_unknown_key_ids_refresh_the_keys_at_most_once_a_minute(issuer, verifier, clock) -> None:
    verifier.identity(issuer.token())
    forged = _forgeries(issuer)["an unknown key id"]
    for _ in range(50):
        with pytest.raises(Unauthorized):
            verifier.identity(forged)
    assert issuer.key_requests() == 1  # no request to the issuer per made-up key id
    clock.now += MIN_REFRESH_INTERVAL_S
    with pytest.raises(Unauthorized):
        verifier.identity(forged)
    assert issuer.key_requests() == 2


def test_an_unreachable_issuer_is_503_not_401(issuer, clock) -> None:
    verifier = TokenVerifier(
        "http://127.0.0.1:9/tenant/v2.0", AUDIENCE, TokenPolicy(SCOPE), clock=clock
    )
    for _ in range(3):  # also within the minute after the failed fetch
        with pytest.raises(AuthUnavailable):
            verifier.identity(issuer.token())


def test_identify_needs_a_bearer_token_in_jwt_mode(issuer) -> None:
    settings = Settings(
        auth_mode="jwt", auth_issuer=issuer.url, auth_audience=AUDIENCE, auth_required_scope=SCOPE
    )
    for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthorized):
            identify(headers, settings)
    caller = identify({"authorization": f"Bearer {issuer.token('alice')}"}, settings)
    assert caller.authenticated
    assert caller.owner == owner_of(f"{issuer.url}\nalice")
    assert caller.owner != SHARED_OWNER


def test_key_mode_has_one_shared_owner() -> None:
    caller = identify({"x-forwarded-for": "203.0.113.7:51234"}, Settings())
    assert caller.owner == SHARED_OWNER and not caller.authenticated
    assert caller.address == "203.0.113.7"


@pytest.mark.parametrize(
    ("header", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:51234", "203.0.113.7"),
        # What a client put in the header comes first; the front end appends the truth.
        ("1.2.3.4, 203.0.113.7:443", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("", None),
    ],
)
def test_the_client_address_is_the_front_ends_entry(header: str, address: str | None) -> None:
    assert client_address({"x-forwarded-for": header}) == address


def test_jwt_mode_needs_an_https_issuer_and_an_audience() -> None:
    with pytest.raises(ConfigError, match="AUTH_ISSUER and AUTH_AUDIENCE"):
        Settings.from_env({"AUTH_MODE": "jwt"})
    with pytest.raises(ConfigError, match="https"):
        Settings.from_env(
            {
                "AUTH_MODE": "jwt",
                "AUTH_ISSUER": "http://idp.example",
                "AUTH_AUDIENCE": "a",
                "AUTH_REQUIRED_SCOPE": SCOPE,
            }
        )
