"""The three issuers against the Key Vault emulator, with exactly the least-privilege roles of DESIGN.md."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgecert.adapters.keyvault import KeyVault, VaultEndpoint
from edgecert.config import ResolvedCertificate, parse_desired, resolve_certificates
from edgecert.core.certinfo import build_chain, key_matches_certificate
from edgecert.crypto import generate_key, signature_hash
from edgecert.errors import IssuanceError, IssuedMaterialError, RbacDeniedError
from edgecert.issuers.ca import VaultCaIssuer
from edgecert.issuers.fetch import VaultFetchIssuer
from edgecert.issuers.managed import VaultManagedIssuer
from edgecert.ports import Issued, IssueRequest
from edgecert.sandbox.identity import Principal
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator
from tests.conftest import openssl
from tests.pki import Issued as PkiIssued
from tests.pki import make_ca, name

NOW = datetime.now(UTC).replace(microsecond=0)
DEVICE = "press-7"


def resolved(certificate: dict[str, Any], name_: str = "identity") -> ResolvedCertificate:
    files = {"cert": f"/var/lib/edgecert/{name_}.pem", "key": f"/var/lib/edgecert/{name_}.key.pem"}
    document = {
        "schemaVersion": 1,
        "vault": {"url": "https://unused.vault.azure.net"},
        "certificates": {name_: {"files": files, **certificate}},
    }
    return resolve_certificates(parse_desired(document), device_id=DEVICE)[0]


def issue(emulator: KeyVaultEmulator, make: Callable[[KeyVault], Any], request: IssueRequest, times: int = 1) -> Any:
    """Run an issuer `times` times on one adapter; return the last result and the adapter's request counts."""

    async def scenario() -> tuple[Any, dict[str, int]]:
        endpoint = VaultEndpoint(emulator.vault_url, ca_file=emulator.ca_file, verify_challenge_resource=False)
        async with KeyVault(endpoint) as vault:
            issuer = make(vault)
            result = None
            for _ in range(times):
                result = await issuer.issue(request)
            return result, dict(vault.sent)

    return asyncio.run(scenario())


def assign(emulator: KeyVaultEmulator, principal: Principal, *roles: tuple[str, str]) -> None:
    for role, scope in roles:
        emulator.assign_role("sandbox", principal.object_id, role, scope)


# -- vault-managed ---------------------------------------------------------------------------------


def provision_managed(emulator: KeyVaultEmulator, object_name: str) -> None:
    """The operator creates the device's certificate object once, with its issuer (the sandbox CA)."""
    policy = {"x509_props": {"subject": f"CN={DEVICE}"}, "issuer": {"name": "Sandbox"}, "key_props": {"kty": "EC"}}
    emulator.vault().objects.create_certificate(object_name, {"policy": policy})
    emulator.vault().objects.get_operation(object_name)


MANAGED_ROLES = [
    ("Key Vault Certificates Officer", "/certificates/{n}"),
    ("Key Vault Secrets User", "/secrets/{n}"),
]


def test_vault_managed_renews_with_least_privilege(emulator: KeyVaultEmulator, identity: Principal) -> None:
    object_name = "press-7-managed"
    provision_managed(emulator, object_name)
    assign(emulator, identity, *((role, scope.format(n=object_name)) for role, scope in MANAGED_ROLES))
    cert = resolved({"mode": "vault-managed", "certificateName": "{deviceId}-managed", "key": {"type": "ec-p384"},
                     "dnsNames": ["{deviceId}.factory.local"]})  # fmt: skip
    before = {v.version for v in emulator.vault().objects.certificates[object_name]}
    issued, sent = issue(emulator, lambda v: VaultManagedIssuer(v, poll_interval=timedelta(milliseconds=50)),
                         IssueRequest(cert, DEVICE))  # fmt: skip
    assert isinstance(issued, Issued)
    assert issued.version not in before
    leaf = issued.bundle.leaf
    assert key_matches_certificate(issued.bundle.key, leaf)
    assert leaf.subject.rfc4514_string() == f"CN={DEVICE}"
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [f"{DEVICE}.factory.local"]
    assert issued.bundle.key.curve.name == "secp384r1"
    assert len(issued.bundle.chain) == 2
    assert sent == {"get the policy": 1, "create": 1, "poll the operation": 1, "get": 2}


@pytest.mark.parametrize("missing", range(len(MANAGED_ROLES)), ids=[role for role, _ in MANAGED_ROLES])
def test_vault_managed_fails_clearly_without_each_role(
    emulator: KeyVaultEmulator, identity: Principal, missing: int
) -> None:
    object_name = f"managed-missing-{missing}"
    provision_managed(emulator, object_name)
    granted = [(role, scope.format(n=object_name)) for i, (role, scope) in enumerate(MANAGED_ROLES) if i != missing]
    assign(emulator, identity, *granted)
    cert = resolved({"mode": "vault-managed", "certificateName": object_name})
    with pytest.raises(RbacDeniedError) as caught:
        issue(
            emulator,
            lambda v: VaultManagedIssuer(v, poll_interval=timedelta(milliseconds=50)),
            IssueRequest(cert, DEVICE),
        )
    role, scope = MANAGED_ROLES[missing]
    remedy = caught.value.remedy
    assert f'--role "{role}"' in remedy
    assert f"--assignee-object-id {identity.object_id}" in remedy
    assert remedy.rstrip().split('--scope "')[1].split('"')[0].endswith(scope.format(n=object_name))
    assert "access policies" in caught.value.message


def test_the_users_scenario_access_policy_in_an_rbac_vault(emulator: KeyVaultEmulator, identity: Principal) -> None:
    """Certificates Officer plus an access policy with Get/List: vault-managed fails on GetSecret, says why."""
    object_name = "seed-scenario"
    provision_managed(emulator, object_name)
    assign(emulator, identity, ("Key Vault Certificates Officer", f"/certificates/{object_name}"))
    emulator.set_access_policy(
        "sandbox", identity.object_id, {"secrets": ["get", "list"], "certificates": ["get", "list"]}
    )
    cert = resolved({"mode": "vault-managed", "certificateName": object_name})
    make = lambda v: VaultManagedIssuer(v, poll_interval=timedelta(milliseconds=50))  # noqa: E731
    with pytest.raises(RbacDeniedError) as caught:
        issue(emulator, make, IssueRequest(cert, DEVICE))
    error = caught.value
    assert "secrets/getSecret/action" in error.message
    assert "access policies are ignored" in error.message
    assert 'az role assignment create --role "Key Vault Secrets User"' in error.remedy
    assert f"/secrets/{object_name}" in error.remedy
    assign(emulator, identity, ("Key Vault Secrets User", f"/secrets/{object_name}"))
    issued, _ = issue(emulator, make, IssueRequest(cert, DEVICE))
    assert key_matches_certificate(issued.bundle.key, issued.bundle.leaf)


# -- vault-fetch -----------------------------------------------------------------------------------

FETCH_ROLES = [
    ("Key Vault Certificate User", "/certificates/{n}"),
    ("Key Vault Secrets User", "/secrets/{n}"),
]


def test_vault_fetch_installs_only_newer_versions(emulator: KeyVaultEmulator, identity: Principal) -> None:
    object_name = "press-7-fetched"
    provision_managed(emulator, object_name)
    assign(emulator, identity, *((role, scope.format(n=object_name)) for role, scope in FETCH_ROLES))
    cert = resolved({"mode": "vault-fetch", "certificateName": object_name})
    first, _ = issue(emulator, VaultFetchIssuer, IssueRequest(cert, DEVICE))
    assert isinstance(first, Issued)
    same, sent = issue(emulator, VaultFetchIssuer, IssueRequest(cert, DEVICE, installed=first.bundle))
    assert same is None
    assert sent == {"get": 1}  # nothing newer costs one request
    emulator.renew("sandbox", object_name)  # Key Vault's AutoRenew makes a new version
    newer, _ = issue(emulator, VaultFetchIssuer, IssueRequest(cert, DEVICE, installed=first.bundle))
    assert isinstance(newer, Issued)
    assert newer.version != first.version
    assert key_matches_certificate(newer.bundle.key, newer.bundle.leaf)


@pytest.mark.parametrize("missing", range(len(FETCH_ROLES)), ids=[role for role, _ in FETCH_ROLES])
def test_vault_fetch_fails_clearly_without_each_role(
    emulator: KeyVaultEmulator, identity: Principal, missing: int
) -> None:
    object_name = f"fetch-missing-{missing}"
    provision_managed(emulator, object_name)
    assign(emulator, identity, *((r, s.format(n=object_name)) for i, (r, s) in enumerate(FETCH_ROLES) if i != missing))
    with pytest.raises(RbacDeniedError) as caught:
        issue(
            emulator,
            VaultFetchIssuer,
            IssueRequest(resolved({"mode": "vault-fetch", "certificateName": object_name}), DEVICE),
        )
    role, scope = FETCH_ROLES[missing]
    assert f'--role "{role}"' in caught.value.remedy
    assert scope.format(n=object_name) + '"' in caught.value.remedy


# -- vault-ca --------------------------------------------------------------------------------------

CA_KINDS = {
    "EC P-256, ES256": ("ec-p256", "RS256"),
    "EC P-384, ES384": ("ec-p384", "RS256"),
    "RSA, RS256": ("rsa-2048", "RS256"),
    "RSA, PS256": ("rsa-2048", "PS256"),
}


def provision_ca(
    emulator: KeyVaultEmulator, object_name: str, key_type: str, *, path_length: int = 0
) -> tuple[PkiIssued, PkiIssued]:
    """A root kept offline and an issuing CA imported into Key Vault with a non-exportable key."""
    root = make_ca(
        f"{object_name} root", not_before=NOW - timedelta(days=30), key_type=key_type, path_length=path_length + 1
    )
    issuing_key = generate_key(key_type)
    issuing = x509.CertificateBuilder(
        subject_name=name(f"{object_name} issuing CA"), issuer_name=root.cert.subject,
        public_key=issuing_key.public_key(), serial_number=x509.random_serial_number(),
        not_valid_before=NOW - timedelta(days=1), not_valid_after=NOW + timedelta(days=365),
    ).add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True).add_extension(
        x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()), critical=False
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False
    ).sign(root.key, signature_hash(root.key))  # fmt: skip
    pfx = pkcs12.serialize_key_and_certificates(None, issuing_key, issuing, [root.cert], serialization.NoEncryption())
    emulator.vault().objects.import_certificate(
        object_name,
        {"value": base64.b64encode(pfx).decode(), "policy": {"key_props": {"exportable": False}}},
    )
    return root, PkiIssued(issuing, issuing_key)


CA_ROLES = [
    ("Key Vault Crypto User", "/keys/{n}"),
    ("Key Vault Certificate User", "/certificates/{n}"),
]


@pytest.mark.parametrize("kind", list(CA_KINDS))
def test_vault_ca_leaves_pass_openssl_verify_and_the_profile(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path, kind: str
) -> None:
    key_type, rsa_algorithm = CA_KINDS[kind]
    object_name = (
        "fleet-ca-" + kind.split(",", maxsplit=1)[0].replace(" ", "").replace("-", "").lower() + rsa_algorithm.lower()
    )
    root, issuing = provision_ca(emulator, object_name, key_type)
    assign(emulator, identity, *((role, scope.format(n=object_name)) for role, scope in CA_ROLES))
    cert = resolved({"mode": "vault-ca", "role": "device-identity", "issuerCertificateName": object_name,
                     "issuerKeyName": object_name, "validityDays": 30, "ipAddresses": ["10.1.2.3"]})  # fmt: skip
    make = lambda v: VaultCaIssuer(v, rsa_algorithm=rsa_algorithm)  # noqa: E731
    issued, sent = issue(emulator, make, IssueRequest(cert, DEVICE), times=2)
    assert sent == {"get": 2, "sign with": 2}
    # on the wire: the CA certificate once, the CA key's public half once, then one sign per renewal
    seen = [e["operation"] for e in emulator.log.snapshot()["requests"] if e["caller"] == identity.object_id]
    assert seen == ["certificates.get", "keys.get", "keys.sign", "keys.sign"]
    leaf = issued.bundle.leaf
    for path, certificate in (("root.pem", root.cert), ("issuing.pem", issuing.cert), ("leaf.pem", leaf)):
        (tmp_path / path).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    verified = openssl("verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "issuing.pem"),
                       str(tmp_path / "leaf.pem"))  # fmt: skip
    assert "leaf.pem: OK" in verified
    text = openssl("x509", "-noout", "-text", "-in", str(tmp_path / "leaf.pem"))
    assert "CA:FALSE" in text
    assert "TLS Web Client Authentication" in text
    assert "IP Address:10.1.2.3" in text
    assert f"Subject: CN = {DEVICE}" in text
    if rsa_algorithm == "PS256" and key_type.startswith("rsa"):
        assert "rsassaPss" in text
    assert key_matches_certificate(issued.bundle.key, leaf)
    assert leaf.serial_number >= 2**63
    assert leaf.issuer == issuing.cert.subject
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ski = issuing.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki == ski
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=30, minutes=5)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued.bundle.chain[1] == issuing.cert


def test_vault_ca_edge_ca_role_is_a_ca_limited_to_one_level(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path
) -> None:
    # an Edge CA issues modules' certificates, so the CA that signs it needs pathlen 1 (see the next test)
    root, issuing = provision_ca(emulator, "edge-ca-issuer", "ec-p256", path_length=1)
    assign(emulator, identity, *((role, scope.format(n="edge-ca-issuer")) for role, scope in CA_ROLES))
    cert = resolved({"mode": "vault-ca", "role": "edge-ca", "issuerCertificateName": "edge-ca-issuer",
                     "issuerKeyName": "edge-ca-issuer"}, "edgeca")  # fmt: skip
    issued, _ = issue(emulator, VaultCaIssuer, IssueRequest(cert, DEVICE))
    constraints = issued.bundle.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    usage = issued.bundle.leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert issued.bundle.leaf.not_valid_after_utc <= issuing.cert.not_valid_after_utc
    assert build_chain(issued.bundle.leaf, issued.bundle.chain[1:], [root.cert], now=datetime.now(UTC)).ok
    del tmp_path


def test_vault_ca_refuses_an_edge_ca_under_a_ca_with_pathlen_0_before_signing(
    emulator: KeyVaultEmulator, identity: Principal
) -> None:
    provision_ca(emulator, "tight-ca", "ec-p256", path_length=0)
    assign(emulator, identity, *((role, scope.format(n="tight-ca")) for role, scope in CA_ROLES))
    cert = resolved({"mode": "vault-ca", "role": "edge-ca", "issuerCertificateName": "tight-ca",
                     "issuerKeyName": "tight-ca"}, "edgeca")  # fmt: skip
    sent_by_vault: list[KeyVault] = []

    def make(vault: KeyVault) -> VaultCaIssuer:
        sent_by_vault.append(vault)
        return VaultCaIssuer(vault)

    with pytest.raises(IssuanceError, match="pathLenConstraint 0") as caught:
        issue(emulator, make, IssueRequest(cert, DEVICE))
    sent = dict(sent_by_vault[0].sent)
    assert "sign with" not in sent, sent  # refused before the CA key was used
    assert not caught.value.retryable
    assert "at least 1" in caught.value.remedy
    # the same CA still issues device certificates, which have nothing below them
    device = resolved({"mode": "vault-ca", "issuerCertificateName": "tight-ca", "issuerKeyName": "tight-ca"})
    issued, _ = issue(emulator, VaultCaIssuer, IssueRequest(device, DEVICE))
    assert not issued.bundle.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("missing", range(len(CA_ROLES)), ids=[role for role, _ in CA_ROLES])
def test_vault_ca_fails_clearly_without_each_role(
    emulator: KeyVaultEmulator, identity: Principal, missing: int
) -> None:
    object_name = f"ca-missing-{missing}"
    provision_ca(emulator, object_name, "ec-p256")
    assign(emulator, identity, *((r, s.format(n=object_name)) for i, (r, s) in enumerate(CA_ROLES) if i != missing))
    cert = resolved({"mode": "vault-ca", "issuerCertificateName": object_name, "issuerKeyName": object_name})
    with pytest.raises(RbacDeniedError) as caught:
        issue(emulator, VaultCaIssuer, IssueRequest(cert, DEVICE))
    role, scope = CA_ROLES[missing]
    assert f'--role "{role}"' in caught.value.remedy
    assert scope.format(n=object_name) + '"' in caught.value.remedy


def test_vault_ca_with_a_pinned_chain_needs_no_certificate_role(
    emulator: KeyVaultEmulator, identity: Principal, tmp_path: Path
) -> None:
    root, issuing = provision_ca(emulator, "pinned-ca", "ec-p384")
    assign(emulator, identity, ("Key Vault Crypto User", "/keys/pinned-ca"))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (issuing.cert, root.cert)))
    cert = resolved({"mode": "vault-ca", "issuerCertificateName": "pinned-ca", "issuerKeyName": "pinned-ca",
                     "issuerChain": f"file://{chain}"})  # fmt: skip
    issued, sent = issue(emulator, VaultCaIssuer, IssueRequest(cert, DEVICE))
    assert sent == {"get": 1, "sign with": 1}  # the key once, then the sign
    assert issued.anchors == (root.cert,)
    assert [c.subject for c in issued.bundle.chain[1:]] == [issuing.cert.subject, root.cert.subject]


def test_vault_ca_refuses_a_key_that_is_not_the_cas(emulator: KeyVaultEmulator, identity: Principal) -> None:
    provision_ca(emulator, "ca-one", "ec-p256")
    provision_ca(emulator, "ca-two", "ec-p256")
    assign(
        emulator,
        identity,
        ("Key Vault Crypto User", "/keys/ca-two"),
        ("Key Vault Certificate User", "/certificates/ca-one"),
    )
    cert = resolved({"mode": "vault-ca", "issuerCertificateName": "ca-one", "issuerKeyName": "ca-two"})
    with pytest.raises(IssuedMaterialError, match="does not verify"):
        issue(emulator, VaultCaIssuer, IssueRequest(cert, DEVICE))
