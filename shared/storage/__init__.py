"""Blob Storage for uploads and replies, connected exactly as the Functions host connects.

Locally `AzureWebJobsStorage` is a connection string (Azurite); in Azure it is
identity-based: `AzureWebJobsStorage__blobServiceUri` (or `__accountName`) with
`__credential=managedidentity` and `__clientId` for a user-assigned identity.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from shared.config import Settings
from shared.errors import TalkError
from shared.lazy import load_once

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient, ContainerClient

log = logging.getLogger(__name__)


class StorageUnavailable(TalkError):
    status = 503
    code = "storage_unavailable"


def unavailable(what: str, error: Exception) -> StorageUnavailable:
    """The error a client sees when storage fails: what failed is logged, with the kind of
    failure; the client is told only to retry, with no blob names or class names."""
    log.warning("Storage: %s failed: %s", what, type(error).__name__)
    return StorageUnavailable("storage is unavailable, retry shortly")


@dataclass(frozen=True)
class StoredBlob:
    data: bytes
    metadata: dict[str, str]
    last_modified: datetime
    etag: str | None = None


def request_prefix(owner: str, conversation_id: str | None, request_id: str) -> str:
    """Where a request's blobs live: under its owner, and its conversation if it has one,
    so erasing a conversation or a caller is deleting a prefix."""
    return f"{owner}/{conversation_id or '_'}/{request_id}/"


class BlobStore:
    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self._service = service
        self.container_name = container
        self._container: ContainerClient = service.get_container_client(container)
        self._created = False
        self._lock = threading.Lock()

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        *,
        metadata: dict[str, str] | None = None,
        overwrite: bool = True,
    ) -> str | None:
        """Store `data` and return its ETag; without `overwrite`, None when something is
        there already.

        A blob is written in one request, so readers never see half of it, and a
        conditional write (If-None-Match: *) lets exactly one of two concurrent writers win.
        """
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        options = {
            "overwrite": overwrite,
            "content_settings": ContentSettings(content_type=content_type),
            "metadata": metadata,
        }
        try:
            try:
                written = self._container.get_blob_client(name).upload_blob(data, **options)
            except ResourceNotFoundError:
                self._ensure_container()
                written = self._container.get_blob_client(name).upload_blob(data, **options)
            return _etag(written)
        except ResourceExistsError:
            return None
        except AzureError as error:
            raise unavailable(f"storing {name}", error) from None

    def get(self, name: str) -> bytes:
        stored = self.fetch(name)
        if stored is None:
            log.warning("Storage: %s is missing", name)
            raise StorageUnavailable("storage is unavailable, retry shortly")
        return stored.data

    def fetch(self, name: str) -> StoredBlob | None:
        """The blob with its metadata and age, or None if there is none."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            download = self._container.download_blob(name)
            data = download.readall()
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise unavailable(f"reading {name}", error) from None
        properties = download.properties
        return StoredBlob(
            data, dict(properties.metadata or {}), properties.last_modified, properties.etag
        )

    def replace_if_unchanged(
        self, name: str, data: bytes, content_type: str, etag: str | None
    ) -> str | None:
        """Overwrite `name` only if it is still the version `etag` names (If-Match); the new
        ETag, or None when it changed (or is gone)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        try:
            written = self._container.get_blob_client(name).upload_blob(
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=content_type),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
            return _etag(written)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        except AzureError as error:
            raise unavailable(f"storing {name}", error) from None

    def names(self, prefix: str) -> list[str]:
        """The names of the blobs under `prefix`."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return [blob.name for blob in self._container.list_blobs(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []
        except AzureError as error:
            raise unavailable(f"listing {prefix}", error) from None

    def delete_prefix(self, prefix: str) -> list[str]:
        """Delete every blob under `prefix`; the names deleted."""
        names = self.names(prefix)
        for name in names:
            self.delete(name)
        return names

    def delete(self, name: str, *, etag: str | None = None) -> None:
        """Delete `name` if it is there (and, given an `etag`, still that version)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            self._container.delete_blob(name, **condition)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass
        except AzureError as error:
            raise unavailable(f"deleting {name}", error) from None

    def check(self) -> None:
        """Raise StorageUnavailable unless the container answers to the app's credential.

        A container-level call, so the app's data role (Storage Blob Data Owner, through
        `blobServices/containers/read`) is enough; account-level calls such as
        get_service_properties need `blobServices/read`, which no data role has. A
        container that does not exist yet counts as reachable: the first write creates it.
        """
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self._container.get_container_properties()
        except ResourceNotFoundError:
            return
        except AzureError as error:
            log.warning("Storage check failed: %s", type(error).__name__)
            raise StorageUnavailable("storage unreachable") from None

    def _ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._lock:
            if not self._created:
                try:
                    self._container.create_container()
                    log.info("Created blob container %s", self.container_name)
                except ResourceExistsError:
                    pass
                self._created = True


def _etag(written: dict[str, object]) -> str:
    """The ETag a blob upload answered with."""
    return str(written["etag"])


def _client_options(**overrides: object) -> dict[str, object]:
    from azure.storage.blob import LinearRetry

    # Fail fast: the SDK's default backoff (15 s, then 45 s) outlasts the phone's patience.
    retry = LinearRetry(backoff=0.5, random_jitter_range=0.2, retry_total=2)
    return {"connection_timeout": 5, "read_timeout": 30, "retry_policy": retry, **overrides}


def _identity_credential(settings: Settings) -> TokenCredential:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.storage_credential.lower() == "managedidentity":
        return ManagedIdentityCredential(client_id=settings.storage_client_id or None)
    return DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id or None)


def _account_url(settings: Settings, service: str, explicit: str) -> str:
    if explicit:
        return explicit
    if settings.storage_account_name:
        return f"https://{settings.storage_account_name}.{service}.core.windows.net"
    raise StorageUnavailable(
        "storage is not configured: set AzureWebJobsStorage or "
        f"AzureWebJobsStorage__{service}ServiceUri"
    )


def blob_service(settings: Settings, **client_options: object) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    options = _client_options(**client_options)
    if settings.storage_connection:
        return BlobServiceClient.from_connection_string(settings.storage_connection, **options)
    account_url = _account_url(settings, "blob", settings.storage_blob_uri)
    return BlobServiceClient(account_url, credential=_identity_credential(settings), **options)


def table_service(settings: Settings) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    options = {"connection_timeout": 5, "read_timeout": 30, "retry_total": 2}
    if settings.storage_connection:
        return TableServiceClient.from_connection_string(settings.storage_connection, **options)
    endpoint = _account_url(settings, "table", settings.storage_table_uri)
    return TableServiceClient(endpoint, credential=_identity_credential(settings), **options)


@load_once
def blob_store(settings: Settings, container: str = "") -> BlobStore:
    """The process's store for a container (`TALK_CONTAINER` by default), made on first use;
    all containers share one pooled client."""
    return BlobStore(_shared_blob_service(settings), container or settings.talk_container)


@load_once
def _shared_blob_service(settings: Settings) -> BlobServiceClient:
    return blob_service(settings)
