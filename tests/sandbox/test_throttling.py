"""Fifty devices renewing at once against a vault with scaled-down limits: all succeed, politely.

The vault's sliding window is shortened to 2 s (and the budgets scaled) so the test runs in seconds;
the figures of a real 10-s window are in benchmarks/renewal.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from edgecert.adapters.keyvault import KeyVault, RequestRetry, VaultEndpoint
from edgecert.core.certinfo import key_matches_certificate
from edgecert.issuers.ca import VaultCaIssuer
from edgecert.issuers.managed import VaultManagedIssuer
from edgecert.ports import Issued, IssueRequest
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator
from tests.sandbox.test_issuance import provision_ca, provision_managed, resolved

DEVICES = 50
RETRY = RequestRetry(attempts=40, total=timedelta(seconds=120), floor=timedelta(milliseconds=250),
                     ceiling=timedelta(seconds=2))  # fmt: skip


@pytest.fixture
def emulator(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyVaultEmulator]:
    with KeyVaultEmulator(tmp_path_factory.mktemp("kv")) as running:
        anyone = running.add_principal("imds-base")
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", running.imds_url(anyone))
        yield running


def fleet(emulator: KeyVaultEmulator, mode: str) -> list[tuple[str, Any]]:
    """Fifty devices with their identities and least-privilege roles; vault-ca through one group."""
    principals = [emulator.add_principal(f"device-{n:02d}") for n in range(DEVICES)]
    devices = []
    if mode == "vault-ca":
        provision_ca(emulator, "fleet-ca", "ec-p256")
        group = emulator.add_group("fleet", [p.object_id for p in principals])
        emulator.assign_role("sandbox", group.object_id, "Key Vault Crypto User", "/keys/fleet-ca")
        emulator.assign_role("sandbox", group.object_id, "Key Vault Certificate User", "/certificates/fleet-ca")
        for p in principals:
            devices.append((p.client_id, resolved({"mode": "vault-ca", "issuerCertificateName": "fleet-ca",
                                                   "issuerKeyName": "fleet-ca"})))  # fmt: skip
    else:
        for n, p in enumerate(principals):
            name = f"device-{n:02d}-id"
            provision_managed(emulator, name)
            emulator.assign_role("sandbox", p.object_id, "Key Vault Certificates Officer", f"/certificates/{name}")
            emulator.assign_role("sandbox", p.object_id, "Key Vault Secrets User", f"/secrets/{name}")
            devices.append((p.client_id, resolved({"mode": "vault-managed", "certificateName": name})))
    return devices


async def renew_all(emulator: KeyVaultEmulator, devices: list[tuple[str, Any]], mode: str) -> tuple[list[Issued], int]:
    async def one(client_id: str, certificate: Any) -> tuple[Issued, int]:
        endpoint = VaultEndpoint(emulator.vault_url, client_id=client_id, ca_file=emulator.ca_file,
                                 verify_challenge_resource=False)  # fmt: skip
        async with KeyVault(endpoint, retry=RETRY) as vault:
            issuer: Any = (
                VaultCaIssuer(vault)
                if mode == "vault-ca"
                else VaultManagedIssuer(vault, poll_interval=timedelta(milliseconds=100))
            )
            issued = await issuer.issue(IssueRequest(certificate, "press-7"))
            return issued, vault.throttled

    results = await asyncio.gather(*(one(client_id, cert) for client_id, cert in devices))
    return [issued for issued, _ in results], sum(throttled for _, throttled in results)


def requests_by_caller(emulator: KeyVaultEmulator) -> dict[str, list[dict[str, Any]]]:
    by_caller: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in emulator.log.snapshot()["requests"]:
        if entry["caller"]:
            by_caller[entry["caller"]].append(entry)
    return by_caller


def gaps_after_throttling(emulator: KeyVaultEmulator) -> list[tuple[float, float | None]]:
    """(seconds until the caller's next request, Retry-After given) for every 429."""
    found = []
    for entries in requests_by_caller(emulator).values():
        for this, following in itertools.pairwise(entries):
            if this["status"] == 429:
                gap = (datetime.fromisoformat(following["time"]) - datetime.fromisoformat(this["time"])).total_seconds()
                found.append((gap, float(this["retryAfter"]) if this["retryAfter"] else None))
    return found


@pytest.mark.parametrize(
    ("mode", "scale", "retry_after"),
    [("vault-ca", 0.005, True), ("vault-managed", 0.5, True), ("vault-managed", 0.5, False)],
    ids=["vault-ca, Retry-After sent", "vault-managed, Retry-After sent", "vault-managed, no Retry-After"],
)
def test_fifty_concurrent_renewals_all_succeed_under_throttling(
    emulator: KeyVaultEmulator, figure: Callable[[str], None], mode: str, scale: float, retry_after: bool
) -> None:
    devices = fleet(emulator, mode)
    emulator.set_limits("sandbox", scale=scale, retry_after=retry_after, window=2.0)
    started = datetime.now().astimezone()
    issued, throttled = asyncio.run(renew_all(emulator, devices, mode))
    elapsed = (datetime.now().astimezone() - started).total_seconds()
    assert len(issued) == DEVICES
    assert all(key_matches_certificate(i.bundle.key, i.bundle.leaf) for i in issued)
    gaps = gaps_after_throttling(emulator)
    assert throttled > 0, "the limits did not bite: the test proves nothing"
    assert len(gaps) == throttled
    for gap, hint in gaps:
        if hint is not None:
            assert gap >= hint - 0.05, f"a request came {gap:.2f} s after a Retry-After of {hint} s"
        else:
            assert gap >= RETRY.floor.total_seconds() - 0.05, f"retries {gap:.2f} s apart, under the backoff floor"
    figure(
        f"{DEVICES} concurrent {mode} renewals, Retry-After {'on' if retry_after else 'off'}: all succeeded in "
        f"{elapsed:.1f} s with {throttled} throttled requests; shortest wait after a 429: "
        f"{min(g for g, _ in gaps):.2f} s"
    )
