"""The streaming Function App in the Bicep and in azure.yaml.

POST /talk/stream needs the FastAPI HTTP-streams extension, which gives every HTTP function of
its app FastAPI types; function_app.py's functions take `func.HttpRequest`. So the same package
is deployed a second time, to an app that starts from stream_app.py (PYTHON_SCRIPT_FILE_NAME)
with PYTHON_ENABLE_INIT_INDEXING on (the extension needs it on Python 3.12 and earlier).
Both apps come from infra/app/api.bicep; these checks read the templates offline with pycep.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.bicep_deployments import clashes, deployments
from tests.conftest import ROOT
from tests.test_infra import DEPLOY, INFRA, _packaged, _yaml, parse_bicep

MAIN = INFRA / "main.bicep"
API = INFRA / "app" / "api.bicep"
RBAC = INFRA / "app" / "rbac.bicep"

STREAM_ONLY_SETTINGS = {
    "PYTHON_SCRIPT_FILE_NAME": "stream_app.py",
    "PYTHON_ENABLE_INIT_INDEXING": "1",
}
# Parameters of api.bicep the two apps are given differently; every other one is the same.
PER_APP = {
    "name",
    "serviceName",
    "appServicePlanId",
    "deploymentStorageContainerName",
    "appSettings",
    "httpAlwaysReadyInstances",
    "durableAlwaysReadyInstances",
}
# Flex Consumption's host id: the app name's first 32 characters (one storage account, two hosts).
HOST_ID_LENGTH = 32


@pytest.fixture(scope="module")
def trees() -> dict[str, dict]:
    parsed = parse_bicep(MAIN, API, RBAC)
    for result in parsed.values():
        assert result["ok"], result.get("error")
    return {
        name: parsed[str(path)]["tree"]
        for name, path in (("main", MAIN), ("api", API), ("rbac", RBAC))
    }


def _ref(node: object) -> object:
    """`a.b.c` for a property access, the value itself for anything else."""
    if isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        return f"{_ref(operands['operand_1'])}.{_ref(operands['operand_2'])}"
    return node


def _module(tree: dict, symbol: str) -> dict:
    config = tree["modules"][symbol]["config"]
    return config.get("config", config)


def _default_name(node: dict) -> str:
    """The derived name of `!empty(x) ? x : '<derived>'` (pycep nests it under a `not`)."""
    while "operator" in node and node["operator"]["type"] != "conditional":
        node = next(iter(node["operator"]["operands"].values()))
    return node["operator"]["operands"]["false_value"]


def _resolve(template: str, token: str = "abcdefghijklm") -> str:
    abbrs = json.loads((INFRA / "abbreviations.json").read_text())
    resolved = template.replace("${resourceToken}", token)
    return re.sub(r"\$\{abbrs\.(\w+)\}", lambda m: abbrs[m.group(1)], resolved)


# --- one template, two apps ------------------------------------------------------------------


def test_both_apps_come_from_api_bicep_tagged_for_their_azd_service(trees: dict[str, dict]) -> None:
    main, api = trees["main"], trees["api"]
    for symbol in ("api", "stream"):
        assert main["modules"][symbol]["detail"]["path"] == "./app/api.bicep", symbol
    parameter = api["parameters"]["serviceName"]
    assert parameter["default"] == "api"
    [allowed] = [d["argument"] for d in parameter["decorators"] if d["type"] == "allowed"]
    assert set(allowed) == {"api", "stream"}
    tags = api["resources"]["functionApp"]["config"]["tags"]["function"]
    assert tags["type"] == "union"
    assert tags["parameters"]["arg_2"] == {"'azd-service-name'": "serviceName"}
    assert _module(main, "stream")["params"]["serviceName"] == "stream"
    # The api app keeps its tag through the default.
    assert _module(main, "api")["params"].get("serviceName", "api") == "api"


def test_the_stream_app_shares_everything_but_what_makes_it_a_second_app(
    trees: dict[str, dict],
) -> None:
    api = _module(trees["main"], "api")["params"]
    stream = _module(trees["main"], "stream")["params"]
    assert set(stream) == set(api) | {"serviceName"}
    same = set(api) - PER_APP
    assert {
        "identityId",
        "identityClientId",
        "storageAccountName",
        "applicationInsightsName",
    } <= same
    assert {"logAnalyticsWorkspaceId", "corsAllowedOrigins", "instanceMemoryMB"} <= same
    for name in same:
        assert stream[name] == api[name], name
    # Role assignments must exist before the host starts and azd uploads the package.
    assert _module(trees["main"], "stream").get("dependsOn") == ["rbac"]


def test_the_stream_app_gets_every_setting_of_the_api_app_and_its_entry_file(
    trees: dict[str, dict],
) -> None:
    main = trees["main"]
    assert _module(main, "api")["params"]["appSettings"] == "appSettings"
    assert _module(main, "stream")["params"]["appSettings"] == "streamAppSettings"
    union = main["variables"]["streamAppSettings"]["value"]["function"]
    assert union["type"] == "union"
    assert union["parameters"] == {"arg_1": "appSettings", "arg_2": STREAM_ONLY_SETTINGS}
    # The api app is unchanged: it starts from function_app.py, and without init indexing.
    api_settings = main["variables"]["appSettings"]["value"]
    assert not set(STREAM_ONLY_SETTINGS) & set(api_settings)
    # Both get the identity-based storage and Application Insights connections in api.bicep.
    properties = trees["api"]["resources"]["functionAppSettings"]["config"]["properties"]
    assert properties["function"]["type"] == "union"
    assert properties["function"]["parameters"]["arg_1"] == "appSettings"
    added = properties["function"]["parameters"]["arg_2"]
    assert {"AzureWebJobsStorage__clientId", "APPLICATIONINSIGHTS_CONNECTION_STRING"} <= set(added)
    assert not set(STREAM_ONLY_SETTINGS) & set(added)


def test_the_entry_file_is_in_the_package() -> None:
    assert _packaged(STREAM_ONLY_SETTINGS["PYTHON_SCRIPT_FILE_NAME"])
    assert _packaged("function_app.py")


# --- always ready: the http group only ---------------------------------------------------------


def test_the_stream_app_keeps_only_an_http_group_ready(trees: dict[str, dict]) -> None:
    stream = _module(trees["main"], "stream")["params"]
    assert stream["durableAlwaysReadyInstances"] == 0
    assert stream["httpAlwaysReadyInstances"] == "streamAlwaysReadyInstances"
    # 0 leaves the group out of alwaysReady altogether.
    text = API.read_text()
    assert re.search(
        r"^var durableAlwaysReady = durableAlwaysReadyInstances > 0 \? \[\{ name: 'durable',"
        r" instanceCount: durableAlwaysReadyInstances \}\] : \[\]$",
        text,
        re.MULTILINE,
    )
    config = trees["api"]["resources"]["functionApp"]["config"]["properties"]["functionAppConfig"]
    always_ready = config["scaleAndConcurrency"]["alwaysReady"]["function"]
    assert always_ready["type"] == "concat"
    assert always_ready["parameters"] == {"arg_1": "httpAlwaysReady", "arg_2": "durableAlwaysReady"}


def test_stream_always_ready_is_an_azd_parameter_with_one_default(trees: dict[str, dict]) -> None:
    parameter = trees["main"]["parameters"]["streamAlwaysReadyInstances"]
    assert parameter["type"] == "int"
    assert {"type": "min_value", "argument": 0} in parameter["decorators"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    value = given["streamAlwaysReadyInstances"]["value"]
    assert value == f"${{STREAM_ALWAYS_READY_INSTANCES={parameter['default']}}}"
    # azd pipeline config copies it into the repository's variables; the deploy job passes it.
    assert "STREAM_ALWAYS_READY_INSTANCES" in _yaml(ROOT / "azure.yaml")["pipeline"]["variables"]
    env = _yaml(DEPLOY)["jobs"]["deploy"]["env"]
    assert env["STREAM_ALWAYS_READY_INSTANCES"] == "${{ vars.STREAM_ALWAYS_READY_INSTANCES }}"


# --- its own plan, container and name ----------------------------------------------------------


def test_each_app_has_its_own_flex_plan(trees: dict[str, dict]) -> None:
    """A Flex Consumption plan hosts one site ("There can only be one site per Flex
    Consumption serverfarm")."""
    main = trees["main"]
    plans = {
        symbol: module
        for symbol, module in main["modules"].items()
        if module["detail"].get("path") == "avm/res/web/serverfarm"
    }
    assert set(plans) == {"appServicePlan", "streamAppServicePlan"}
    first, second = (_module(main, symbol)["params"] for symbol in sorted(plans))
    assert (
        plans["appServicePlan"]["detail"]["tag"] == plans["streamAppServicePlan"]["detail"]["tag"]
    )
    for params in (first, second):
        assert params["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
        assert params["reserved"] is True
        assert params["enableTelemetry"] == "enableTelemetry"
    assert _ref(_module(main, "api")["params"]["appServicePlanId"]) == (
        "appServicePlan.outputs.resourceId"
    )
    assert _ref(_module(main, "stream")["params"]["appServicePlanId"]) == (
        "streamAppServicePlan.outputs.resourceId"
    )
    names = {_resolve(_default_name(params["name"])) for params in (first, second)}
    assert len(names) == 2


def test_each_app_has_its_own_deployment_container(trees: dict[str, dict]) -> None:
    """Flex Consumption keeps an app's package as one blob of a fixed name in its container:
    a shared container would have each deploy overwrite the other app's package."""
    main = trees["main"]
    api = _module(main, "api")["params"]["deploymentStorageContainerName"]
    stream = _module(main, "stream")["params"]["deploymentStorageContainerName"]
    assert (api, stream) == ("deploymentContainerName", "streamDeploymentContainerName")
    values = {name: _resolve(main["variables"][name]["value"]) for name in (api, stream)}
    assert len(set(values.values())) == 2
    for value in values.values():
        assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", value), value
    storage = _module(main, "storage")["params"]
    containers = [c["name"] for c in storage["blobServices"]["containers"]]
    assert {api, stream} <= set(containers)
    for container in storage["blobServices"]["containers"]:
        assert container["publicAccess"] == "None"


def test_the_identity_may_use_every_container_of_the_account(trees: dict[str, dict]) -> None:
    """The stream app's container needs no role of its own: the roles are on the account."""
    resource = trees["rbac"]["resources"]["appStorageRoles"]["config"]
    assert resource["loop_type"]["detail"]["array_name"] == "storageRoleIds"
    assert resource["config"]["scope"] == "storage"
    roles = trees["rbac"]["variables"]["storageRoleIds"]["value"]
    assert "storageBlobDataOwner" in roles


def test_the_two_hosts_have_different_host_ids(trees: dict[str, dict]) -> None:
    """One storage account holds both hosts' state, keyed by the first 32 characters of the
    app's name: the derived names must differ there."""
    main = trees["main"]
    api = _resolve(_default_name(main["variables"]["resolvedFunctionAppName"]["value"]))
    stream = _resolve(_default_name(main["variables"]["resolvedStreamFunctionAppName"]["value"]))
    assert api[:HOST_ID_LENGTH] != stream[:HOST_ID_LENGTH]
    assert _module(main, "stream")["params"]["name"] == "resolvedStreamFunctionAppName"


# --- azd ---------------------------------------------------------------------------------------


def test_azd_deploys_the_same_folder_to_both_apps(trees: dict[str, dict]) -> None:
    services = _yaml(ROOT / "azure.yaml")["services"]
    assert set(services) == {"api", "stream"}
    for name, service in services.items():
        assert service == {"project": ".", "language": "python", "host": "function"}, name
        # azd finds each app by the azd-service-name tag equal to the service's key.
        assert "resourceName" not in service
    [allowed] = [
        d["argument"]
        for d in trees["api"]["parameters"]["serviceName"]["decorators"]
        if d["type"] == "allowed"
    ]
    assert set(services) == set(allowed)


def test_the_outputs_name_both_apps(trees: dict[str, dict]) -> None:
    outputs = trees["main"]["outputs"]
    assert outputs["FUNCTION_URL"]["value"] == "https://${api.outputs.defaultHostname}"
    assert _ref(outputs["AZURE_FUNCTION_NAME"]["value"]) == "api.outputs.name"
    assert outputs["STREAM_FUNCTION_URL"]["value"] == "https://${stream.outputs.defaultHostname}"
    assert _ref(outputs["AZURE_STREAM_FUNCTION_NAME"]["value"]) == "stream.outputs.name"
    assert outputs["AZURE_STREAM_DEPLOYMENT_CONTAINER"]["value"] == "streamDeploymentContainerName"


def test_every_deployment_name_is_unique() -> None:
    found = deployments(MAIN)
    declared = {d.declared_in: d for d in found}
    assert declared["main.bicep:stream"].name == "stream"
    assert declared["main.bicep:streamAppServicePlan"].name == "app-service-plan-stream"
    assert all(d.resolved for d in found)
    assert clashes(MAIN) == {}


def test_the_unique_name_check_sees_a_second_app_named_like_the_first(tmp_path: Path) -> None:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    main = copy / "main.bicep"
    text = main.read_text()
    assert text.count("  name: 'stream'\n") == 1
    main.write_text(text.replace("  name: 'stream'\n", "  name: 'api'\n"))
    assert clashes(main) == {("rg", "api"): ["main.bicep:api", "main.bicep:stream"]}
