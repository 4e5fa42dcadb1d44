"""`edgecert status`: the certificates a config names, read through the store, and their decisions."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgecert.adapters.filestore import FileCertStore
from edgecert.core.validate import Expectations
from edgecert.ports import CertPaths
from tests.conftest import CliResult
from tests.pki import bundle, make_ca, make_leaf

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def config(tmp_path: Path, **renewal: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "deviceId": "press-7",
        "vault": {"url": "https://contoso.vault.azure.net"},
        "renewal": renewal,
        "certificates": {
            "identity": {
                "role": "device-identity",
                "mode": "vault-ca",
                "issuerCertificateName": "factory-ca",
                "issuerKeyName": "factory-ca",
                "files": {
                    "cert": f"file://{tmp_path}/certs/{{deviceId}}.pem",
                    "key": f"{tmp_path}/secrets/{{deviceId}}.key.pem",
                },
            },
            "edge-ca": {
                "role": "edge-ca",
                "mode": "vault-managed",
                "certificateName": "{deviceId}-edge-ca",
                "files": {"cert": f"{tmp_path}/certs/edge-ca.pem", "key": f"{tmp_path}/secrets/edge-ca.key.pem"},
            },
        },
    }


def install(tmp_path: Path, name: str, common_name: str, *, issued: datetime) -> None:
    ca = make_ca("Factory CA", not_before=issued - timedelta(days=10))
    leaf = make_leaf(ca, common_name, not_before=issued)
    paths = CertPaths(tmp_path / "certs" / f"{name}.pem", tmp_path / "secrets" / f"{name}.key.pem")
    FileCertStore(now=lambda: issued + timedelta(seconds=1)).install(paths, bundle(leaf, ca), Expectations())


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "edgecert.json"
    path.write_text(json.dumps(document))
    return path


def test_reports_installed_and_missing_certificates(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    install(tmp_path, "press-7", "press-7", issued=NOW - timedelta(days=75))
    path = write(tmp_path, config(tmp_path))
    result = run_cli("status", "--config", str(path), "--now", "2026-06-01T12:00:00Z", "--json")
    assert result.code == 1, result.err  # the Edge CA is missing
    data = result.json()
    identity = data["certificates"]["identity"]
    assert identity["state"] == "installed"
    assert identity["action"] == "renew"
    assert identity["renewAfter"] <= identity["scheduledAt"] <= identity["urgentAfter"]
    assert identity["nextAttempt"] >= "2026-06-01T12:00:00Z"
    assert data["certificates"]["edge-ca"]["state"] == "missing"
    text = run_cli("status", "--config", str(path), "--now", "2026-06-01T12:00:00Z")
    assert "identity" in text.out
    assert "missing" in text.out


def test_all_installed_and_valid_exits_0(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    install(tmp_path, "press-7", "press-7", issued=NOW - timedelta(days=5))
    install(tmp_path, "edge-ca", "press-7 Edge CA", issued=NOW - timedelta(days=5))
    result = run_cli(
        "status", "--config", str(write(tmp_path, config(tmp_path))), "--now", "2026-06-01T12:00:00Z", "--json"
    )
    assert result.code == 0, result.out
    assert {c["action"] for c in result.json()["certificates"].values()} == {"wait"}


def test_wrong_subject_means_reissue(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    install(tmp_path, "press-7", "someone-else", issued=NOW - timedelta(days=5))
    result = run_cli(
        "status", "--config", str(write(tmp_path, config(tmp_path))), "--now", "2026-06-01T12:00:00Z", "--json"
    )
    identity = result.json()["certificates"]["identity"]
    assert identity["action"] == "reissue"
    assert "CN=someone-else" in identity["reason"]


def test_expired_certificate_exits_1(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    install(tmp_path, "press-7", "press-7", issued=NOW - timedelta(days=100))
    install(tmp_path, "edge-ca", "press-7 Edge CA", issued=NOW - timedelta(days=5))
    result = run_cli(
        "status", "--config", str(write(tmp_path, config(tmp_path))), "--now", "2026-06-01T12:00:00Z", "--json"
    )
    assert result.code == 1
    assert result.json()["certificates"]["identity"]["state"] == "expired"


def test_unreadable_key_is_reported_with_remedy(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    install(tmp_path, "press-7", "press-7", issued=NOW - timedelta(days=5))
    (tmp_path / "secrets" / "press-7.key.pem").write_text("not a key")
    result = run_cli(
        "status", "--config", str(write(tmp_path, config(tmp_path))), "--now", "2026-06-01T12:00:00Z", "--json"
    )
    assert result.code == 1
    error = result.json()["certificates"]["identity"]["error"]
    assert error["code"] == "cert.unreadable"
    assert error["remedy"]
    assert "not a key" not in json.dumps(error)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"renewAt": "80"}, "renewal.renewAt"),
        ({"window": {"start": "25:00", "length": "2h"}}, "renewal.window.start"),
    ],
    ids=["percent without sign", "hour 25"],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, run_cli: Callable[..., CliResult], change: dict[str, Any], path: str
) -> None:
    result = run_cli("status", "--config", str(write(tmp_path, config(tmp_path, **change))))
    assert result.code == 2
    assert path in result.err
    assert "remedy:" in result.err


def test_no_config_given_exits_2(run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECERT_CONFIG", raising=False)
    result = run_cli("status")
    assert result.code == 2
    assert "EDGECERT_CONFIG" in result.err
