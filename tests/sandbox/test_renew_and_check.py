"""`edgecert renew` and `edgecert check` against the sandbox, with the real SDK clients."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from edgecert.sandbox.identity import Principal
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator
from tests.conftest import CliResult
from tests.pki import Issued, make_ca, make_leaf
from tests.sandbox.test_issuance import provision_ca, provision_managed

DEVICE = "press-7"
NOW = datetime.now(UTC).replace(microsecond=0)


def write_config(emulator: KeyVaultEmulator, folder: Path, certificates: dict[str, Any]) -> Path:
    for cert in certificates.values():
        cert.setdefault("files", {})
        name = cert.pop("_files")
        cert["files"] = {"cert": str(folder / f"{name}.pem"), "key": str(folder / "keys" / f"{name}.key.pem")}
    document = {
        "schemaVersion": 1,
        "deviceId": DEVICE,
        "vault": {"url": emulator.vault_url, "caFile": str(emulator.ca_file), "verifyChallengeResource": False},
        "certificates": certificates,
    }
    path = folder / "edgecert.json"
    path.write_text(json.dumps(document))
    return path


def three_modes(emulator: KeyVaultEmulator, identity: Principal, tag: str) -> dict[str, Any]:
    """One certificate per mode, each object provisioned and granted with exactly its least-privilege roles."""
    ca, managed, fetched = f"{tag}-ca", f"{tag}-managed", f"{tag}-fetched"
    provision_ca(emulator, ca, "ec-p256")
    provision_managed(emulator, managed)
    provision_managed(emulator, fetched)
    for role, scope in (
        ("Key Vault Crypto User", f"/keys/{ca}"),
        ("Key Vault Certificate User", f"/certificates/{ca}"),
        ("Key Vault Certificates Officer", f"/certificates/{managed}"),
        ("Key Vault Secrets User", f"/secrets/{managed}"),
        ("Key Vault Certificate User", f"/certificates/{fetched}"),
        ("Key Vault Secrets User", f"/secrets/{fetched}"),
    ):
        emulator.assign_role("sandbox", identity.object_id, role, scope)
    return {
        "identity": {"role": "device-identity", "mode": "vault-ca", "issuerCertificateName": ca, "issuerKeyName": ca,
                     "validityDays": 30, "_files": "identity"},
        "managed": {"mode": "vault-managed", "certificateName": managed, "key": {"type": "ec-p256"},
                    "_files": "managed"},
        "fetched": {"mode": "vault-fetch", "certificateName": fetched, "_files": "fetched"},
    }  # fmt: skip


def test_renew_installs_every_mode_then_finds_nothing_due(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    config = write_config(emulator, tmp_path, three_modes(emulator, identity, "renew"))
    dry = run_cli("renew", "--config", str(config), "--dry-run", "--json")
    assert dry.code == 0, dry.out
    assert {c["result"] for c in dry.json()["certificates"].values()} == {"would-renew"}
    assert not (tmp_path / "identity.pem").exists()

    first = run_cli("renew", "--config", str(config), "--json")
    assert first.code == 0, first.out
    results = first.json()["certificates"]
    assert {name: r["result"] for name, r in results.items()} == dict.fromkeys(results, "renewed")
    for name in results:
        assert (tmp_path / f"{name}.pem").exists()
        assert (tmp_path / "keys" / f"{name}.key.pem").stat().st_mode & 0o077 == 0

    again = run_cli("renew", "--config", str(config), "--json").json()["certificates"]
    assert again["identity"]["result"] == "not-due"
    assert again["managed"]["result"] == "not-due"
    assert again["fetched"]["result"] == "up-to-date"

    status = run_cli("status", "--config", str(config), "--json")
    assert status.code == 0, status.out
    assert {c["action"] for c in status.json()["certificates"].values()} == {"wait"}


def test_check_passes_with_least_privilege_and_lists_what_it_cannot_probe(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    config = write_config(emulator, tmp_path, three_modes(emulator, identity, "check"))
    result = run_cli("check", "--config", str(config), "--json")
    report = result.json()
    assert result.code == 0, result.out
    assert report["ok"] is True
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["identity"] == "pass"
    assert statuses["permission model"] == "pass"
    assert "Azure RBAC" in next(c["message"] for c in report["checks"] if c["name"] == "permission model")
    assert [n for n, s in statuses.items() if s == "unverified"] == [
        "managed (vault-managed): create a version of 'check-managed'"
    ]
    assert identity.object_id in next(c["message"] for c in report["checks"] if c["name"] == "identity")


def test_check_reports_the_users_scenario_before_any_renewal(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    provision_managed(emulator, "seed-check")
    emulator.assign_role("sandbox", identity.object_id, "Key Vault Certificates Officer", "/certificates/seed-check")
    emulator.set_access_policy(
        "sandbox", identity.object_id, {"secrets": ["get", "list"], "certificates": ["get", "list"]}
    )
    config = write_config(
        emulator, tmp_path, {"managed": {"mode": "vault-managed", "certificateName": "seed-check", "_files": "m"}}
    )
    result = run_cli("check", "--config", str(config), "--json")
    assert result.code == 1
    failed = [c for c in result.json()["checks"] if c["status"] == "fail"]
    assert [c["code"] for c in failed] == ["kv.forbidden-rbac"]
    assert 'az role assignment create --role "Key Vault Secrets User"' in failed[0]["remedy"]
    assert "/secrets/seed-check" in failed[0]["remedy"]
    assert "access policies are ignored" in failed[0]["message"]
    text = run_cli("check", "--config", str(config))
    assert "remedy:" in text.out


def test_check_fails_an_edge_ca_whose_issuer_allows_no_ca_below_it(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    provision_ca(emulator, "tight-edge", "ec-p256", path_length=0)
    for role, scope in (
        ("Key Vault Crypto User", "/keys/tight-edge"),
        ("Key Vault Certificate User", "/certificates/tight-edge"),
    ):
        emulator.assign_role("sandbox", identity.object_id, role, scope)
    issuer = {"mode": "vault-ca", "issuerCertificateName": "tight-edge", "issuerKeyName": "tight-edge"}
    config = write_config(emulator, tmp_path, {
        "edge-ca": {**issuer, "role": "edge-ca", "subject": "CN=press-7 Edge CA", "_files": "edge-ca"},
        "identity": {**issuer, "role": "device-identity", "_files": "identity"},
    })  # fmt: skip
    result = run_cli("check", "--config", str(config), "--json")
    assert result.code == 1, result.out
    checks = {c["name"]: c for c in result.json()["checks"]}
    edge = checks["edge-ca (vault-ca): CA may issue role edge-ca"]
    assert (edge["status"], edge["code"]) == ("fail", "issue.failed")
    assert "pathLenConstraint 0" in edge["message"]
    assert checks["identity (vault-ca): CA may issue role device-identity"]["status"] == "pass"


def test_check_warns_when_the_identity_can_read_every_secret(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    emulator.assign_role("sandbox", identity.object_id, "Key Vault Secrets User", "/")
    config = write_config(emulator, tmp_path, {})
    report = run_cli("check", "--config", str(config), "--json").json()
    too_broad = [c for c in report["checks"] if c["code"] == "kv.too-broad"]
    assert too_broad
    assert "every secret" in too_broad[0]["message"]


def test_check_without_identity_fails_on_the_identity(
    emulator: KeyVaultEmulator, tmp_path: Path, run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = emulator.add_principal("nobody", assigned=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.imds_url(nobody))
    config = write_config(emulator, tmp_path, {})
    report = run_cli("check", "--config", str(config), "--json").json()
    assert report["ok"] is False
    assert report["checks"][0]["name"] == "identity"
    assert report["checks"][0]["code"] == "identity.unavailable"


# -- bad material from the vault is refused before anything is stored -----------------------------


def _import_version(
    emulator: KeyVaultEmulator, object_name: str, leaf: Issued, *chain: Issued, pem: bytes | None = None
) -> None:
    """Put a version of our choosing into a certificate object (the vault serving something wrong)."""
    if pem is None:
        pfx = pkcs12.serialize_key_and_certificates(
            None, leaf.key, leaf.cert, [c.cert for c in chain] or None, serialization.NoEncryption()
        )
        value = base64.b64encode(pfx).decode()
    else:
        value = base64.b64encode(pem).decode()
    emulator.vault().objects.import_certificate(object_name, {"value": value})


def _tamper_secret(emulator: KeyVaultEmulator, object_name: str, value: str) -> None:
    emulator.vault().objects.secrets[object_name][-1].value = value


ROGUE = make_ca("Rogue CA", not_before=NOW - timedelta(days=10))
GOOD = make_ca("Good CA", not_before=NOW - timedelta(days=10))


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("expired", "cert.not-valid-now"),
        ("wrong subject", "cert.shape-mismatch"),
        ("chain that does not build", "cert.chain-untrusted"),
        ("wrong key in the secret", "issue.bad-material"),
        ("truncated PEM", "issue.bad-material"),
    ],
)
def test_bad_material_from_the_vault_is_refused_and_nothing_is_stored(
    emulator: KeyVaultEmulator,
    identity: Principal,
    tmp_path: Path,
    run_cli: Callable[..., CliResult],
    case: str,
    code: str,
) -> None:
    object_name = "bad-" + case.replace(" ", "-")
    provision_managed(emulator, object_name)
    for role, scope in (("Key Vault Certificate User", "/certificates/"), ("Key Vault Secrets User", "/secrets/")):
        emulator.assign_role("sandbox", identity.object_id, role, scope + object_name)
    config = write_config(
        emulator, tmp_path, {"fetched": {"mode": "vault-fetch", "certificateName": object_name, "_files": "fetched"}}
    )
    assert run_cli("renew", "--config", str(config)).code == 0
    before = (tmp_path / "fetched.pem").read_bytes(), (tmp_path / "keys" / "fetched.key.pem").read_bytes()
    later = NOW - timedelta(minutes=1)
    if case == "expired":
        # newer than the installed version (issued 10 minutes back), yet already expired
        expired = make_leaf(GOOD, DEVICE, not_before=NOW - timedelta(minutes=5), lifetime=timedelta(minutes=1))
        _import_version(emulator, object_name, expired, GOOD)
    elif case == "wrong subject":
        _import_version(emulator, object_name, make_leaf(GOOD, "press-8", not_before=later), GOOD)
    elif case == "chain that does not build":
        _import_version(emulator, object_name, make_leaf(ROGUE, DEVICE, not_before=later), GOOD)
    elif case == "wrong key in the secret":
        _import_version(emulator, object_name, make_leaf(GOOD, DEVICE, not_before=later), GOOD)
        other = make_leaf(GOOD, DEVICE, not_before=later)
        pfx = pkcs12.serialize_key_and_certificates(None, other.key, other.cert, None, serialization.NoEncryption())
        _tamper_secret(emulator, object_name, base64.b64encode(pfx).decode())
    else:
        _import_version(emulator, object_name, make_leaf(GOOD, DEVICE, not_before=later), GOOD)
        emulator.vault().objects.secrets[object_name][-1].content_type = "application/x-pem-file"
        _tamper_secret(emulator, object_name, "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\n")
    result = run_cli("renew", "--config", str(config), "--json")
    assert result.code == 1
    outcome = result.json()["certificates"]["fetched"]
    assert outcome["result"] == "failed"
    assert outcome["error"]["code"] == code
    assert outcome["error"]["remedy"]
    after = (tmp_path / "fetched.pem").read_bytes(), (tmp_path / "keys" / "fetched.key.pem").read_bytes()
    assert after == before
    assert not list(tmp_path.glob("*.new"))
    assert not list((tmp_path / "keys").glob("*.new"))


@pytest.mark.parametrize(
    ("vault", "code"),
    [
        ({"caFile": None}, "kv.tls"),
        ({"url": "https://127.0.0.1:9"}, "kv.unreachable"),
    ],
    ids=["the sandbox CA is not trusted (no caFile)", "nothing listens at the vault URL"],
)
def test_check_says_when_the_vault_cannot_be_reached_or_trusted(
    emulator: KeyVaultEmulator,
    identity: Principal,
    tmp_path: Path,
    run_cli: Callable[..., CliResult],
    vault: dict[str, Any],
    code: str,
) -> None:
    path = write_config(emulator, tmp_path, {})
    document = json.loads(path.read_text())
    document["vault"].update({k: v for k, v in vault.items() if v is not None})
    for key in [k for k, v in vault.items() if v is None]:
        document["vault"].pop(key)
    path.write_text(json.dumps(document))
    report = run_cli("check", "--config", str(path), "--json").json()
    assert report["ok"] is False
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["code"] for c in failed] == [code]
    assert failed[0]["name"] == "vault"
    assert failed[0]["remedy"]
    del identity
