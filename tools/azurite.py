"""Start Azurite (the local Azure Storage emulator) on free loopback ports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

AZURITE = Path(__file__).resolve().parent.parent / ".tools" / "node_modules" / ".bin" / "azurite"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(blob: int, queue: int, table: int) -> str:
    """The well-known development account's connection string for these ports."""
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={DEV_ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
        f"QueueEndpoint=http://127.0.0.1:{queue}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{table}/devstoreaccount1;"
    )


@contextlib.contextmanager
def running_azurite(location: Path | None = None) -> Iterator[str]:
    """Azurite's blob, queue and table services; yields their connection string."""
    if not AZURITE.exists():
        raise RuntimeError("Azurite is missing: run `make install`")
    ports = [free_port() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        if location is None:
            location = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        command = [str(AZURITE), "--silent", "--skipApiVersionCheck", "--disableTelemetry"]
        command += ["--location", str(location)]
        for service, port in zip(("blob", "queue", "table"), ports, strict=True):
            command += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(ports, process)
            yield connection_string(*ports)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _wait_for(ports: list[int], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("Azurite did not start") from None
            time.sleep(0.1)
