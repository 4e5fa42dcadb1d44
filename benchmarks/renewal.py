"""Renewals per issuance mode against the sandbox: latency from decision to stored files, and requests.

Run: .venv/bin/python benchmarks/renewal.py [--renewals 20] [--burst 50] [--window 10] [--json]

For each mode one device renews `--renewals` times in a row through one Key Vault adapter (as the
agent keeps one): each renewal is decide -> issue -> validate -> atomic store. Printed per mode: the
median and p95 latency, and the Key Vault requests per renewal counted on the emulator's side
(authorized requests; the SDK's one-off 401 challenge per client is counted apart). Then a burst:
`--burst` devices renew at once in vault-managed, with the service's limits over a `--window`-second
window, and the throttled requests are counted. Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgecert.adapters.filestore import FileCertStore
from edgecert.adapters.keyvault import KeyVault, RequestRetry, VaultEndpoint
from edgecert.config import parse_desired, resolve_certificates
from edgecert.core.certinfo import certificate_facts
from edgecert.core.policy import RenewalPolicy, renewal_decision
from edgecert.issuers.managed import VaultManagedIssuer
from edgecert.ports import IssueRequest
from edgecert.renewal import expectations, issuer_for
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.sandbox.test_issuance import provision_ca, provision_managed

DEVICE = "press-7"  # the subject provision_managed gives the objects


def certificate(mode: str, folder: Path) -> Any:
    spec = {
        "vault-ca": {"issuerCertificateName": "bench-ca", "issuerKeyName": "bench-ca"},
        "vault-managed": {"certificateName": "bench-managed"},
        "vault-fetch": {"certificateName": "bench-fetched"},
    }[mode]
    files = {"cert": str(folder / f"{mode}.pem"), "key": str(folder / f"{mode}.key.pem")}
    document = {
        "schemaVersion": 1,
        "vault": {"url": "https://unused.vault.azure.net"},
        "certificates": {"bench": {"mode": mode, "files": files, **spec}},
    }
    return resolve_certificates(parse_desired(document), device_id=DEVICE)[0]


async def renew_in_a_row(emulator: KeyVaultEmulator, mode: str, renewals: int, folder: Path) -> dict[str, Any]:
    principal = emulator.add_principal(f"bench-{mode}")
    roles = {
        "vault-ca": [("Key Vault Crypto User", "/keys/bench-ca"),
                     ("Key Vault Certificate User", "/certificates/bench-ca")],
        "vault-managed": [("Key Vault Certificates Officer", "/certificates/bench-managed"),
                          ("Key Vault Secrets User", "/secrets/bench-managed")],
        "vault-fetch": [("Key Vault Certificate User", "/certificates/bench-fetched"),
                        ("Key Vault Secrets User", "/secrets/bench-fetched")],
    }[mode]  # fmt: skip
    for role, scope in roles:
        emulator.assign_role("sandbox", principal.object_id, role, scope)
    cert = certificate(mode, folder)
    store = FileCertStore(now=lambda: datetime.now(UTC))
    endpoint = VaultEndpoint(emulator.vault_url, client_id=principal.client_id, ca_file=emulator.ca_file,
                             verify_challenge_resource=False)  # fmt: skip
    latencies, per_renewal = [], []
    async with KeyVault(endpoint) as vault:
        issuer = (
            VaultManagedIssuer(vault, poll_interval=timedelta(milliseconds=20))
            if mode == "vault-managed"
            else issuer_for(cert, vault)
        )
        for _ in range(renewals):
            if mode == "vault-fetch":
                emulator.renew("sandbox", "bench-fetched")  # Key Vault's AutoRenew made a version to fetch
            before = _authorized(emulator, principal.object_id)
            started = time.perf_counter()
            installed = store.load(cert.paths)
            if installed is not None:
                policy = RenewalPolicy()
                renewal_decision(
                    certificate_facts(installed.leaf), policy, now=datetime.now(UTC), desired=cert.desired_shape()
                )
            issued = await issuer.issue(IssueRequest(cert, DEVICE, installed))
            if issued is None:
                raise RuntimeError(f"{mode}: nothing was issued")
            store.install(cert.paths, issued.bundle, expectations(cert, issued))
            latencies.append(time.perf_counter() - started)
            per_renewal.append(_authorized(emulator, principal.object_id) - before)
    latencies.sort()
    return {
        "renewals": renewals,
        "medianMs": round(statistics.median(latencies) * 1000, 1),
        "p95Ms": round(latencies[max(0, int(len(latencies) * 0.95) - 1)] * 1000, 1),
        "requestsFirstRenewal": per_renewal[0],
        "requestsPerRenewalAfterFirst": statistics.median(per_renewal[1:]) if len(per_renewal) > 1 else None,
        "challenges": _challenges(emulator),
    }


async def burst(emulator: KeyVaultEmulator, devices: int, window: float) -> dict[str, Any]:
    emulator.set_limits("sandbox", scale=1.0, retry_after=False, window=window)
    jobs = []
    for n in range(devices):
        name = f"burst-{n:03d}"
        provision_managed(emulator, name)
        principal = emulator.add_principal(name)
        emulator.assign_role("sandbox", principal.object_id, "Key Vault Certificates Officer", f"/certificates/{name}")
        emulator.assign_role("sandbox", principal.object_id, "Key Vault Secrets User", f"/secrets/{name}")
        jobs.append((principal.client_id, name))
    before = sum(1 for e in emulator.log.snapshot()["requests"] if e["status"] == 429)
    retry = RequestRetry(attempts=60, total=timedelta(minutes=5), ceiling=timedelta(seconds=window))

    async def one(client_id: str, name: str) -> None:
        endpoint = VaultEndpoint(emulator.vault_url, client_id=client_id, ca_file=emulator.ca_file,
                                 verify_challenge_resource=False)  # fmt: skip
        async with KeyVault(endpoint, retry=retry) as vault:
            cert = dataclasses.replace(certificate("vault-managed", Path(tempfile.gettempdir())), vault_object=name)
            issuer = VaultManagedIssuer(vault, poll_interval=timedelta(milliseconds=200))
            await issuer.issue(IssueRequest(cert, DEVICE))

    started = time.perf_counter()
    await asyncio.gather(*(one(client_id, name) for client_id, name in jobs))
    throttled = sum(1 for e in emulator.log.snapshot()["requests"] if e["status"] == 429) - before
    return {"devices": devices, "windowSeconds": window, "seconds": round(time.perf_counter() - started, 1),
            "throttledRequests": throttled}  # fmt: skip


def _authorized(emulator: KeyVaultEmulator, oid: str) -> int:
    return sum(1 for e in emulator.log.snapshot()["requests"] if e["caller"] == oid)


def _challenges(emulator: KeyVaultEmulator) -> int:
    return sum(1 for e in emulator.log.snapshot()["requests"] if e["status"] == 401)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, KeyVaultEmulator(Path(tmp) / "kv") as emulator:
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emulator.imds_url(emulator.add_principal("base"))
        provision_ca(emulator, "bench-ca", "ec-p256")
        provision_managed(emulator, "bench-managed")
        provision_managed(emulator, "bench-fetched")
        modes = {}
        for mode in ("vault-ca", "vault-managed", "vault-fetch"):
            modes[mode] = await renew_in_a_row(emulator, mode, args.renewals, Path(tmp))
        result: dict[str, Any] = {"modes": modes}
        if args.burst:
            result["burst"] = await burst(emulator, args.burst, args.window)
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renewals", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50, help="devices renewing at once in vault-managed (0: none)")
    parser.add_argument("--window", type=float, default=10.0, help="the throttling window in seconds (service: 10)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for mode, figures in result["modes"].items():
        print(
            f"{mode:<14} median {figures['medianMs']:7.1f} ms  p95 {figures['p95Ms']:7.1f} ms  "
            f"requests: first {figures['requestsFirstRenewal']}, then {figures['requestsPerRenewalAfterFirst']} "
            f"per renewal ({figures['renewals']} renewals)"
        )
    if "burst" in result:
        b = result["burst"]
        print(f"burst: {b['devices']} vault-managed renewals at once, {b['windowSeconds']} s window: "
              f"{b['seconds']} s, {b['throttledRequests']} throttled requests")  # fmt: skip


if __name__ == "__main__":
    main()
