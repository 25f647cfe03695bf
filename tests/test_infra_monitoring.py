"""Monitoring in the Bicep: what Application Insights keeps, who may use the workspace, and
which resource logs reach it.

The templates are read offline with pycep (`parse_bicep`). Where the Azure Verified Modules'
sources are mirrored locally (a bare clone of Azure/bicep-registry-modules, see
`_avm_mirror`), the parameters given are also checked against the module AT THE PINNED TAG;
without the mirror only the templates are checked.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_infra import INFRA, parse_bicep

FILES = ("main.bicep", "app/api.bicep", "app/monitoring.bicep")
WORKSPACE_ID = "monitoring.outputs.logAnalyticsWorkspaceId"
# Application Insights' retention values (the @allowed of retentionInDays in
# avm/res/insights/component 0.4.1), used when the mirror is not there to read them from.
APP_INSIGHTS_RETENTION = {30, 60, 90, 120, 180, 270, 365, 550, 730}
# What each storage service may log: writes and deletes, never reads.
STORAGE_LOGS = {"StorageWrite", "StorageDelete"}


# --- reading the templates -------------------------------------------------------------------


def _trees(infra: Path) -> dict[str, dict]:
    parsed = parse_bicep(*(infra / name for name in FILES))
    trees = {}
    for name in FILES:
        result = parsed[str(infra / name)]
        assert result["ok"], result.get("error")
        trees[name] = result["tree"]
    return trees


@pytest.fixture(scope="module")
def trees() -> dict[str, dict]:
    return _trees(INFRA)


def _ref(node: object) -> object:
    """`a.b.c` for a property access, the value itself for anything else."""
    if isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        return f"{_ref(operands['operand_1'])}.{_ref(operands['operand_2'])}"
    return node


def _module(tree: dict, symbol: str) -> tuple[dict, dict]:
    """(params, registry detail) of a module; the detail is empty for a local file."""
    module = tree["modules"][symbol]
    config = module["config"]
    config = config.get("config", config)  # a conditional module nests its body
    return config["params"], module.get("detail") or {}


def _resources_of_type(tree: dict, type_: str) -> list[dict]:
    found = []
    for resource in tree.get("resources", {}).values():
        if resource["type"] == type_:
            config = resource["config"]
            found.append(config.get("config", config))
    return found


def _allowed(parameter: dict) -> set[int] | None:
    for decorator in parameter["decorators"]:
        if decorator["type"] == "allowed":
            return {int(v) for v in decorator["argument"]}
    return None


# --- the Azure Verified Modules at their pinned tags -----------------------------------------


def _avm_mirror() -> Path | None:
    candidates = [os.environ.get("AVM_MIRROR", "")]
    base = ROOT.parent / ".mirror" / "Azure+bicep-registry-modules"
    candidates += [str(base / "repo"), str(base)]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "objects").is_dir() or (path / ".git").exists():
            return path
    return None


@cache
def _avm_source(path: str, tag: str) -> str | None:
    """main.bicep of the module at tag `<path>/<tag>`; None without the mirror."""
    mirror = _avm_mirror()
    if mirror is None:
        return None
    done = subprocess.run(
        ["git", "-C", str(mirror), "show", f"{path}/{tag}:{path}/main.bicep"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{path}:{tag} is not in the mirror: {done.stderr.strip()}"
    return done.stdout


def _avm_params(source: str) -> set[str]:
    return set(re.findall(r"^param (\w+) ", source, re.MULTILINE))


def _avm_type_fields(source: str, type_name: str) -> set[str]:
    """Top-level field names of a user-defined type (`type x = { ... }`) in a module."""
    start = source.index(f"type {type_name} = {{")
    depth, i = 0, source.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            break
        i += 1
    return set(re.findall(r"^  (\w+):", source[start:i], re.MULTILINE))


def _avm_common_type(source: str, type_name: str) -> set[str]:
    """Fields of a type a module imports from avm-common-types, at the version it imports."""
    match = re.search(
        r"import \{[^}]*\b" + type_name + r"\b[^}]*\} from 'br/public:avm/utl/types/"
        r"avm-common-types:([\d.]+)'",
        source,
    )
    assert match, f"{type_name} is not imported from avm-common-types"
    common = _avm_source("avm/utl/types/avm-common-types", match.group(1))
    assert common is not None
    return _avm_type_fields(common, type_name)


# --- Application Insights and the workspace --------------------------------------------------


def test_application_insights_masks_ip_addresses_and_keeps_the_workspace_retention(
    trees: dict[str, dict],
) -> None:
    monitoring = trees["app/monitoring.bicep"]
    insights, detail = _module(monitoring, "applicationInsights")
    workspace, _ = _module(monitoring, "logAnalytics")
    # The module's default is true: every caller's address kept.
    assert insights.get("disableIpMasking") is False
    assert insights.get("disableLocalAuth") is True
    assert workspace["dataRetention"] == "logRetentionDays"
    assert insights.get("retentionInDays") == "logRetentionDays"

    source = _avm_source(detail["path"], detail["tag"])
    if source is not None:
        assert {"disableIpMasking", "retentionInDays", "disableLocalAuth"} <= _avm_params(source)
        assert set(insights) <= _avm_params(source)


def test_retention_is_a_value_both_the_workspace_and_application_insights_accept(
    trees: dict[str, dict],
) -> None:
    monitoring = trees["app/monitoring.bicep"]
    allowed = _allowed(monitoring["parameters"]["logRetentionDays"])
    assert allowed, "logRetentionDays needs an @allowed list"
    assert monitoring["parameters"]["logRetentionDays"]["default"] in allowed
    # main.bicep refuses what the module would refuse, before anything deploys.
    assert _allowed(trees["main.bicep"]["parameters"]["logRetentionDays"]) == allowed

    _, insights = _module(monitoring, "applicationInsights")
    _, workspace = _module(monitoring, "logAnalytics")
    insights_source = _avm_source(insights["path"], insights["tag"])
    accepted = APP_INSIGHTS_RETENTION
    if insights_source is not None:
        [values] = re.findall(
            r"@allowed\(\[([^\]]*)\]\)\s*param retentionInDays int", insights_source
        )
        accepted = {int(v) for v in values.split()}
    assert allowed <= accepted
    workspace_source = _avm_source(workspace["path"], workspace["tag"])
    if workspace_source is not None:
        low, high = re.search(
            r"@minValue\((\d+)\)\s*@maxValue\((\d+)\)\s*param dataRetention int", workspace_source
        ).groups()
        assert all(int(low) <= days <= int(high) for days in allowed)


def test_the_workspace_turns_local_auth_off(trees: dict[str, dict]) -> None:
    workspace, detail = _module(trees["app/monitoring.bicep"], "logAnalytics")
    assert workspace.get("features", {}).get("disableLocalAuth") is True

    source = _avm_source(detail["path"], detail["tag"])
    if source is not None:
        assert set(workspace) <= _avm_params(source)
        assert re.search(r"^param features workspaceFeaturesType\?", source, re.MULTILINE)
        assert set(workspace["features"]) <= _avm_type_fields(source, "workspaceFeaturesType")
        # ... and the module hands it to the workspace, not only declares it.
        assert "disableLocalAuth: features.?disableLocalAuth" in source


# --- diagnostic settings ---------------------------------------------------------------------


def test_storage_sends_writes_deletes_and_transaction_metrics_to_the_workspace(
    trees: dict[str, dict],
) -> None:
    storage, detail = _module(trees["main.bicep"], "storage")
    assert len(storage.get("diagnosticSettings", [])) == 1, "no account-level setting"
    [account] = storage["diagnosticSettings"]
    assert _ref(account["workspaceResourceId"]) == WORKSPACE_ID
    assert [m["category"] for m in account["metricCategories"]] == ["Transaction"]
    for service in ("blobServices", "tableServices"):
        assert len(storage.get(service, {}).get("diagnosticSettings", [])) == 1, service
        [setting] = storage[service]["diagnosticSettings"]
        assert _ref(setting["workspaceResourceId"]) == WORKSPACE_ID, service
        categories = [group.get("category") for group in setting["logCategoriesAndGroups"]]
        assert set(categories) == STORAGE_LOGS, service
        # Left out, the module would add AllMetrics (the account-level setting has them).
        assert setting.get("metricCategories") == [], service
    # The blob service's own settings stay as they were.
    blob = storage["blobServices"]
    assert blob["deleteRetentionPolicyEnabled"] is True
    assert blob["containerDeleteRetentionPolicyEnabled"] is True
    assert len(blob["containers"]) == 4  # two deployment containers, audio, cache
    # The workspace id is its resource id (the module's own logAnalyticsWorkspaceId output
    # is the customer id, a GUID that diagnostic settings do not take).
    output = trees["app/monitoring.bicep"]["outputs"]["logAnalyticsWorkspaceId"]
    assert _ref(output["value"]) == "logAnalytics.outputs.resourceId"

    source = _avm_source(detail["path"], detail["tag"])
    if source is not None:
        assert set(storage) <= _avm_params(source)
        assert re.search(
            r"^param diagnosticSettings diagnosticSettingMetricsOnlyType\[\]\?",
            source,
            re.MULTILINE,
        )
        assert set(account) <= _avm_common_type(source, "diagnosticSettingMetricsOnlyType")
        full = _avm_common_type(source, "diagnosticSettingFullType")
        for service, type_name in (
            ("blobServices", "blobServiceType"),
            ("tableServices", "tableServiceType"),
        ):
            assert set(storage[service]) <= _avm_type_fields(source, type_name), service
            assert set(storage[service]["diagnosticSettings"][0]) <= full, service


def test_no_storage_reads_and_no_queue_logs_are_sent(trees: dict[str, dict]) -> None:
    storage, _ = _module(trees["main.bicep"], "storage")
    settings = [
        setting
        for service in ("blobServices", "tableServices", "queueServices", "fileServices")
        for setting in storage.get(service, {}).get("diagnosticSettings", [])
    ]
    assert settings, "no storage service sends resource logs"
    # Durable Functions polls its queues some 26 million times a month: no queue logs at all.
    assert not storage.get("queueServices", {}).get("diagnosticSettings")
    for setting in settings:
        # A missing list means the module's default, the allLogs group (reads included).
        groups = setting.get("logCategoriesAndGroups")
        assert groups, f"{setting.get('name')}: no logCategoriesAndGroups (the module adds allLogs)"
        assert all("categoryGroup" not in group for group in groups)
        assert {group["category"] for group in groups} <= STORAGE_LOGS


def test_the_function_app_sends_its_function_logs_to_the_workspace(
    trees: dict[str, dict],
) -> None:
    api, _ = _module(trees["main.bicep"], "api")
    assert _ref(api.get("logAnalyticsWorkspaceId")) == WORKSPACE_ID

    settings = _resources_of_type(trees["app/api.bicep"], "Microsoft.Insights/diagnosticSettings")
    assert len(settings) == 1, "the Function App has no diagnostic setting"
    [setting] = settings
    assert setting["scope"] == "functionApp"
    properties = setting["properties"]
    assert properties["workspaceId"] == "logAnalyticsWorkspaceId"
    assert [(log.get("category"), log["enabled"]) for log in properties["logs"]] == [
        ("FunctionAppLogs", True)
    ]
    assert not properties.get("metrics")
