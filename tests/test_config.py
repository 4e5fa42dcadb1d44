"""Desired properties schema 1: named invalid documents, round trips, patches, files and templates."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecert.config import (
    LocalConfig,
    load_config_file,
    merge_desired,
    parse_desired,
    parse_local,
    resolve_certificates,
)
from edgecert.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"

# A valid document with one certificate per mode and role; every invalid case below is one edit away from it.
BASE: dict[str, Any] = {
    "schemaVersion": 1,
    "vault": {"url": "https://contoso-edge.vault.azure.net", "clientId": "8a1b2c3d-1234-4abc-9def-0123456789ab"},
    "renewal": {
        "renewAt": "80%",
        "urgentAt": "95%",
        "spread": "10%",
        "autoWindow": {"slots": 24},
        "retry": {"initialDelay": "1s", "maxDelay": "10m", "maxAttemptsPerWindow": 8},
        "paused": False,
    },
    "certificates": {
        "identity": {
            "role": "device-identity",
            "mode": "vault-ca",
            "issuerCertificateName": "fleet-ca",
            "issuerKeyName": "fleet-ca-key",
            "key": {"type": "ec-p256"},
            "subject": "CN={deviceId}",
            "validityDays": 90,
            "files": {"cert": "file:///var/secrets/device-id.pem", "key": "file:///var/secrets/device-id.key.pem"},
        },
        "edgeca": {
            "role": "edge-ca",
            "mode": "vault-managed",
            "certificateName": "{deviceId}-edge-ca",
            "key": {"type": "rsa-2048"},
            "subject": "CN={deviceId} Edge CA",
            "dnsNames": ["{deviceId}.factory.local"],
            "ipAddresses": ["10.0.0.5"],
            "validityDays": 90,
            "files": {
                "cert": "/var/lib/edgecert/{deviceId}/edge-ca.pem",
                "key": "/var/lib/edgecert/{deviceId}/edge-ca.key.pem",
                "chain": "/var/lib/edgecert/{deviceId}/edge-ca-chain.pem",
            },
        },
        "opcua": {
            "role": "custom",
            "mode": "vault-fetch",
            "certificateName": "{deviceId}-{moduleId}-opcua",
            "subject": "CN={deviceId},O=Contoso",
            "files": {"cert": "/var/lib/{moduleId}/{certificateName}.pem", "key": "/var/lib/{moduleId}/key.pem"},
        },
    },
    "activation": {"mode": "restart-request", "verifyTimeout": "5m"},
}

REMOVE = object()
DAILY = {"start": "02:00", "length": "2h", "timezone": "UTC"}
SUGGESTED = {"start": "2026-12-03T02:00:00Z", "end": "2026-12-03T06:00:00Z"}
SECOND_IDENTITY = {
    "role": "device-identity",
    "mode": "vault-managed",
    "certificateName": "{deviceId}-id2",
    "files": {"cert": "/var/secrets/id2.pem", "key": "/var/secrets/id2.key.pem"},
}
ANOTHER = {**SECOND_IDENTITY, "role": "custom"}


def edited(*changes: tuple[str | tuple[str, ...], Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A deep copy of `base` with each (path, value) applied; a path is dotted or a tuple of keys, REMOVE deletes.

    Every parent along a path must exist, so a typo in a case fails loudly instead of testing nothing.
    """
    document = copy.deepcopy(base)
    for path, value in changes:
        keys = path.split(".") if isinstance(path, str) else path
        parent = document
        for key in keys[:-1]:
            parent = parent[key]
        if value is REMOVE:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = copy.deepcopy(value)
    return document


# (id, changes, the exact path of one problem, a fragment that problem's text must hold or None)
INVALID: list[tuple[str, list[tuple[Any, Any]], str, str | None]] = [
    # wrong types
    ("paused is a string", [("renewal.paused", "yes")], "renewal.paused", "true or false"),
    ("slots is a string", [("renewal.autoWindow.slots", "24")], "renewal.autoWindow.slots", "whole number"),
    ("slots is a float", [("renewal.autoWindow.slots", 24.0)], "renewal.autoWindow.slots", "whole number"),
    ("maxDelay is a number of seconds", [("renewal.retry.maxDelay", 600)], "renewal.retry.maxDelay", "string"),
    ("retry is a list", [("renewal.retry", [])], "renewal.retry", "an object"),
    ("renewal is a string", [("renewal", "80%")], "renewal", "an object"),
    ("certificates is a list", [("certificates", [])], "certificates", "an object"),
    (
        "validityDays is a string",
        [("certificates.identity.validityDays", "90")],
        "certificates.identity.validityDays",
        "whole number",
    ),
    (
        "validityDays is true",
        [("certificates.identity.validityDays", True)],
        "certificates.identity.validityDays",
        "whole number",
    ),
    ("dnsNames is a string", [("certificates.edgeca.dnsNames", "x.local")], "certificates.edgeca.dnsNames", "a list"),
    ("forceRenewToken is a number", [("renewal.forceRenewToken", 5)], "renewal.forceRenewToken", "a string"),
    (
        "command is a string",
        [("activation", {"mode": "command", "command": "iotedge system restart"})],
        "activation.command",
        "a list",
    ),
    ("days is a string", [("renewal.window", {**DAILY, "days": "mon"})], "renewal.window.days", "a list"),
    ("schemaVersion is true", [("schemaVersion", True)], "schemaVersion", "schemaVersion: 1"),
    ("schemaVersion is 1.0", [("schemaVersion", 1.0)], "schemaVersion", "schemaVersion: 1"),
    ("schemaVersion is a string", [("schemaVersion", "1")], "schemaVersion", "schemaVersion: 1"),
    # unknown fields
    ("unknown top-level field", [("certificate", {})], "certificate", "did you mean 'certificates'"),
    ("renewAt misspelled renewat", [("renewal.renewat", "80%")], "renewal.renewat", "did you mean 'renewAt'"),
    (
        "subject misspelled subjet",
        [("certificates.identity.subjet", "CN={deviceId}")],
        "certificates.identity.subjet",
        "did you mean 'subject'",
    ),
    (
        "files.cert misspelled crt",
        [("certificates.identity.files.crt", "/x.pem")],
        "certificates.identity.files.crt",
        "did you mean 'cert'",
    ),
    (
        "unknown field in key",
        [("certificates.edgeca.key.size", 2048)],
        "certificates.edgeca.key.size",
        "known fields here: type",
    ),
    ("deviceId belongs to the local file only", [("deviceId", "dev-1")], "deviceId", "not a field of schema 1"),
    # bad durations
    ("renewAt '30' has no unit", [("renewal.renewAt", "30")], "renewal.renewAt", "'30'"),
    ("renewAt '30 days' spelled out", [("renewal.renewAt", "30 days")], "renewal.renewAt", "'30 days'"),
    ("renewAt '-1d' negative", [("renewal.renewAt", "-1d")], "renewal.renewAt", "'-1d'"),
    ("renewAt '1y' unknown unit", [("renewal.renewAt", "1y")], "renewal.renewAt", "'1y'"),
    (
        "maxDelay '500ms' below seconds",
        [("renewal.retry.maxDelay", "500ms")],
        "renewal.retry.maxDelay",
        "not a duration",
    ),
    (
        "window length '2 hours'",
        [("renewal.window", {**DAILY, "length": "2 hours"})],
        "renewal.window.length",
        "not a duration",
    ),
    (
        "maxDelay overflows timedelta",
        [("renewal.retry.maxDelay", "999999999d24h")],
        "renewal.retry.maxDelay",
        "100 years",
    ),
    ("urgentAt beyond any date", [("renewal.urgentAt", "999999998d")], "renewal.urgentAt", "100 years"),
    # bad percentages
    ("renewAt '80' without %", [("renewal.renewAt", "80")], "renewal.renewAt", "'80'"),
    ("renewAt '120%'", [("renewal.renewAt", "120%")], "renewal.renewAt", "more than 100%"),
    ("renewAt '0%'", [("renewal.renewAt", "0%")], "renewal.renewAt", "not inside the lifetime"),
    ("renewAt '100%'", [("renewal.renewAt", "100%")], "renewal.renewAt", "not inside the lifetime"),
    ("urgentAt '0d' is expiry itself", [("renewal.urgentAt", "0d")], "renewal.urgentAt", "expiry itself"),
    ("spread '100%'", [("renewal.spread", "100%")], "renewal.spread", "whole lifetime"),
    ("spread is a number", [("renewal.spread", 5)], "renewal.spread", "string"),
    # urgency before renewal
    ("urgentAt 70% before renewAt 80%", [("renewal.urgentAt", "70%")], "renewal.urgentAt", "comes before renewAt"),
    ("urgentAt equal to renewAt", [("renewal.urgentAt", "80%")], "renewal.urgentAt", "comes before renewAt"),
    (
        "urgentAt 31d before renewAt 30d",
        [("renewal.renewAt", "30d"), ("renewal.urgentAt", "31d")],
        "renewal.urgentAt",
        "comes before renewAt",
    ),
    (
        "urgentAt 30d before renewAt 80% of 90 days",
        [("renewal.urgentAt", "30d")],
        "certificates.identity.validityDays",
        "comes at or before renewAt",
    ),
    # windows
    ("window start 25:00", [("renewal.window", {**DAILY, "start": "25:00"})], "renewal.window.start", "HH:MM"),
    (
        "window start 2:00 without leading zero",
        [("renewal.window", {**DAILY, "start": "2:00"})],
        "renewal.window.start",
        "HH:MM",
    ),
    ("window start missing", [("renewal.window", {"length": "2h"})], "renewal.window.start", "is required"),
    ("window length 0m", [("renewal.window", {**DAILY, "length": "0m"})], "renewal.window.length", "at least '1m'"),
    ("window length 25h", [("renewal.window", {**DAILY, "length": "25h"})], "renewal.window.length", "at most '24h'"),
    ("window with no days", [("renewal.window", {**DAILY, "days": []})], "renewal.window.days", "at least one day"),
    (
        "window on an unknown day",
        [("renewal.window", {**DAILY, "days": ["mon", "funday"]})],
        "renewal.window.days[1]",
        "'funday'",
    ),
    (
        "window lists Monday twice",
        [("renewal.window", {**DAILY, "days": ["mon", "Monday"]})],
        "renewal.window.days",
        "listed twice",
    ),
    (
        "window in an unknown time zone",
        [("renewal.window", {**DAILY, "timezone": "Mars/Olympus"})],
        "renewal.window.timezone",
        "IANA",
    ),
    (
        "both window and suggestedWindow",
        [("renewal.window", DAILY), ("renewal.suggestedWindow", SUGGESTED)],
        "renewal.suggestedWindow",
        "keep one",
    ),
    (
        "suggestedWindow ends before it starts",
        [("renewal.suggestedWindow", {**SUGGESTED, "end": "2026-12-03T01:00:00Z"})],
        "renewal.suggestedWindow.end",
        "end after start",
    ),
    (
        "suggestedWindow with a naive time",
        [("renewal.suggestedWindow", {**SUGGESTED, "start": "2026-12-03T02:00:00"})],
        "renewal.suggestedWindow.start",
        "no time zone",
    ),
    (
        "suggestedWindow start not a date",
        [("renewal.suggestedWindow", {**SUGGESTED, "start": "tomorrow"})],
        "renewal.suggestedWindow.start",
        "ISO-8601",
    ),
    # windows that cannot be met within a certificate's renewal span
    (
        "1-day certificate with a daily 1h window",
        [("renewal.window", {**DAILY, "length": "1h"}), ("certificates.identity.validityDays", 1)],
        "certificates.identity.validityDays",
        "renewal.window",
    ),
    (
        "5-day certificate with a Monday-only window",
        [("renewal.window", {**DAILY, "days": ["mon"]}), ("certificates.identity.validityDays", 5)],
        "certificates.identity.validityDays",
        "renewal.window",
    ),
    (
        "1-day certificate with 2 automatic slots",
        [("renewal.autoWindow.slots", 2), ("certificates.edgeca.validityDays", 1)],
        "certificates.edgeca.validityDays",
        "renewal.autoWindow.slots",
    ),
    # certificates: key, role, mode and the names each mode needs
    (
        "unknown key type ed25519",
        [("certificates.identity.key.type", "ed25519")],
        "certificates.identity.key.type",
        "'ec-p256'",
    ),
    (
        "unknown role server",
        [("certificates.identity.role", "server")],
        "certificates.identity.role",
        "'device-identity'",
    ),
    (
        "unknown mode vault-magic",
        [("certificates.identity.mode", "vault-magic")],
        "certificates.identity.mode",
        "'vault-ca'",
    ),
    ("mode missing", [("certificates.identity.mode", REMOVE)], "certificates.identity.mode", "is required"),
    ("files missing", [("certificates.identity.files", REMOVE)], "certificates.identity.files", "is required"),
    (
        "vault-ca without issuerKeyName",
        [("certificates.identity.issuerKeyName", REMOVE)],
        "certificates.identity.issuerKeyName",
        "needs issuerKeyName",
    ),
    (
        "vault-ca without issuerCertificateName",
        [("certificates.identity.issuerCertificateName", REMOVE)],
        "certificates.identity.issuerCertificateName",
        "needs issuerCertificateName",
    ),
    (
        "vault-managed without certificateName",
        [("certificates.edgeca.certificateName", REMOVE)],
        "certificates.edgeca.certificateName",
        "needs certificateName",
    ),
    (
        "certificateName given with vault-ca",
        [("certificates.identity.certificateName", "{deviceId}-id")],
        "certificates.identity.certificateName",
        "not used by mode vault-ca",
    ),
    (
        "key given with vault-fetch",
        [("certificates.opcua.key", {"type": "ec-p256"})],
        "certificates.opcua.key",
        "Key Vault decides key",
    ),
    (
        "validityDays given with vault-fetch",
        [("certificates.opcua.validityDays", 30)],
        "certificates.opcua.validityDays",
        "Key Vault decides validityDays",
    ),
    ("validityDays 0", [("certificates.identity.validityDays", 0)], "certificates.identity.validityDays", None),
    (
        "certificateName not a Key Vault name",
        [("certificates.edgeca.certificateName", "edge.ca")],
        "certificates.edgeca.certificateName",
        "Key Vault object name",
    ),
    # templates
    (
        "subject uses unknown variable {hostname}",
        [("certificates.identity.subject", "CN={hostname}")],
        "certificates.identity.subject",
        "unknown variable {hostname}",
    ),
    (
        "subject formats {deviceId:>5}",
        [("certificates.identity.subject", "CN={deviceId:>5}")],
        "certificates.identity.subject",
        "write plain {deviceId}",
    ),
    (
        "subject converts {deviceId!r}",
        [("certificates.identity.subject", "CN={deviceId!r}")],
        "certificates.identity.subject",
        "write plain {deviceId}",
    ),
    (
        "subject template {deviceId unclosed",
        [("certificates.identity.subject", "CN={deviceId")],
        "certificates.identity.subject",
        "malformed",
    ),
    (
        "dnsNames uses unknown variable",
        [("certificates.edgeca.dnsNames", ["{hostname}.local"])],
        "certificates.edgeca.dnsNames[0]",
        "{hostname}",
    ),
    (
        "file path uses unknown variable",
        [("certificates.edgeca.files.cert", "/var/secrets/{serial}.pem")],
        "certificates.edgeca.files.cert",
        "{serial}",
    ),
    (
        "certificateName uses unknown variable",
        [("certificates.edgeca.certificateName", "{site}-edge-ca")],
        "certificates.edgeca.certificateName",
        "{site}",
    ),
    # subjects and SANs
    (
        "device-identity subject without CN={deviceId}",
        [("certificates.identity.subject", "CN=gateway")],
        "certificates.identity.subject",
        "CN = the device id",
    ),
    (
        "device-identity subject without any CN",
        [("certificates.identity.subject", "O=Contoso")],
        "certificates.identity.subject",
        "CN = the device id",
    ),
    (
        "edge-ca subject CN={deviceId}",
        [("certificates.edgeca.subject", "CN={deviceId}")],
        "certificates.edgeca.subject",
        "must not equal the device id",
    ),
    (
        "subject not a distinguished name",
        [("certificates.opcua.subject", "{deviceId}")],
        "certificates.opcua.subject",
        "not a distinguished name",
    ),
    (
        "bad DNS name",
        [("certificates.edgeca.dnsNames", ["ok.local", "bad_name!.local"])],
        "certificates.edgeca.dnsNames[1]",
        "not a DNS name",
    ),
    (
        "bad IP address",
        [("certificates.edgeca.ipAddresses", ["10.0.0.256"])],
        "certificates.edgeca.ipAddresses[0]",
        "not an IP address",
    ),
    # files
    (
        "relative file path",
        [("certificates.edgeca.files.cert", "certs/edge-ca.pem")],
        "certificates.edgeca.files.cert",
        "relative path",
    ),
    (
        "pkcs11: key URI",
        [("certificates.identity.files.key", "pkcs11:slot-id=0;object=device%20id?pin-value=1234")],
        "certificates.identity.files.key",
        "PKCS#11",
    ),
    (
        "https URI as a file",
        [("certificates.edgeca.files.chain", "https://example.com/chain.pem")],
        "certificates.edgeca.files.chain",
        "not a local file URI",
    ),
    (
        "file URI on another host",
        [("certificates.edgeca.files.chain", "file://nas/chain.pem")],
        "certificates.edgeca.files.chain",
        "not a local file URI",
    ),
    (
        "same path for cert and key",
        [("certificates.edgeca.files.key", "/var/lib/edgecert/{deviceId}/edge-ca.pem")],
        "certificates.edgeca.files",
        "share a path",
    ),
    (
        "same file in two certificates",
        [("certificates.edgeca.files.cert", "/var/secrets/device-id.pem")],
        "certificates.edgeca.files.cert",
        "certificates.identity.files",
    ),
    (
        "two device-identity certificates",
        [("certificates.identity2", SECOND_IDENTITY)],
        "certificates.identity2.role",
        "one device-identity",
    ),
    (
        "two edge-ca certificates",
        [("certificates.opcua.role", "edge-ca"), ("certificates.opcua.subject", "CN={deviceId} CA2")],
        "certificates.opcua.role",
        "one edge-ca",
    ),
    # vault
    ("certificates without vault", [("vault", REMOVE)], "vault", "add vault"),
    ("vault url missing", [("vault.url", REMOVE)], "vault.url", "is required"),
    ("vault url http://", [("vault.url", "http://contoso-edge.vault.azure.net")], "vault.url", "https URL"),
    (
        "vault url with a path",
        [("vault.url", "https://contoso-edge.vault.azure.net/secrets")],
        "vault.url",
        "https URL",
    ),
    ("vault clientId not a GUID", [("vault.clientId", "edgecert-identity")], "vault.clientId", "GUID"),
    # activation
    (
        "activation command mode without command",
        [("activation", {"mode": "command"})],
        "activation.command",
        "needs a command",
    ),
    (
        "activation command with mode none",
        [("activation", {"mode": "none", "command": ["iotedge", "system", "restart"]})],
        "activation.command",
        "set mode: command",
    ),
    (
        "activation verifyTimeout 1s",
        [("activation.verifyTimeout", "1s")],
        "activation.verifyTimeout",
        "outside 10s to 1h",
    ),
    ("activation mode reboot", [("activation.mode", "reboot")], "activation.mode", "'restart-request'"),
    # schema version
    ("schemaVersion 2", [("schemaVersion", 2)], "schemaVersion", "schemaVersion: 1"),
    ("schemaVersion missing", [("schemaVersion", REMOVE)], "schemaVersion", "add schemaVersion: 1"),
    # certificate names become twin property names
    (
        "certificate name with a dot",
        [(("certificates", "identity.v2"), ANOTHER)],
        "certificates.identity.v2",
        "not a usable certificate name",
    ),
    (
        "certificate name starting with a digit",
        [(("certificates", "2nd"), ANOTHER)],
        "certificates.2nd",
        "start with a letter",
    ),
    ("certificate name with a space", [(("certificates", "opc ua"), ANOTHER)], "certificates.opc ua", "up to 64"),
    (
        "certificate name of 65 characters",
        [(("certificates", "c" * 65), ANOTHER)],
        "certificates." + "c" * 65,
        "up to 64",
    ),
    # retries and slots
    (
        "retry maxDelay shorter than initialDelay",
        [("renewal.retry.initialDelay", "1h")],
        "renewal.retry.maxDelay",
        "at least initialDelay",
    ),
    ("retry initialDelay 0s", [("renewal.retry.initialDelay", "0s")], "renewal.retry.initialDelay", "more than zero"),
    ("retry maxDelay over a day", [("renewal.retry.maxDelay", "2d")], "renewal.retry.maxDelay", "more than a day"),
    (
        "retry maxAttemptsPerWindow 0",
        [("renewal.retry.maxAttemptsPerWindow", 0)],
        "renewal.retry.maxAttemptsPerWindow",
        None,
    ),
    ("autoWindow slots 0", [("renewal.autoWindow.slots", 0)], "renewal.autoWindow.slots", None),
    ("autoWindow slots 1441", [("renewal.autoWindow.slots", 1441)], "renewal.autoWindow.slots", None),
]


def test_the_base_document_is_valid() -> None:
    config = parse_desired(BASE)

    assert set(config.certificates) == {"identity", "edgeca", "opcua"}
    assert config.certificates["identity"].files.cert == "/var/secrets/device-id.pem"


def test_there_are_many_named_invalid_documents() -> None:
    assert len(INVALID) >= 40
    assert len({case[0] for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize(("changes", "path", "fragment"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_document_is_rejected_naming_the_field(
    changes: list[tuple[Any, Any]], path: str, fragment: str | None
) -> None:
    document = edited(*changes)

    with pytest.raises(ConfigError) as caught:
        parse_desired(document)

    problems = {p.path: p for p in caught.value.problems}
    assert path in problems, f"no problem at {path}; got {[str(p) for p in caught.value.problems]}"
    problem = problems[path]
    assert problem.message.strip()
    assert problem.fix.strip()
    assert f"{path}: " in str(caught.value)
    if fragment is not None:
        assert fragment in str(problem)


def test_invalid_documents_are_rejected_by_the_local_file_model_too() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_local(edited(("deviceId", "dev-1"), ("renewal.window", {**DAILY, "start": "25:00"})))

    assert [p.path for p in caught.value.problems] == ["renewal.window.start"]


# -- several problems at once ----------------------------------------------------------------------


def test_independent_problems_are_all_reported_at_once() -> None:
    document = edited(
        ("renewal.paused", "yes"),
        ("vault.url", "http://contoso-edge.vault.azure.net"),
        ("activation.verifyTimeout", "1s"),
        ("certificates.edgeca.key.type", "ed25519"),
        ("certificates.identity.subject", "CN={hostname}"),
    )

    with pytest.raises(ConfigError) as caught:
        parse_desired(document)

    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "renewal.paused",
        "vault.url",
        "activation.verifyTimeout",
        "certificates.edgeca.key.type",
        "certificates.identity.subject",
    }
    text = str(caught.value)
    assert "5 problems" in text
    assert all(f"  - {path}: " in text for path in paths)
    assert [p.report()["path"] for p in caught.value.problems] == [p.path for p in caught.value.problems]
    assert all(set(p.report()) == {"path", "message", "fix"} for p in caught.value.problems)


def test_problems_in_two_windows_fields_are_both_reported() -> None:
    document = edited(("renewal.window", {"start": "24:00", "length": "0m", "timezone": "Nowhere/Town"}))

    with pytest.raises(ConfigError) as caught:
        parse_desired(document)

    assert {p.path for p in caught.value.problems} == {
        "renewal.window.start",
        "renewal.window.length",
        "renewal.window.timezone",
    }


def test_the_error_names_its_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_desired(edited(("schemaVersion", 2)), source="desired properties version 12")

    assert str(caught.value).startswith("desired properties version 12 rejected (1 problem)")
    assert caught.value.code == "config.invalid"


# -- valid documents round-trip --------------------------------------------------------------------

FULL: dict[str, Any] = {
    "schemaVersion": 1,
    "vault": {
        "url": "https://contoso-edge.vault.azure.net/",
        "clientId": "8a1b2c3d-1234-4abc-9def-0123456789ab",
        "caFile": "file:///etc/edgecert/vault-ca.pem",
    },
    "renewal": {
        "renewAt": "66.7%",
        "urgentAt": "95.50%",
        "spread": "5d",
        "window": {"start": "02:30", "length": "90m", "timezone": "Europe/Berlin", "days": ["Monday", "wed", "FRI"]},
        "autoWindow": {"slots": 96},
        "retry": {"initialDelay": "2s", "maxDelay": "1h30m", "maxAttemptsPerWindow": 5},
        "paused": True,
        "forceRenewToken": "2026-12-01",
    },
    "certificates": {
        **BASE["certificates"],
        "identity": {**BASE["certificates"]["identity"], "dnsNames": ["{deviceId}.local"], "ipAddresses": ["::1"]},
    },
    "activation": {"mode": "command", "command": ["iotedge", "config", "apply"], "verifyTimeout": "2m30s"},
}

VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {"schemaVersion": 1}),
    ("the base document", BASE),
    ("every field", FULL),
    (
        "file:// URIs",
        edited(("certificates.edgeca.files", {"cert": "file:///e/c.pem", "key": "file://localhost/e/k.pem"})),
    ),
    (
        "durations 1h30m and 90m",
        edited(("renewal.retry.maxDelay", "90m"), ("renewal.renewAt", "30d"), ("renewal.urgentAt", "1d12h")),
    ),
    (
        "percentages 66.7%",
        edited(("renewal.renewAt", "66.7%"), ("renewal.urgentAt", "90.000%"), ("renewal.spread", "0.5%")),
    ),
    (
        "suggestedWindow with an offset",
        edited(("renewal.suggestedWindow", {"start": "2026-12-03T03:00:00+01:00", "end": "2026-12-03T06:00:00Z"})),
    ),
    ("days as full names", edited(("renewal.window", {**DAILY, "days": ["Monday", "Thursday", "sun"]}))),
    ("whole-day window", edited(("renewal.window", {"start": "00:00", "length": "24h"}))),
    (
        "one automatic slot for 1-day certificates",
        edited(("renewal.autoWindow.slots", 1), ("certificates.identity.validityDays", 1)),
    ),
    ("activation none", edited(("activation", {"mode": "none"}))),
    ("twin metadata present", {**BASE, "$version": 4, "renewal": {**BASE["renewal"], "$metadata": {"x": 1}}}),
]


@pytest.mark.parametrize("document", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_document_round_trips(document: dict[str, Any]) -> None:
    config = parse_desired(document)
    again = config.to_document()

    assert parse_desired(again) == config
    assert again == parse_desired(again).to_document()
    assert json.loads(json.dumps(again)) == again
    assert not any(key.startswith("$") for key in again)


def test_round_trip_writes_the_canonical_forms() -> None:
    document = parse_desired(FULL).to_document()

    assert document["vault"]["url"] == "https://contoso-edge.vault.azure.net"
    assert document["vault"]["caFile"] == "/etc/edgecert/vault-ca.pem"
    assert document["renewal"]["renewAt"] == "66.7%"
    assert document["renewal"]["urgentAt"] == "95.5%"
    assert document["renewal"]["window"] == {
        "start": "02:30",
        "length": "1h30m",
        "timezone": "Europe/Berlin",
        "days": ["mon", "wed", "fri"],
    }
    assert document["renewal"]["retry"]["maxDelay"] == "1h30m"
    assert document["activation"]["verifyTimeout"] == "2m30s"
    assert document["certificates"]["identity"]["files"] == {
        "cert": "/var/secrets/device-id.pem",
        "key": "/var/secrets/device-id.key.pem",
    }


def test_parsed_values_have_their_units() -> None:
    config = parse_desired(FULL)

    assert config.renewal.retry.max_delay == timedelta(hours=1, minutes=30)
    assert config.renewal.spread == timedelta(days=5)
    assert config.renewal.window is not None
    assert config.renewal.window.days == ("mon", "wed", "fri")
    assert config.renewal.window.length == timedelta(minutes=90)
    assert config.activation.verify_timeout == timedelta(seconds=150)


def test_suggested_window_is_kept_in_utc() -> None:
    config = parse_desired(
        edited(("renewal.suggestedWindow", {"start": "2026-12-03T03:00:00+01:00", "end": SUGGESTED["end"]}))
    )

    assert config.to_document()["renewal"]["suggestedWindow"] == {
        "start": "2026-12-03T02:00:00Z",
        "end": "2026-12-03T06:00:00Z",
    }


def _durations(low_seconds: int, high_seconds: int) -> st.SearchStrategy[tuple[str, int]]:
    """Duration text in one unit (not always the canonical form) with its length in seconds."""
    unit_sizes = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def in_unit(unit: str) -> st.SearchStrategy[tuple[str, int]]:
        size = unit_sizes[unit]
        return st.integers(max(1, -(-low_seconds // size)), high_seconds // size).map(
            lambda n: (f"{n}{unit}", n * size)
        )

    return st.sampled_from([u for u, s in unit_sizes.items() if s <= high_seconds]).flatmap(in_unit)


@st.composite
def renewal_sections(draw: st.DrawFn) -> dict[str, Any]:
    """Valid `renewal` sections: ordered thresholds, any window kind, any retry policy."""
    section: dict[str, Any] = {}
    if draw(st.booleans()):
        renew, urgent = sorted(draw(st.lists(st.integers(1, 999), min_size=2, max_size=2, unique=True)))
        section["renewAt"] = f"{Decimal(renew).scaleb(-1)}%"
        section["urgentAt"] = f"{Decimal(urgent).scaleb(-1)}%"
    else:
        urgent_days, renew_days = sorted(draw(st.lists(st.integers(1, 400), min_size=2, max_size=2, unique=True)))
        section["renewAt"] = f"{renew_days}d"
        section["urgentAt"] = f"{urgent_days * 24}h"
    section["spread"] = draw(
        st.one_of(st.integers(0, 99).map(lambda n: f"{n}%"), _durations(0, 30 * 86400).map(lambda d: d[0]))
    )
    window_kind = draw(st.sampled_from(["none", "daily", "suggested"]))
    if window_kind == "daily":
        window = {
            "start": f"{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}",
            "length": draw(_durations(60, 86400))[0],
            "timezone": draw(st.sampled_from(["UTC", "Europe/Berlin", "America/Chicago", "Asia/Kolkata"])),
        }
        if draw(st.booleans()):
            window["days"] = draw(
                st.lists(
                    st.sampled_from(["mon", "Tuesday", "wed", "thu", "Friday", "sat", "sun"]), min_size=1, unique=True
                )
            )
        section["window"] = window
    elif window_kind == "suggested":
        start_hour = draw(st.integers(0, 20))
        section["suggestedWindow"] = {
            "start": f"2026-12-03T{start_hour:02d}:00:00Z",
            "end": f"2026-12-03T{start_hour + draw(st.integers(1, 3)):02d}:15:00+00:00",
        }
    section["autoWindow"] = {"slots": draw(st.integers(1, 1440))}
    initial_text, initial = draw(_durations(1, 3600))
    section["retry"] = {
        "initialDelay": initial_text,
        "maxDelay": draw(_durations(initial, 86400))[0],
        "maxAttemptsPerWindow": draw(st.integers(1, 1000)),
    }
    section["paused"] = draw(st.booleans())
    if draw(st.booleans()):
        section["forceRenewToken"] = draw(st.text(max_size=20))
    return section


@settings(derandomize=True, max_examples=150, deadline=None)
@given(renewal_sections())
def test_generated_renewal_sections_round_trip(section: dict[str, Any]) -> None:
    config = parse_desired({"schemaVersion": 1, "renewal": section})
    again = config.to_document()

    assert parse_desired(again) == config
    assert again == parse_desired(again).to_document()
    assert config.renewal.auto_window.slots == section["autoWindow"]["slots"]
    assert again["renewal"]["paused"] is section["paused"]


# -- desired patches -------------------------------------------------------------------------------


def test_a_partial_patch_merges_nested_objects() -> None:
    merged = merge_desired(BASE, {"renewal": {"retry": {"maxDelay": "20m"}}})

    assert merged["renewal"]["retry"] == {"initialDelay": "1s", "maxDelay": "20m", "maxAttemptsPerWindow": 8}
    assert merged["renewal"]["renewAt"] == "80%"
    assert merged["certificates"] == BASE["certificates"]
    assert parse_desired(merged).renewal.retry.max_delay == timedelta(minutes=20)


def test_a_patch_does_not_change_the_base() -> None:
    before = copy.deepcopy(BASE)

    merge_desired(BASE, {"renewal": {"retry": {"maxDelay": "20m"}, "paused": None}, "certificates": {"opcua": None}})

    assert before == BASE


def test_null_removes_a_member() -> None:
    base = edited(("renewal.window", DAILY))

    merged = merge_desired(base, {"renewal": {"window": None}, "certificates": {"opcua": None}})

    assert "window" not in merged["renewal"]
    assert set(merged["certificates"]) == {"identity", "edgeca"}
    config = parse_desired(merged)
    assert config.renewal.window is None
    assert set(config.certificates) == {"identity", "edgeca"}


def test_null_inside_a_new_object_is_dropped() -> None:
    # RFC 7386: a patch object merged where the target has no object drops its own null members
    merged = merge_desired(
        {"schemaVersion": 1}, {"renewal": {"paused": None, "renewAt": "70%", "retry": {"maxDelay": None}}}
    )

    assert merged == {"schemaVersion": 1, "renewal": {"renewAt": "70%", "retry": {}}}
    assert parse_desired(merged).renewal.paused is False


def test_twin_metadata_keys_are_ignored() -> None:
    patch = {
        "$version": 7,
        "renewal": {"paused": True, "$metadata": {"$lastUpdated": "2026-01-01T00:00:00Z"}},
        "certificates": {
            "extra": {
                "$metadata": {},
                "mode": "vault-fetch",
                "certificateName": "x",
                "files": {"cert": "/x.pem", "key": "/x.key", "$lastUpdatedVersion": 7},
            }
        },
    }

    merged = merge_desired(BASE, patch)

    assert "$version" not in merged
    assert merged["renewal"]["paused"] is True
    assert "$metadata" not in merged["renewal"]
    assert merged["certificates"]["extra"] == {
        "mode": "vault-fetch",
        "certificateName": "x",
        "files": {"cert": "/x.pem", "key": "/x.key"},
    }
    assert parse_desired(merged).renewal.paused is True


def test_lists_are_replaced_not_merged() -> None:
    merged = merge_desired(BASE, {"certificates": {"edgeca": {"dnsNames": ["gw.factory.local"]}}})

    assert parse_desired(merged).certificates["edgeca"].dns_names == ("gw.factory.local",)


def test_an_invalid_merged_document_is_rejected_as_a_whole() -> None:
    good = parse_desired(BASE)
    merged = merge_desired(
        BASE, {"renewal": {"paused": "no", "retry": {"maxDelay": "20m"}}, "activation": {"verifyTimeout": "1s"}}
    )

    with pytest.raises(ConfigError) as caught:
        parse_desired(merged)

    assert {p.path for p in caught.value.problems} == {"renewal.paused", "activation.verifyTimeout"}
    assert parse_desired(BASE) == good


def test_a_full_desired_section_replaces_by_merging() -> None:
    # after a reconnect the SDK delivers the whole desired section: merging it over an old one gives it back
    old = edited(("renewal.window", DAILY))
    full = edited(("renewal.urgentAt", "90%"))

    merged = merge_desired(old, {**full, "$version": 9})

    assert parse_desired(merged).renewal.urgent_at == parse_desired(full).renewal.urgent_at
    assert merged["renewal"]["window"] == DAILY  # a member absent from a patch is kept, as RFC 7386 says


# -- local config files ----------------------------------------------------------------------------

LOCAL_TOML = """\
schemaVersion = 1
deviceId = "line-7-gateway"

[vault]
url = "https://contoso-edge.vault.azure.net"
caFile = "/etc/edgecert/sandbox-ca.pem"

[renewal]
renewAt = "30d"
window = { start = "02:00", length = "2h", timezone = "Europe/Berlin", days = ["Monday", "wed"] }

[certificates.identity]
role = "device-identity"
mode = "vault-ca"
issuerCertificateName = "fleet-ca"
issuerKeyName = "fleet-ca"
validityDays = 90

[certificates.identity.files]
cert = "file:///var/secrets/device-id.pem"
key = "file:///var/secrets/device-id.key.pem"
"""


def test_load_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "edgecert.toml"
    path.write_text(LOCAL_TOML)

    config = load_config_file(path)

    assert isinstance(config, LocalConfig)
    assert config.device_id == "line-7-gateway"
    assert config.module_id == "edgecert"
    assert config.vault is not None
    assert config.vault.ca_file == "/etc/edgecert/sandbox-ca.pem"
    assert config.renewal.window is not None
    assert config.renewal.window.days == ("mon", "wed")
    assert config.certificates["identity"].files.cert == "/var/secrets/device-id.pem"


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "edgecert.json"
    path.write_text(json.dumps({**BASE, "deviceId": "dev-1", "moduleId": "certs"}))

    config = load_config_file(path)

    assert config.device_id == "dev-1"
    assert config.module_id == "certs"
    assert set(config.certificates) == {"identity", "edgeca", "opcua"}
    assert config.to_document()["deviceId"] == "dev-1"


def test_toml_and_json_of_the_same_document_are_equal(tmp_path: Path) -> None:
    toml_path = tmp_path / "edgecert.toml"
    toml_path.write_text(LOCAL_TOML)
    json_path = tmp_path / "edgecert.conf"
    json_path.write_text(json.dumps(tomllib.loads(LOCAL_TOML)))

    assert load_config_file(toml_path) == load_config_file(json_path)


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("edgecert.toml", 'schemaVersion = 1\ndeviceId = "dev-1\n', "TOML"),
        ("edgecert.json", '{"schemaVersion": 1, "deviceId": "dev-1",}', "JSON"),
        ("edgecert.toml", "schemaVersion = \xff", "TOML"),
    ],
    ids=["TOML unterminated string", "JSON trailing comma", "TOML not UTF-8"],
)
def test_a_syntax_error_names_the_file(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))

    with pytest.raises(ConfigError) as caught:
        load_config_file(path)

    assert [p.path for p in caught.value.problems] == [str(path)]
    assert f"is not valid {kind}" in caught.value.problems[0].message
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config_file(path)

    assert [p.path for p in caught.value.problems] == [str(path)]
    assert "cannot be read" in str(caught.value)
    assert caught.value.problems[0].fix


def test_a_json_file_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "edgecert.json"
    path.write_text("[1]")

    with pytest.raises(ConfigError, match="does not hold an object"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("device_id", "path"),
    [("dev#1", "deviceId"), ("dev 1", "deviceId"), ("", "deviceId"), ("d" * 129, "deviceId"), (None, "deviceId")],
    ids=["hash sign", "space", "empty", "129 characters", "missing"],
)
def test_a_bad_device_id_in_a_file_is_rejected(tmp_path: Path, device_id: str | None, path: str) -> None:
    document = {"schemaVersion": 1} if device_id is None else {"schemaVersion": 1, "deviceId": device_id}
    file = tmp_path / "edgecert.json"
    file.write_text(json.dumps(document))

    with pytest.raises(ConfigError) as caught:
        load_config_file(file)

    assert [p.path for p in caught.value.problems] == [path]
    assert f"{file} rejected" in str(caught.value)


def test_a_module_id_with_a_bad_character_is_rejected(tmp_path: Path) -> None:
    file = tmp_path / "edgecert.json"
    file.write_text(json.dumps({"schemaVersion": 1, "deviceId": "dev-1", "moduleId": "edge/cert"}))

    with pytest.raises(ConfigError) as caught:
        load_config_file(file)

    assert [p.path for p in caught.value.problems] == ["moduleId"]


# -- resolving templates for a device --------------------------------------------------------------


def test_templates_expand_for_a_device() -> None:
    resolved = {r.name: r for r in resolve_certificates(parse_desired(BASE), device_id="dev-1", module_id="certs")}

    identity, edge_ca, opcua = resolved["identity"], resolved["edgeca"], resolved["opcua"]
    assert identity.subject == "CN=dev-1"
    assert (identity.issuer_certificate, identity.issuer_key, identity.vault_object) == (
        "fleet-ca",
        "fleet-ca-key",
        None,
    )
    assert identity.paths.cert == Path("/var/secrets/device-id.pem")
    assert edge_ca.subject == "CN=dev-1 Edge CA"
    assert edge_ca.dns_names == ("dev-1.factory.local",)
    assert edge_ca.ip_addresses == ("10.0.0.5",)
    assert edge_ca.vault_object == "dev-1-edge-ca"
    assert edge_ca.key_type == "rsa-2048"
    assert edge_ca.paths.cert == Path("/var/lib/edgecert/dev-1/edge-ca.pem")
    assert edge_ca.paths.key == Path("/var/lib/edgecert/dev-1/edge-ca.key.pem")
    assert edge_ca.paths.chain == Path("/var/lib/edgecert/dev-1/edge-ca-chain.pem")
    assert opcua.vault_object == "dev-1-certs-opcua"
    assert opcua.subject == "CN=dev-1,O=Contoso"
    assert opcua.key_type is None
    assert opcua.paths.cert == Path("/var/lib/certs/opcua.pem")
    assert opcua.paths.chain is None


def test_a_device_id_that_is_no_key_vault_name_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_certificates(parse_desired(BASE), device_id="dev:1")

    problems = {p.path: p for p in caught.value.problems}
    assert "certificates.edgeca.certificateName" in problems
    assert "certificates.opcua.certificateName" in problems
    assert "'dev:1-edge-ca'" in problems["certificates.edgeca.certificateName"].message
    assert "certificates.edgeca.dnsNames[0]" in problems
    assert "certificates.identity.certificateName" not in problems
    assert "dev:1" in str(caught.value)


@pytest.mark.parametrize(
    "device_id",
    ["line-1,cell=2", "a,O=Evil", "dev=1", "dev:1"],
    ids=["comma and equals", "an attribute smuggled in", "equals sign", "colon"],
)
def test_a_device_id_with_dn_characters_stays_the_common_name(device_id: str) -> None:
    # IoT Hub ids may hold ',' and '='; the subject must still have exactly CN = the device id
    document = edited(("certificates", {"identity": BASE["certificates"]["identity"]}))

    (identity,) = resolve_certificates(parse_desired(document), device_id=device_id)

    name = x509.Name.from_rfc4514_string(identity.subject)
    assert [a.value for a in name] == [device_id]
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id


# -- IoT Edge's own config template ----------------------------------------------------------------


def _template_uris() -> dict[str, str]:
    """The first file:// URI the IoT Edge template shows for each of the four files edgecert renews."""
    text = (FIXTURES / "iotedge" / "template.toml").read_text()
    found = {}
    for key in ("identity_cert", "identity_pk"):
        match = re.search(rf'^# {key} = "(file://[^"]+)"', text, re.MULTILINE)
        assert match is not None, f"the template shows no file URI for {key}"
        found[key] = match.group(1)
    edge_ca = re.search(
        r'^# \[edge_ca\]\n# cert = "(file://[^"]+)".*\n(?:#.*\n)*?# pk = "(file://[^"]+)"', text, re.MULTILINE
    )
    assert edge_ca is not None, "the template shows no [edge_ca] cert and pk file URIs"
    found["edge_ca.cert"], found["edge_ca.pk"] = edge_ca.group(1), edge_ca.group(2)
    return found


def test_the_iotedge_template_is_all_comments() -> None:
    text = (FIXTURES / "iotedge" / "template.toml").read_text()

    assert tomllib.loads(text) == {}
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())


def test_the_iotedge_template_file_uris_validate_and_resolve() -> None:
    uris = _template_uris()
    assert uris == {
        "identity_cert": "file:///var/secrets/device-id.pem",
        "identity_pk": "file:///var/secrets/device-id.key.pem",
        "edge_ca.cert": "file:///var/secrets/edge-ca.pem",
        "edge_ca.pk": "file:///var/secrets/edge-ca.key.pem",
    }
    document = edited(
        ("certificates.identity.files", {"cert": uris["identity_cert"], "key": uris["identity_pk"]}),
        ("certificates.edgeca.files", {"cert": uris["edge_ca.cert"], "key": uris["edge_ca.pk"]}),
    )

    resolved = {r.name: r.paths for r in resolve_certificates(parse_desired(document), device_id="my-device")}

    assert resolved["identity"].cert == Path("/var/secrets/device-id.pem")
    assert resolved["identity"].key == Path("/var/secrets/device-id.key.pem")
    assert resolved["edgeca"].cert == Path("/var/secrets/edge-ca.pem")
    assert resolved["edgeca"].key == Path("/var/secrets/edge-ca.key.pem")
    assert all(p.is_absolute() for paths in resolved.values() for p in (paths.cert, paths.key))


def test_the_iotedge_template_pkcs11_key_is_refused() -> None:
    text = (FIXTURES / "iotedge" / "template.toml").read_text()
    match = re.search(r'^# identity_pk = "(pkcs11:[^"]+)"', text, re.MULTILINE)
    assert match is not None

    with pytest.raises(ConfigError) as caught:
        parse_desired(edited(("certificates.identity.files.key", match.group(1))))

    assert [p.path for p in caught.value.problems] == ["certificates.identity.files.key"]


def test_a_device_id_of_dots_cannot_move_a_file_out_of_its_folder() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_certificates(parse_desired(BASE), device_id="..")
    paths = {p.path for p in caught.value.problems}
    assert {f"certificates.edgeca.files.{kind}" for kind in ("cert", "key", "chain")} <= paths


@pytest.mark.parametrize(
    ("path", "value"),
    [("schema_version", 1), (("renewal", "renew_at"), "80%"), (("certificates", "identity", "validity_days"), 30)],
    ids=["top level", "renewal", "certificate"],
)
def test_snake_case_field_names_are_not_schema_1(path: str | tuple[str, ...], value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_desired(edited((path, value)))
    problem = next(p for p in caught.value.problems if p.message == "is not a field of schema 1")
    assert "did you mean" in problem.fix


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("renewal.autoWindow.slots", 0, "must be at least 1"),
        ("renewal.autoWindow.slots", 1441, "must be at most 1440"),
        ("renewal.retry.maxAttemptsPerWindow", 0, "must be at least 1"),
        ("certificates.identity.validityDays", 0, "must be at least 1"),
        ("renewal.forceRenewToken", "x" * 129, "at most this many characters: 128"),
    ],
    ids=["no slots", "more slots than minutes", "no attempts", "zero validity", "long token"],
)
def test_range_errors_say_the_limit(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_desired(edited((path, value)))
    problem = next(p for p in caught.value.problems if p.path == path)
    assert message in problem.message
    assert message.rsplit(maxsplit=1)[-1] in problem.fix
