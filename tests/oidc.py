"""A loopback OpenID Connect issuer with real RSA keys, as Entra ID presents itself to an
API: a discovery document, a JWK set, and tokens signed with the current key."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.stubs import Recorded, Reply, StubServer

AUDIENCE = "api://talk-backend"
TENANT = "8c1d9e2a-5b7f-4e3a-9d6c-2f0a1b3c4d5e"  # the issuer's tenant, as Entra names it
SCOPE = "Talk.Use"  # the scope the API exposes (docs/api.md's Entra set-up)


class Issuer:
    def __init__(self) -> None:
        self.server = StubServer(self._answer)
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.current = self.rotate()

    def __enter__(self) -> Issuer:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return f"{self.server.url}/{TENANT}/v2.0"

    def rotate(self) -> str:
        """Publish a new signing key and sign with it from now on; its key id."""
        kid = uuid.uuid4().hex
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.current = kid
        return kid

    def token(self, subject: str = "alice", *, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "scp": SCOPE,  # a user's token for the API, as the mobile app gets it
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        kid = kid or self.current
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def key_requests(self) -> int:
        return sum(1 for r in self.server.requests if r.path.endswith("/keys"))

    def _answer(self, request: Recorded) -> Reply:
        if request.path.endswith("/.well-known/openid-configuration"):
            return Reply.json(
                200,
                {
                    "issuer": self.url,
                    "jwks_uri": f"{self.server.url}/{TENANT}/discovery/v2.0/keys",
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        if request.path.endswith("/keys"):
            keys = []
            for kid, key in self.keys.items():
                jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "use": "sig", "kty": "RSA"})
            return Reply.json(200, {"keys": keys})
        return Reply(404)
