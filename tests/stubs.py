"""Loopback servers that speak the providers' real wire formats, for tests.

Each records every request (method, path, query, headers, JSON body, arrival time) and
answers from a script of responses, then from its default.
"""

from __future__ import annotations

import base64
import io
import ssl
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.devhost.loopback import LoopbackServer
from tools.devhost.loopback import Recorded as Recorded
from tools.devhost.loopback import Reply as Reply

# The provider stand-ins are loopback servers with a default answer in a provider's format.
StubServer = LoopbackServer


def chat_completion(content: str) -> Callable[[Recorded], Reply]:
    def answer(request: Recorded) -> Reply:
        model = request.body.get("model") if isinstance(request.body, dict) else None
        return Reply.json(
            200,
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
            },
        )

    return answer


def elevenlabs_speech(mp3: bytes) -> Callable[[Recorded], Reply]:
    def answer(request: Recorded) -> Reply:
        return Reply(200, mp3, {"Content-Type": "audio/mpeg"})

    return answer


def speech_recognition(
    transcribe: Callable[[np.ndarray, str | None], str],
) -> Callable[[Recorded], Reply]:
    """The Hugging Face router's automatic-speech-recognition task (`hf-inference`): a JSON
    body with the audio in base64 `inputs` and `parameters.generation_parameters`, answered
    `{"text": ...}`; a body it cannot read is a 400 `{"error": ...}`, as the inference
    toolkit answers. `transcribe` hears the audio (16 kHz mono) in the language asked."""

    def answer(request: Recorded) -> Reply:
        body = request.body if isinstance(request.body, dict) else {}
        try:
            audio = base64.b64decode(body["inputs"], validate=True)
            with wave.open(io.BytesIO(audio)) as file:
                if (file.getframerate(), file.getnchannels(), file.getsampwidth()) != (
                    16_000,
                    1,
                    2,
                ):
                    raise ValueError("not 16 kHz mono 16-bit")
                pcm = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
        except (KeyError, TypeError, ValueError, wave.Error, EOFError) as error:
            return Reply.json(400, {"error": f"Malformed soundfile: {error}"})
        language = (body.get("parameters") or {}).get("generation_parameters", {}).get("language")
        return Reply.json(200, {"text": " " + transcribe(pcm / 32768.0, language)})

    return answer


# --- Key Vault and managed identity -------------------------------------------------------


@dataclass
class Certificates:
    ca_file: Path
    server_context: ssl.SSLContext


def make_certificates(directory: Path) -> Certificates:
    """A CA and a leaf for 127.0.0.1 signed by it, as a real TLS server would present."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    cert_file = directory / "leaf.pem"
    cert_file.write_bytes(leaf_cert.public_bytes(pem))
    key_file = directory / "leaf.key"
    key_file.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return Certificates(ca_file, context)


def key_vault(secrets: dict[str, str], token: str) -> Callable[[Recorded], Reply]:
    """Key Vault's secrets API: the bearer challenge, then `GET /secrets/{name}`."""

    def answer(request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {token}":
            challenge = (
                'Bearer authorization="https://login.microsoftonline.com/tenant-id", '
                'resource="https://vault.azure.net"'
            )
            return Reply.json(
                401,
                {
                    "error": {
                        "code": "Unauthorized",
                        "message": "AKV10000: Request is missing a Bearer token.",
                    }
                },
                **{"WWW-Authenticate": challenge},
            )
        name = request.path.removeprefix("/secrets/").strip("/").split("/")[0]
        if name not in secrets:
            return Reply.json(
                404,
                {
                    "error": {
                        "code": "SecretNotFound",
                        "message": f"A secret with (name/id) {name} was not found.",
                    }
                },
            )
        return Reply.json(
            200,
            {
                "value": secrets[name],
                "id": f"https://vault.example/secrets/{name}/0123456789abcdef",
                "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000},
            },
        )

    return answer


def managed_identity(identity_header: str, token: str) -> Callable[[Recorded], Reply]:
    """The App Service / Functions managed identity endpoint (`IDENTITY_ENDPOINT`)."""

    def answer(request: Recorded) -> Reply:
        if request.headers.get("x-identity-header") != identity_header:
            return Reply.json(401, {"error": "bad identity header"})
        return Reply.json(
            200,
            {
                "access_token": token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query.get("resource", [""])[0],
                "token_type": "Bearer",
                "client_id": request.query.get("client_id", [""])[0],
            },
        )

    return answer
