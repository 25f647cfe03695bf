"""Bearer tokens from an OpenID Connect issuer, validated with PyJWT.

The issuer's signing keys come from its discovery document's `jwks_uri` and are cached.
An unknown key id (the issuer rotated its keys) refreshes them, at most once a minute, so a
stream of made-up key ids cannot turn into a stream of requests to the issuer. Only
asymmetric algorithms are accepted (never `none` or HMAC, whose "key" would be public),
the audience and issuer must match, and `exp` / `nbf` allow 60 s of clock skew.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from shared.lazy import load_once
from shared.security.identity import AuthUnavailable, Unauthorized

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LEEWAY_S = 60
REFRESH_AFTER_S = 24 * 3600  # keys are re-read daily even when none is unknown
MIN_REFRESH_INTERVAL_S = 60  # an unknown key id refreshes at most this often
_TIMEOUT = (5, 10)
_INVALID = "the bearer token is not valid"


@dataclass(frozen=True)
class TokenPolicy:
    """What a valid token must also be for: the API's delegated `scope` (`scp`, or the
    `scope` other issuers use) or an app `role`; and, when `clients` are named, issued to
    one of them (`azp`; `appid` in Entra v1 tokens)."""

    scope: str = ""
    role: str = ""
    clients: frozenset[str] = frozenset()

    def allows(self, claims: dict[str, Any]) -> bool:
        granted = claims.get("scp", claims.get("scope"))
        # A space-separated string (Entra, RFC 8693), or a list (Okta).
        scopes = granted.split() if isinstance(granted, str) else granted
        scopes = [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else []
        roles = claims.get("roles")
        roles = roles if isinstance(roles, list) else []
        if not ((self.scope and self.scope in scopes) or (self.role and self.role in roles)):
            return False
        client = claims.get("azp", claims.get("appid"))
        return not self.clients or (isinstance(client, str) and client in self.clients)


class TokenVerifier:
    def __init__(
        self,
        issuer: str,
        audience: str,
        policy: TokenPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.policy = policy
        # Entra issuers name their tenant, a GUID, in the path (`/<tenant>/v2.0`, B2C's
        # `/tfp/<tenant>/<policy>/v2.0`); an issuer without one has no Entra tenant.
        segments = urlsplit(issuer).path.strip("/").split("/")
        self._tenant = next((s.lower() for s in segments if _is_guid(s)), None)
        self._clock = clock
        self._session = session or requests.Session()
        # kid -> (key, the algorithms it may verify)
        self._keys: dict[str, tuple[jwt.PyJWK, frozenset[str]]] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def identity(self, token: str) -> str:
        """The caller a valid token names (`iss` + `sub`; Entra: `tid` + `oid`)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized(_INVALID) from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ASYMMETRIC_ALGORITHMS or not isinstance(kid, str):
            raise Unauthorized(_INVALID)
        key, algorithms = self._key(kid)
        # The algorithm is the key's, never only the token's: an RSA key verifies RS*/PS*,
        # an EC key its curve's ES*, an OKP key EdDSA, and a declared `alg` exactly that.
        if algorithm not in algorithms:
            raise Unauthorized(_INVALID)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, TypeError, ValueError) as error:
            log.info("Bearer token refused: %s", type(error).__name__)
            raise Unauthorized(_INVALID) from None
        if not self.policy.allows(claims):
            log.info("Bearer token refused: not for this API's scope, role or clients")
            raise Unauthorized(_INVALID)
        tenant, object_id = claims.get("tid"), claims.get("oid")
        # Entra's tenant and object id name the user across its applications; trusted only
        # when the token's tenant is the one AUTH_ISSUER names (another issuer may let
        # users set claims of those names).
        if (
            isinstance(tenant, str)
            and isinstance(object_id, str)
            and tenant
            and object_id
            and tenant.lower() == self._tenant
        ):
            return f"entra\n{self._tenant}\n{object_id}"
        return f"{claims['iss']}\n{claims['sub']}"

    def _key(self, kid: str) -> tuple[jwt.PyJWK, frozenset[str]]:
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at > REFRESH_AFTER_S
            may_refresh = self._fetched_at is None or now - self._fetched_at >= (
                MIN_REFRESH_INTERVAL_S
            )
            if stale or (kid not in self._keys and may_refresh):
                self._refresh(now)
            if not self._keys:  # never read, or the issuer has none: not the token's fault
                raise AuthUnavailable("the identity provider cannot be reached")
            key = self._keys.get(kid)
        if key is None:
            raise Unauthorized(_INVALID)
        return key

    def _refresh(self, now: float) -> None:
        try:
            discovery = self._get_json(
                f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
            )
            if discovery.get("issuer") != self.issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise ValueError("the discovery document has no jwks_uri")
            keys = _signing_keys(self._get_json(check_issuer_url(jwks_uri)))
        except (requests.RequestException, ValueError) as error:
            log.warning("Cannot read the signing keys of %s: %s", self.issuer, error)
            self._fetched_at = now  # try again in a minute, not on every request
            return
        self._keys = keys
        self._fetched_at = now
        log.info("Read %d signing keys of %s", len(self._keys), self.issuer)

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._session.get(url, timeout=_TIMEOUT)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} is not a JSON object")
        return document


def _is_guid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


_KEY_ALGORITHMS = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    "OKP": frozenset({"EdDSA"}),
}


def _signing_keys(jwks: dict[str, Any]) -> dict[str, tuple[jwt.PyJWK, frozenset[str]]]:
    """The usable signing keys of a JWK set by key id, each with the algorithms it may
    verify; others (encryption keys, symmetric or unknown key types) are left out."""
    keys: dict[str, tuple[jwt.PyJWK, frozenset[str]]] = {}
    for data in jwks.get("keys") or []:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        kid, kty = data.get("kid"), data.get("kty")
        family = _KEY_ALGORITHMS.get((kty, data.get("crv")) if kty == "EC" else kty)
        if not isinstance(kid, str) or family is None:
            continue
        declared = data.get("alg")
        algorithms = family & {declared} if declared is not None else family
        if not algorithms:
            continue
        try:
            keys[kid] = (jwt.PyJWK(data), algorithms)
        except (jwt.PyJWTError, TypeError, ValueError):
            continue
    return keys


def check_issuer_url(url: str) -> str:
    """Issuers and their keys are reached over HTTPS only (HTTP on loopback, for a local
    issuer); raises ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    ):
        return url
    raise ValueError(f"signing keys must come over HTTPS, not {parts.scheme}")


@load_once
def token_verifier(issuer: str, audience: str, policy: TokenPolicy) -> TokenVerifier:
    """The process's verifier for an issuer and audience, so its keys are cached once."""
    return TokenVerifier(issuer, audience, policy)
