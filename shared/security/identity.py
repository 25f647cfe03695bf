"""Who is calling: the caller every stored piece of data belongs to.

`AUTH_MODE=key` (the Android app as shipped): the Functions host has checked the function
key, which every copy of the app carries, so there is no per-user identity. Every caller
is the same owner, and what keeps one user's data from another is that request and
conversation ids are unguessable (128 random bits) and issued by the server.

`AUTH_MODE=jwt`: the app also sends `Authorization: Bearer <token>` from an OpenID Connect
issuer (Entra ID, Entra External ID, or any other). The token is validated here, and the
caller is its issuer and subject (Entra: tenant and object id), so each user's requests
and conversations are theirs alone.

The owner is a hash of that identity: it names storage (blob prefixes, table partitions)
without putting a user's identifier, or anything a request said, into a storage key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from shared.config import Settings
from shared.errors import TalkError

SHARED_OWNER = "shared"  # every caller in key mode


class Unauthorized(TalkError):
    """No valid bearer token: 401 with `WWW-Authenticate: Bearer`, and never why exactly."""

    status = 401
    code = "unauthorized"


class AuthUnavailable(TalkError):
    """The token cannot be checked right now (the issuer's keys cannot be fetched)."""

    status = 503
    code = "auth_unavailable"


@dataclass(frozen=True)
class Caller:
    owner: str  # names the caller's storage; SHARED_OWNER in key mode
    address: str | None  # the client's address from the front end, for per-address limits
    authenticated: bool  # True when a token named the caller

    @property
    def retry_scope(self) -> str:
        """Who counts as the same caller when a request is sent again without an
        `Idempotency-Key`: a signed-in caller is its owner already; in key mode, where every
        caller is one owner, the client address tells one phone's retry from another's."""
        return "" if self.authenticated else self.address or ""


def owner_of(identity: str) -> str:
    return "u" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def client_address(headers: Mapping[str, str]) -> str | None:
    """The client's address as the front end saw it: the last `X-Forwarded-For` entry.

    Azure's front end appends the address it accepted the connection from; anything a
    client put in the header itself comes before it, so only the last entry is trusted.
    """
    forwarded = headers.get("x-forwarded-for") or ""
    last = forwarded.split(",")[-1].strip()
    if not last:
        return None
    # IPv4 with a port (App Service adds one: 203.0.113.7:51234); IPv6 may be bracketed.
    if last.startswith("["):
        return last[1:].split("]", 1)[0]
    host, sep, port = last.rpartition(":")
    return host if sep and port.isdigit() and "." in host else last


def identify(headers: Mapping[str, str], settings: Settings) -> Caller:
    """The caller of a request, or Unauthorized / AuthUnavailable. `headers` look names up
    in lower case, as the Functions `HttpRequest.headers` does whatever the client sent."""
    address = client_address(headers)
    if settings.auth_mode == "key":
        return Caller(SHARED_OWNER, address, authenticated=False)
    from shared.security.tokens import TokenPolicy, token_verifier

    authorization = headers.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required")
    verifier = token_verifier(
        settings.auth_issuer,
        settings.auth_audience,
        TokenPolicy(
            settings.auth_required_scope, settings.auth_required_role, settings.allowed_clients
        ),
    )
    identity = verifier.identity(token.strip())
    return Caller(owner_of(identity), address, authenticated=True)
