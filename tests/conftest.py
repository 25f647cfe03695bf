from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.config import Settings
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
    return Settings()


@functools.cache
def spoken(text: str) -> tuple[np.ndarray, int]:
    return speak(text)


@functools.cache
def phone_upload(text: str, extension: str) -> bytes:
    """`text` spoken and encoded as a phone would upload it."""
    pcm, rate = spoken(text)
    return encode(pcm, rate, extension)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m talk` in a fresh process, outside the repo so no local settings apply."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "talk", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
