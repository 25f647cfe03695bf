from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.config import Settings
from shared.secrets import SECRET_NAMES
from shared.tts.mp3 import encode_mp3
from tools.phone_audio import encode, speak

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "question.m4a"

# Known questions, spoken by the embedded voice, for word error rates.
QUESTIONS = (
    "What is a good way to relax after a long day?",
    "Please remind me to call my mother tomorrow morning.",
    "How many minutes should I boil an egg?",
)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The embedded providers, whatever keys the machine running the tests may have."""
    return Settings(llm_provider="local", tts_provider="piper")


@pytest.fixture(scope="session")
def stub_mp3() -> bytes:
    """A real MP3 (one second of tone), as a TTS provider stand-in returns."""
    t = np.arange(22_050) / 22_050
    tone = (0.3 * np.sin(2 * np.pi * 330 * t) * 32767).astype(np.int16)
    return encode_mp3(tone.tobytes(), 22_050, 32)


@functools.cache
def spoken(text: str) -> tuple[np.ndarray, int]:
    return speak(text)


@functools.cache
def phone_upload(text: str, extension: str) -> bytes:
    """`text` spoken and encoded as a phone would upload it."""
    pcm, rate = spoken(text)
    return encode(pcm, rate, extension)


def cli_environment(**extra: str) -> dict[str, str]:
    """This process's environment without provider keys, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m talk` in a fresh process, outside the repo so no local settings apply."""
    return subprocess.run(
        [sys.executable, "-m", "talk", *args],
        cwd=cwd,
        env=cli_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
