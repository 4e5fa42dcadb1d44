"""The deployment manifest and the layered deployment, checked offline.

`deployment.template.json` is validated against SchemaStore's IoT Edge deployment template 4.0 schema and, as
`az iot edge deployment create` does for a base deployment, its `$edgeAgent`/`$edgeHub` sections against the stricter
edgeAgent 1.1 and edgeHub 1.2 schemas. All three schemas are stored copies (tests/fixtures/schemas, see SOURCES.md)
held in one `referencing.Registry` whose `retrieve` refuses, and no socket may connect while validating. The edgecert
module twin is checked with edgecert's own schema 1 parser, IoT Hub's twin rules and the binds its files need.
"""

from __future__ import annotations

import functools
import json
import re
import socket
from collections.abc import Callable, Iterator
from datetime import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import referencing.exceptions
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from edgecert.config import merge_desired, parse_desired, resolve_certificates
from edgecert.module import settings_from_environment

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deployment.template.json"
LAYERED = ROOT / "deployments" / "layered.edgecert-config.json"
SCHEMA_DIR = ROOT / "tests" / "fixtures" / "schemas"
SCHEMASTORE = "https://json.schemastore.org/"
TEMPLATE_SCHEMA = f"{SCHEMASTORE}azure-iot-edge-deployment-template-4.0.json"
AGENT_SCHEMA = f"{SCHEMASTORE}azure-iot-edgeagent-deployment-1.1.json"
HUB_SCHEMA = f"{SCHEMASTORE}azure-iot-edgehub-deployment-1.2.json"
DEVICE_ID = "factory-line-1-press-7"
MODULE = "edgecert"
# What VS Code / iotedgedev put in place of ${MODULES.edgecert} when they generate deployment.<platform>.json.
IMAGES = {
    "template placeholder": "${MODULES.edgecert}",
    "generated for amd64": "edgecert.azurecr.io/edgecert:0.1.0-amd64",
    "generated for arm64": "edgecert.azurecr.io/edgecert:0.1.0-arm64",
}
# IoT Hub twin limits (iot-hub-devguide-module-twins): keys up to 1 KB without '.', '$', space or C0/C1 controls,
# objects nested at most 10 deep, integers within +-2^52, each of desired and reported at most 32 KB.
_TWIN_KEY_FORBIDDEN = re.compile(r"[.$ \x00-\x1f\x7f-\x9f]")
_TWIN_MAX_DEPTH = 10
_TWIN_MAX_BYTES = 32 * 1024
_TWIN_INT_RANGE = (-4503599627370496, 4503599627370495)
# IoT Hub once limited twin strings to 512 bytes (now 4 KB); VS Code and iotedgedev still split a longer createOptions
# into createOptions01.. chunks, which IoT Central does not accept (microsoft/vscode-azure-iot-edge#580).
_CREATE_OPTIONS_MAX_BYTES = 512


class OfflineRetrievalError(Exception):
    """A schema was asked for that is not stored: the check never fetches one."""


def _refuse(uri: str) -> Resource[Any]:
    raise OfflineRetrievalError(f"{uri} is not one of the stored schemas in {SCHEMA_DIR}; nothing is fetched")


@functools.cache
def _schemas() -> dict[str, dict[str, Any]]:
    """The stored schemas by the `id` each names itself with."""
    loaded = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        loaded[schema["id"]] = schema
    return loaded


@functools.cache
def _registry() -> Registry[Any]:
    resources = [(uri, DRAFT4.create_resource(schema)) for uri, schema in _schemas().items()]
    return Registry(retrieve=_refuse).with_resources(resources)


def _validator(schema_id: str) -> Draft4Validator:
    return Draft4Validator(_schemas()[schema_id], registry=_registry())


def _errors(schema_id: str, instance: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(schema_id).iter_errors(instance)]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test (belt and braces to the registry's refusing `retrieve`)."""

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(f"a network connection was attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _manifest() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    return document


def _agent(manifest: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    return desired


def _module(manifest: dict[str, Any]) -> dict[str, Any]:
    module: dict[str, Any] = _agent(manifest)["modules"][MODULE]
    return module


def _desired(manifest: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = manifest["modulesContent"][MODULE]["properties.desired"]
    return desired


def _create_options(module: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = json.loads(module["settings"]["createOptions"])
    return options


def _binds(manifest: dict[str, Any]) -> dict[str, tuple[str, set[str]]]:
    """The edgecert container's binds: target -> (source, options)."""
    binds = {}
    for bind in _create_options(_module(manifest))["HostConfig"]["Binds"]:
        source, target, *options = bind.split(":")
        assert target not in binds, f"{target} is bound twice"
        binds[target] = (source, set(",".join(options).split(",")) - {""})
    return binds


# -- the schemas themselves ------------------------------------------------------------------------------------------


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_stored_schemas_are_draft04_and_reference_only_each_other() -> None:
    schemas = _schemas()
    assert set(schemas) == {TEMPLATE_SCHEMA, AGENT_SCHEMA, HUB_SCHEMA}
    for schema in schemas.values():
        assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
        Draft4Validator.check_schema(schema)
    external = {ref.split("#")[0] for schema in schemas.values() for ref in _refs(schema) if not ref.startswith("#")}
    assert external == {AGENT_SCHEMA, HUB_SCHEMA}


def test_a_schema_that_is_not_stored_is_refused_not_fetched(no_network: None) -> None:
    validator = Draft4Validator({"$ref": f"{SCHEMASTORE}azure-iot-edge-deployment-2.0.json#"}, registry=_registry())
    with pytest.raises(referencing.exceptions.Unresolvable) as caught:
        validator.validate({})
    chain: list[BaseException] = []
    cause: BaseException | None = caught.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(link, OfflineRetrievalError) for link in chain)


# -- deployment.template.json against the schemas --------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES.values(), ids=IMAGES.keys())
def test_template_validates_against_the_template_schema(image: str, no_network: None) -> None:
    manifest = _manifest()
    assert _module(manifest)["settings"]["image"] == IMAGES["template placeholder"]
    _module(manifest)["settings"]["image"] = image
    assert _errors(TEMPLATE_SCHEMA, manifest) == []


def test_system_sections_pass_the_checks_az_runs_on_a_base_deployment(no_network: None) -> None:
    # azure-iot-cli-extension `_validate_payload_schema`: {"$edgeAgent": ...} against edgeagent-deployment-<version>,
    # {"$edgeHub": ...} against edgehub-deployment-<version>; these forbid unknown keys and createOptions objects.
    content = _manifest()["modulesContent"]
    assert _errors(AGENT_SCHEMA, {"$edgeAgent": content["$edgeAgent"]}) == []
    assert _errors(HUB_SCHEMA, {"$edgeHub": content["$edgeHub"]}) == []


def test_comment_keys_pass_the_template_schema_but_not_the_deployed_one(no_network: None) -> None:
    # why the manifest explains nothing inline: the 4.0 template schema lets a "$comment" through, but the
    # deployed edgeAgent schema (and IoT Hub's twin key rules: no '$') refuse it.
    manifest = _manifest()
    _module(manifest)["$comment"] = "image built by VS Code from modules/edgecert/module.json"
    assert _errors(TEMPLATE_SCHEMA, manifest) == []
    assert _errors(AGENT_SCHEMA, {"$edgeAgent": manifest["modulesContent"]["$edgeAgent"]}) != []


_AGENT = ("modulesContent", "$edgeAgent", "properties.desired")
_EDGECERT = (*_AGENT, "modules", MODULE)
_HUB = ("modulesContent", "$edgeHub", "properties.desired")


def _at(*path: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def walk(manifest: dict[str, Any]) -> dict[str, Any]:
        node = manifest
        for key in path:
            node = node[key]
        return node

    return walk


def _delete(path: tuple[str, ...], key: str) -> Callable[[dict[str, Any]], None]:
    def delete(manifest: dict[str, Any]) -> None:
        del _at(*path)(manifest)[key]

    return delete


def _set(path: tuple[str, ...], key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def set_value(manifest: dict[str, Any]) -> None:
        _at(*path)(manifest)[key] = value

    return set_value


# (break the manifest, where the schema must complain)
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "module without type": (_delete(_EDGECERT, "type"), _EDGECERT),
    "module without settings": (_delete(_EDGECERT, "settings"), _EDGECERT),
    "module without restartPolicy": (_delete(_EDGECERT, "restartPolicy"), _EDGECERT),
    "restartPolicy sometimes": (_set(_EDGECERT, "restartPolicy", "sometimes"), (*_EDGECERT, "restartPolicy")),
    "status paused": (_set(_EDGECERT, "status", "paused"), (*_EDGECERT, "status")),
    "negative startupOrder": (_set(_EDGECERT, "startupOrder", -1), (*_EDGECERT, "startupOrder")),
    "module type containerd": (_set(_EDGECERT, "type", "containerd"), (*_EDGECERT, "type")),
    "settings without image": (_delete((*_EDGECERT, "settings"), "image"), (*_EDGECERT, "settings")),
    "createOptions as a number": (_set((*_EDGECERT, "settings"), "createOptions", 9600), (*_EDGECERT, "settings")),
    "env value not wrapped in {value}": (
        _set((*_EDGECERT, "env"), "EDGECERT_LOG_FORMAT", "json"),
        (*_EDGECERT, "env", "EDGECERT_LOG_FORMAT"),
    ),
    "edgeAgent schemaVersion 1.0": (_set(_AGENT, "schemaVersion", "1.0"), (*_AGENT, "schemaVersion")),
    "no edgeHub system module": (_delete((*_AGENT, "systemModules"), "edgeHub"), (*_AGENT, "systemModules")),
    "edgeHub without restartPolicy": (
        _delete((*_AGENT, "systemModules", "edgeHub"), "restartPolicy"),
        (*_AGENT, "systemModules", "edgeHub"),
    ),
    "no runtime": (_delete(_AGENT, "runtime"), _AGENT),
    "no $edgeAgent": (_delete(("modulesContent",), "$edgeAgent"), ("modulesContent",)),
    "$edgeHub without routes": (_delete(_HUB, "routes"), _HUB),
    "route priority 10": (
        _set((*_HUB, "routes"), "upstream", {"route": "FROM /messages/* INTO $upstream", "priority": 10}),
        (*_HUB, "routes", "upstream"),
    ),
    "storeAndForward without timeToLiveSecs": (_set(_HUB, "storeAndForwardConfiguration", {}), (*_HUB,)),
}


@pytest.mark.parametrize(("breaks", "where"), BROKEN.values(), ids=BROKEN.keys())
def test_schema_check_rejects_a_broken_manifest(
    breaks: Callable[[dict[str, Any]], None], where: tuple[str, ...], no_network: None
) -> None:
    manifest = _manifest()
    breaks(manifest)
    errors = list(_validator(TEMPLATE_SCHEMA).iter_errors(manifest))
    assert errors, "the broken manifest was accepted"
    paths = [tuple(error.absolute_path) for error in errors]
    assert any(path[: len(where)] == where for path in paths), paths


# -- the modules -----------------------------------------------------------------------------------------------------


def test_runtime_images_and_registry() -> None:
    agent = _agent(_manifest())
    system = agent["systemModules"]
    assert system["edgeAgent"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert system["edgeHub"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-hub:1.5"
    assert agent["runtime"]["type"] == "docker"
    # the generated image lives in the one registry with credentials, and those are placeholders, never secrets
    (credentials,) = agent["runtime"]["settings"]["registryCredentials"].values()
    assert IMAGES["generated for amd64"].startswith(credentials["address"] + "/")
    for field in ("username", "password"):
        assert re.fullmatch(r"\$CONTAINER_REGISTRY_[A-Z]+_edgecert", credentials[field]), credentials[field]


def test_edgecert_starts_after_edge_hub_and_keeps_running() -> None:
    agent = _agent(_manifest())
    module, hub = agent["modules"][MODULE], agent["systemModules"]["edgeHub"]
    assert (module["type"], module["status"], module["restartPolicy"]) == ("docker", "running", "always")
    assert module["startupOrder"] > hub["startupOrder"]
    env = {name: entry["value"] for name, entry in module["env"].items()}
    assert env == {"EDGECERT_METRICS_PORT": "9600", "EDGECERT_LOG_FORMAT": "json", "RuntimeLogLevel": "info"}


def test_hub_publishes_its_protocol_ports() -> None:
    hub = _agent(_manifest())["systemModules"]["edgeHub"]
    bindings = _create_options(hub)["HostConfig"]["PortBindings"]
    assert {port: [b["HostPort"] for b in bound] for port, bound in bindings.items()} == {
        "5671/tcp": ["5671"],
        "8883/tcp": ["8883"],
        "443/tcp": ["443"],
    }


def test_every_create_options_is_one_json_twin_value() -> None:
    agent = _agent(_manifest())
    modules = {**agent["systemModules"], **agent["modules"]}
    for name, module in modules.items():
        settings = module["settings"]
        assert set(settings) == {"image", "createOptions"}, f"{name}: chunked or unknown settings"
        text = settings["createOptions"]
        assert isinstance(text, str), f"{name}: IoT Edge takes createOptions as a JSON string"
        assert isinstance(json.loads(text), dict), name
        assert len(text.encode()) <= _CREATE_OPTIONS_MAX_BYTES, f"{name}: would be split into createOptions01.."


def test_metrics_stay_on_the_module_network() -> None:
    # The metrics collector scrapes http://edgecert:9600/metrics over the azure-iot-edge network, where every port
    # of a module is reachable; publishing 9600 on the host would expose certificate facts to the LAN.
    options = _create_options(_module(_manifest()))
    host = options["HostConfig"]
    assert "PortBindings" not in host
    assert "PublishAllPorts" not in host
    assert host.get("NetworkMode", "azure-iot-edge") == "azure-iot-edge"
    assert not host.get("Privileged", False)
    # documented on the container (docker ps, the collector's MetricsEndpointsCSV) and the port the agent serves
    port = _module(_manifest())["env"]["EDGECERT_METRICS_PORT"]["value"]
    assert options["ExposedPorts"] == {f"{port}/tcp": {}}


# Docker's default capability set (moby oci/caps/defaults.go). The module keeps only what a renewal needs as root:
# CHOWN to give a renewed key back to aziotks, DAC_OVERRIDE to write into /var/aziot/secrets (0700 aziotks), and
# FOWNER to hard-link files it does not own into <file>.previous (fs.protected_hardlinks).
_DOCKER_DEFAULT_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
_NEEDED_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER"}


def test_the_module_runs_as_root_with_only_the_capabilities_a_renewal_needs() -> None:
    # As the image's uid 10001 the module could neither write /var/aziot/secrets nor keep a key owned by aziotks
    # (the store refuses with store.ownership rather than leave a key aziot-keyd cannot read).
    options = _create_options(_module(_manifest()))
    host = options["HostConfig"]
    assert options["User"] == "0:0"
    assert _DOCKER_DEFAULT_CAPS - set(host["CapDrop"]) == _NEEDED_CAPS
    assert "ALL" not in host["CapDrop"]
    # CapAdd may be refused where allow_elevated_docker_permissions is false (iotedge config.toml); dropping from the
    # default set instead works on every device.
    assert "CapAdd" not in host
    assert "no-new-privileges" in host["SecurityOpt"]


# -- the edgecert module twin ----------------------------------------------------------------------------------------


def test_desired_properties_are_schema_1_for_a_device() -> None:
    config = parse_desired(_desired(_manifest()))
    resolved = {cert.name: cert for cert in resolve_certificates(config, device_id=DEVICE_ID)}
    assert set(resolved) == {"identity", "edge-ca"}
    identity, edge_ca = resolved["identity"], resolved["edge-ca"]
    assert (identity.role, identity.mode, identity.validity_days) == ("device-identity", "vault-ca", 90)
    assert (edge_ca.role, edge_ca.mode, edge_ca.validity_days) == ("edge-ca", "vault-ca", 90)
    assert identity.subject == f"CN={DEVICE_ID}"
    assert edge_ca.subject == f"CN={DEVICE_ID} Edge CA"
    assert (identity.issuer_certificate, identity.issuer_key) == ("factory-ca", "factory-ca")
    # IoT Hub accepts any identity certificate that chains to the verified CA: an Edge CA issued by that CA could
    # mint identities for other devices, so the Edge CAs come from an issuer IoT Hub does not trust.
    assert edge_ca.issuer_certificate not in {identity.issuer_certificate, identity.issuer_key}
    assert str(identity.paths.cert) == "/var/aziot/certs/device-id.pem"
    assert str(identity.paths.key) == "/var/aziot/secrets/device-id.key.pem"
    assert config.vault is not None
    assert config.vault.url == "https://contoso-edge.vault.azure.net"
    assert config.renewal.window is not None, "a daily window"
    assert config.renewal.window.days is None
    assert config.activation.mode == "restart-request"


def _twin_problems(node: object, path: str = "", depth: int = 1) -> Iterator[str]:
    if isinstance(node, dict):
        if depth > _TWIN_MAX_DEPTH:
            yield f"{path}: nested deeper than {_TWIN_MAX_DEPTH}"
        for key, value in node.items():
            if _TWIN_KEY_FORBIDDEN.search(key) or len(key.encode()) > 1024 or not key:
                yield f"{path}/{key}: not a twin property name"
            yield from _twin_problems(value, f"{path}/{key}", depth + 1)
    elif isinstance(node, bool | str | float):
        return
    elif isinstance(node, int):
        if not _TWIN_INT_RANGE[0] <= node <= _TWIN_INT_RANGE[1]:
            yield f"{path}: integer out of the twin's range"
    else:
        yield f"{path}: {type(node).__name__} is not a twin value here"


@pytest.mark.parametrize("twin", ["$edgeAgent", "$edgeHub", MODULE])
def test_desired_sections_obey_the_twin_rules(twin: str) -> None:
    desired = _manifest()["modulesContent"][twin]["properties.desired"]
    assert list(_twin_problems(desired)) == []
    assert len(json.dumps(desired, separators=(",", ":")).encode()) <= _TWIN_MAX_BYTES


def test_twin_rules_catch_a_bad_property_name() -> None:
    desired = _desired(_manifest())
    desired["renewal"]["window.start"] = "02:00"
    desired["$comment"] = "nope"
    assert sorted(_twin_problems(desired)) == [
        "/$comment: not a twin property name",
        "/renewal/window.start: not a twin property name",
    ]


def test_binds_hold_every_file_the_configuration_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = _manifest()
    binds = _binds(manifest)
    config = parse_desired(_desired(manifest))
    for cert in resolve_certificates(config, device_id=DEVICE_ID):
        files = [cert.paths.cert, cert.paths.key, *([cert.paths.chain] if cert.paths.chain else [])]
        for file in files:
            folder = str(PurePosixPath(file).parent)
            # the folder, not the file: the store writes <file>.new, <file>.previous and a journal next to it and
            # os.replace()s over the live file, which a single-file bind mount refuses
            assert folder in binds, f"{cert.name}: {folder} is not bind-mounted"
            source, options = binds[folder]
            assert source == folder, "config.toml names host paths, so the container must see the same paths"
            assert "ro" not in options, f"{folder} must be writable"
            assert str(file) not in binds
    assert binds["/etc/aziot/config.toml"] == ("/etc/aziot/config.toml", {"ro"})

    # the folders `edgecert run` uses, as it reads them from the environment the manifest gives it
    env = {name: str(entry["value"]) for name, entry in _module(manifest)["env"].items()}
    for name in ("EDGECERT_CONNECTION_STRING", "EDGECERT_STATE_DIR", "EDGECERT_REQUEST_DIR", "EDGECERT_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**env, "IOTEDGE_DEVICEID": DEVICE_ID, "IOTEDGE_MODULEID": MODULE}.items():
        monkeypatch.setenv(name, value)
    settings, _ = settings_from_environment()
    assert settings.metrics_port == 9600
    state_source, state_options = binds[str(settings.state_file.parent)]
    assert "/" not in state_source, "the state folder is a named volume (it outlives the container)"
    assert "ro" not in state_options
    request_source, request_options = binds[str(settings.request_dir)]
    assert request_source == str(settings.request_dir), "the host helper watches the same folder"
    assert "ro" not in request_options


# -- the layered deployment ------------------------------------------------------------------------------------------


def _layered() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(LAYERED.read_text(encoding="utf-8"))
    return document


def _patch_from_paths(section: dict[str, Any]) -> dict[str, Any]:
    """A layered module section (`"properties.desired.a.b": value`) as a desired-properties patch."""
    patch: dict[str, Any] = {}
    for key, value in section.items():
        parts = key.split(".")
        assert parts[:2] == ["properties", "desired"], key
        assert len(parts) > 2, "a layer setting all of properties.desired would overwrite the base's whole section"
        node = patch
        for part in parts[2:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return patch


_QUERY_START = "SELECT deviceId FROM devices.modules WHERE moduleId = 'edgecert' AND "
_QUERY_PATH = re.compile(r"\bproperties\.(?:reported|desired)(?:\.[^\s=!<>']+)+")


def test_layered_deployment_shape() -> None:
    layer = _layered()
    # the IoT Hub configuration body: `az iot edge deployment create --layered --content FILE` takes its `content`,
    # `--metrics FILE` its `metrics`; targetCondition and priority are given as flags with the same values
    assert set(layer) == {"id", "labels", "content", "targetCondition", "priority", "metrics"}
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,127}", layer["id"])
    assert layer["targetCondition"] == "tags.environment='pilot' AND tags.site='plant-3'"
    assert isinstance(layer["priority"], int)
    assert layer["priority"] > 0, "above the base deployment's priority so its values win"
    modules = layer["content"]["modulesContent"]
    assert set(modules) == {MODULE}, "only the edgecert twin changes; the base deployment runs the module"
    assert list(modules[MODULE]) == ["properties.desired.renewal"]
    queries = layer["metrics"]["queries"]
    assert queries
    for name, query in queries.items():
        assert query.startswith(_QUERY_START), name
        paths = _QUERY_PATH.findall(query)
        assert paths, name
        for path in paths:
            # IoT Hub's query language reads 'edge-ca' as a subtraction: only plain names (and $version) in paths
            for part in path.split("."):
                assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|\$version", part), f"{name}: {path}"


def test_layered_fragment_keeps_the_twin_valid() -> None:
    base = _desired(_manifest())
    patch = _patch_from_paths(_layered()["content"]["modulesContent"][MODULE])
    assert list(_twin_problems(patch)) == []
    merged = parse_desired(merge_desired(base, patch))
    # IoT Hub may merge the layer's object into the base's or replace the base's `renewal` with it; the fragment
    # carries every renewal setting the base makes, so both give the same configuration
    assert set(patch["renewal"]) >= set(base["renewal"]), "the layer would silently drop base settings"
    replaced = parse_desired({**base, **patch})
    assert merged == replaced
    before = parse_desired(base)
    assert merged.renewal.window is not None
    assert before.renewal.window is not None
    assert merged.renewal.window != before.renewal.window
    assert (merged.renewal.window.start, merged.renewal.window.timezone) == (time(22, 0), "Europe/Berlin")
    assert merged.certificates == before.certificates
    assert {c.name for c in resolve_certificates(merged, device_id=DEVICE_ID)} == {"identity", "edge-ca"}


def test_layered_metrics_count_only_devices_given_the_new_window() -> None:
    # module-twin queries span the whole hub; the layer's own window value is what marks its devices
    layer = _layered()
    window = layer["content"]["modulesContent"][MODULE]["properties.desired.renewal"]["window"]
    scoped = f"properties.desired.renewal.window.start = '{window['start']}'"
    assert window["start"] != _desired(_manifest())["renewal"]["window"]["start"]
    for name, query in layer["metrics"]["queries"].items():
        assert scoped in query, name
