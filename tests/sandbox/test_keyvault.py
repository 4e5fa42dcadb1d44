"""The Key Vault and identity emulators, driven by the real, unmodified Azure SDK clients (sync and aio)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import (
    DecodeError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificateOperation,
    CertificatePolicy,
    KeyType,
    WellKnownIssuerNames,
)
from azure.keyvault.certificates.aio import CertificateClient as AsyncCertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.keys.crypto.aio import CryptographyClient as AsyncCryptographyClient
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs12

from edgecert.core.certinfo import build_chain, key_matches_certificate, load_keyvault_secret
from edgecert.sandbox.identity import Principal
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator
from tests.pki import make_ca, make_leaf

FIXTURES = Path(__file__).parents[1] / "fixtures" / "keyvault"
NOW = datetime.now(UTC)


class FakeMonotonic:
    """The throttling windows' clock, moved by the test instead of by sleeping."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture(scope="module")
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory, clock: FakeMonotonic) -> Iterator[KeyVaultEmulator]:
    with KeyVaultEmulator(tmp_path_factory.mktemp("kv"), monotonic=clock) as running:
        yield running


@pytest.fixture
def device(emulator: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Principal:
    """A fresh managed identity, selected for this test's clients through AZURE_POD_IDENTITY_AUTHORITY_HOST."""
    principal = emulator.add_principal(request.node.name[:40])
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.imds_url(principal))
    return principal


class Clients:
    """Makes SDK clients for the test's device identity and closes them all when the test ends."""

    def __init__(self, emulator: KeyVaultEmulator) -> None:
        self.emulator = emulator
        self.opened: list[Any] = []

    def __call__(self, vault: str | None = None, **kwargs: Any) -> dict[str, Any]:
        credential = ManagedIdentityCredential()
        common = {"connection_verify": str(self.emulator.ca_file), "verify_challenge_resource": False, **kwargs}
        url = self.emulator.url_of(vault) if vault else self.emulator.vault_url
        made = {
            "certificates": CertificateClient(url, credential, **common),
            "secrets": SecretClient(url, credential, **common),
            "keys": KeyClient(url, credential, **common),
            "credential": credential,
        }
        self.opened += made.values()
        return made | {"common": common}

    def crypto(self, key: Any, credential: Any, common: dict[str, Any]) -> CryptographyClient:
        client = CryptographyClient(key, credential, **common)
        self.opened.append(client)
        return client

    def close(self) -> None:
        for client in self.opened:
            client.close()


@pytest.fixture
def kv(emulator: KeyVaultEmulator) -> Iterator[Clients]:
    made = Clients(emulator)
    yield made
    made.close()


def admin(emulator: KeyVaultEmulator, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """Call the control API over HTTPS, trusting only the sandbox CA; raise AdminError for an error status."""
    context = ssl.create_default_context(cafile=str(emulator.ca_file))
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - an https URL on loopback
        emulator.admin_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token or emulator.admin_token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raise AdminError(exc.code, exc.read().decode()) from None


class AdminError(Exception):
    """An error status from the control API."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def officer(emulator: KeyVaultEmulator, principal: Principal, name: str) -> None:
    """Least privilege for managing one certificate: Certificates Officer on it, Secrets User on its secret."""
    emulator.assign_role("sandbox", principal.object_id, "Key Vault Certificates Officer", f"/certificates/{name}")
    emulator.assign_role("sandbox", principal.object_id, "Key Vault Secrets User", f"/secrets/{name}")


# -- certificates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "content_type", "key_type"),
    [
        (WellKnownIssuerNames.self, CertificateContentType.pkcs12, KeyType.rsa),
        ("Sandbox", CertificateContentType.pem, KeyType.ec),
    ],
    ids=["Self issuer, PFX secret, RSA", "sandbox CA issuer, PEM secret, EC"],
)
def test_created_certificate_secret_holds_the_matching_key(
    emulator: KeyVaultEmulator, device: Principal, issuer: str, content_type: str, key_type: str, kv: Clients
) -> None:
    name = f"cert-{issuer.lower()}"
    officer(emulator, device, name)
    c = kv()
    policy = CertificatePolicy(
        issuer_name=issuer, subject="CN=press-7", san_dns_names=["press-7.factory.local"],
        content_type=content_type, key_type=key_type, validity_in_months=3,
    )  # fmt: skip
    created = c["certificates"].begin_create_certificate(name, policy, _polling_interval=0.05).result()
    assert created.id.startswith(f"{emulator.vault_url}/certificates/{name}/")
    secret = c["secrets"].get_secret(name)
    assert secret.properties.managed is True
    assert secret.properties.content_type == content_type
    bundle = load_keyvault_secret(secret.value, secret.properties.content_type)
    assert key_matches_certificate(bundle.key, bundle.leaf)
    assert bundle.leaf.public_bytes(serialization.Encoding.DER) == bytes(created.cer)
    assert bundle.leaf.subject.rfc4514_string() == "CN=press-7"
    sans = bundle.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["press-7.factory.local"]
    if issuer == "Sandbox":
        anchor = x509.load_pem_x509_certificate(emulator.issuing_ca.pem)
        assert build_chain(bundle.leaf, bundle.chain[1:], [anchor], now=datetime.now(UTC)).ok
    assert secret.properties.key_id == created.key_id


def test_unknown_issuer_then_merge(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    officer(emulator, device, "merged")
    c = kv()
    policy = CertificatePolicy(issuer_name=WellKnownIssuerNames.unknown, subject="CN=merged", key_type=KeyType.ec)
    operation = c["certificates"].begin_create_certificate("merged", policy).result()
    assert isinstance(operation, CertificateOperation)
    assert operation.status == "inProgress"
    assert "Please Perform Merge" in operation.status_details
    csr = x509.load_der_x509_csr(bytes(operation.csr))
    ca = make_ca("Outside CA", not_before=NOW - timedelta(days=1))
    leaf = x509.CertificateBuilder(
        subject_name=csr.subject, issuer_name=ca.cert.subject, public_key=csr.public_key(),
        serial_number=x509.random_serial_number(), not_valid_before=NOW - timedelta(minutes=1),
        not_valid_after=NOW + timedelta(days=30),
    ).sign(ca.key, hashes.SHA256())  # fmt: skip
    der = [leaf.public_bytes(serialization.Encoding.DER), ca.cert.public_bytes(serialization.Encoding.DER)]
    merged = c["certificates"].merge_certificate("merged", der)
    assert bytes(merged.cer) == der[0]
    assert c["certificates"].get_certificate_operation("merged").status == "completed"
    bundle = load_keyvault_secret(c["secrets"].get_secret("merged").value, "application/x-pkcs12")
    assert key_matches_certificate(bundle.key, leaf)
    assert len(bundle.chain) == 2


def test_merge_with_a_foreign_key_is_refused(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    officer(emulator, device, "foreign")
    c = kv()
    policy = CertificatePolicy(issuer_name=WellKnownIssuerNames.unknown, subject="CN=foreign")
    c["certificates"].begin_create_certificate("foreign", policy).result()
    other = make_leaf(make_ca("Other", not_before=NOW - timedelta(days=1)), "foreign", not_before=NOW)
    with pytest.raises(HttpResponseError, match="did not match") as caught:
        c["certificates"].merge_certificate("foreign", [other.cert.public_bytes(serialization.Encoding.DER)])
    assert caught.value.status_code == 400


def test_versions_policy_update_and_import(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    officer(emulator, device, "versioned")
    officer(emulator, device, "imported-pem")
    officer(emulator, device, "imported-pfx")
    c = kv()
    certificates: CertificateClient = c["certificates"]
    policy = CertificatePolicy(issuer_name="Self", subject="CN=versioned", key_type=KeyType.ec)
    first = certificates.begin_create_certificate("versioned", policy, _polling_interval=0.05).result()
    second = certificates.begin_create_certificate("versioned", policy, _polling_interval=0.05).result()
    versions = {p.version for p in certificates.list_properties_of_certificate_versions("versioned")}
    assert versions == {first.properties.version, second.properties.version}
    assert certificates.get_certificate("versioned").properties.version == second.properties.version
    assert bytes(certificates.get_certificate_version("versioned", first.properties.version).cer) == bytes(first.cer)
    fetched_policy = certificates.get_certificate_policy("versioned")
    assert fetched_policy.subject == "CN=versioned"
    assert fetched_policy.key_type == KeyType.ec
    updated = certificates.update_certificate_properties("versioned", tags={"site": "plant-3"}, enabled=False)
    assert updated.properties.tags == {"site": "plant-3"}
    assert updated.properties.enabled is False

    ca = make_ca("Import CA", not_before=NOW - timedelta(days=1))
    leaf = make_leaf(ca, "imported", not_before=NOW - timedelta(hours=1))
    key_pem = leaf.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = (
        key_pem + leaf.cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM)
    )
    imported = certificates.import_certificate(
        "imported-pem", pem, policy=CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem)
    )
    assert bytes(imported.cer) == leaf.cert.public_bytes(serialization.Encoding.DER)
    pem_secret = c["secrets"].get_secret("imported-pem")
    assert pem_secret.properties.content_type == "application/x-pem-file"
    assert key_matches_certificate(load_keyvault_secret(pem_secret.value, "application/x-pem-file").key, leaf.cert)
    pfx = pkcs12.serialize_key_and_certificates(
        b"x", leaf.key, leaf.cert, [ca.cert], serialization.BestAvailableEncryption(b"pfx-password")
    )
    from_pfx = certificates.import_certificate("imported-pfx", pfx, password="pfx-password")  # noqa: S106 - test data
    assert bytes(from_pfx.cer) == leaf.cert.public_bytes(serialization.Encoding.DER)
    pfx_secret = c["secrets"].get_secret("imported-pfx")
    assert key_matches_certificate(load_keyvault_secret(pfx_secret.value, "application/x-pkcs12").key, leaf.cert)


def test_a_non_exportable_key_never_leaves_the_vault(
    emulator: KeyVaultEmulator, device: Principal, kv: Clients
) -> None:
    officer(emulator, device, "sealed")
    c = kv()
    policy = CertificatePolicy(
        issuer_name="Self",
        subject="CN=sealed",
        exportable=False,
        content_type=CertificateContentType.pem,
        key_type=KeyType.rsa,
    )
    created = c["certificates"].begin_create_certificate("sealed", policy, _polling_interval=0.05).result()
    value = c["secrets"].get_secret("sealed").value
    assert "PRIVATE KEY" not in value
    assert x509.load_pem_x509_certificate(value.encode()).public_bytes(serialization.Encoding.DER) == bytes(created.cer)


def test_a_failed_issuance_ends_the_poller_with_the_failed_operation(
    emulator: KeyVaultEmulator, device: Principal, kv: Clients
) -> None:
    officer(emulator, device, "rejected")
    emulator.faults.add(
        _fault(operation="certificates.create", fail_issuance={"code": "Request rejected", "message": "CA said no"})
    )
    c = kv()
    result = (
        c["certificates"]
        .begin_create_certificate(
            "rejected", CertificatePolicy(issuer_name="Sandbox", subject="CN=rejected"), _polling_interval=0.05
        )
        .result()
    )
    assert isinstance(result, CertificateOperation)
    assert result.status == "failed"
    assert result.error.code == "Request rejected"


def test_missing_certificate_is_resource_not_found(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    officer(emulator, device, "absent")
    with pytest.raises(ResourceNotFoundError, match="CertificateNotFound"):
        kv()["certificates"].get_certificate("absent")


# -- secrets and keys ------------------------------------------------------------------------------


def test_secrets_set_get_and_versions(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    emulator.assign_role("sandbox", device.object_id, "Key Vault Secrets Officer", "/secrets/plain")
    secrets = kv()["secrets"]
    first = secrets.set_secret("plain", "one", content_type="text/plain")
    second = secrets.set_secret("plain", "two")
    assert secrets.get_secret("plain").value == "two"
    assert secrets.get_secret("plain", first.properties.version).value == "one"
    versions = {p.version for p in secrets.list_properties_of_secret_versions("plain")}
    assert versions == {first.properties.version, second.properties.version}


@pytest.mark.parametrize(
    ("key_type", "options", "algorithm", "digest"),
    [
        ("RSA", {"size": 2048}, SignatureAlgorithm.rs256, hashes.SHA256()),
        ("RSA", {"size": 3072}, SignatureAlgorithm.ps256, hashes.SHA256()),
        ("EC", {"curve": "P-256"}, SignatureAlgorithm.es256, hashes.SHA256()),
        ("EC", {"curve": "P-384"}, SignatureAlgorithm.es384, hashes.SHA384()),
    ],
    ids=["RS256", "PS256", "ES256", "ES384"],
)
def test_sign_then_verify(
    emulator: KeyVaultEmulator,
    device: Principal,
    key_type: str,
    options: dict[str, Any],
    algorithm: SignatureAlgorithm,
    digest: hashes.HashAlgorithm,
    kv: Clients,
) -> None:
    name = f"signer-{algorithm.value.lower()}"
    emulator.assign_role("sandbox", device.object_id, "Key Vault Crypto Officer", f"/keys/{name}")
    c = kv()
    key = c["keys"].create_key(name, key_type, **options)
    crypto = kv.crypto(key, c["credential"], c["common"])
    hasher = hashes.Hash(digest)
    hasher.update(b"tbs certificate")
    value = hasher.finalize()
    signed = crypto.sign(algorithm, value)
    assert crypto.verify(algorithm, value, signed.signature).is_valid
    assert not crypto.verify(algorithm, value, bytes(len(signed.signature))).is_valid
    # and the signature checks out locally against the public JWK, in the format the SDK documents
    public = key.key
    prehashed = utils.Prehashed(digest)
    if key_type == "EC":
        curve = ec.SECP256R1() if public.crv == "P-256" else ec.SECP384R1()
        point = ec.EllipticCurvePublicNumbers(
            int.from_bytes(public.x, "big"), int.from_bytes(public.y, "big"), curve
        ).public_key()
        half = len(signed.signature) // 2
        der = utils.encode_dss_signature(
            int.from_bytes(signed.signature[:half], "big"), int.from_bytes(signed.signature[half:], "big")
        )
        point.verify(der, value, ec.ECDSA(prehashed))
    else:
        rsa_key = rsa.RSAPublicNumbers(int.from_bytes(public.e, "big"), int.from_bytes(public.n, "big")).public_key()
        scheme = (
            padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            if algorithm == SignatureAlgorithm.ps256
            else padding.PKCS1v15()
        )
        rsa_key.verify(signed.signature, value, scheme, prehashed)


def test_async_clients_work_too(emulator: KeyVaultEmulator, device: Principal) -> None:
    officer(emulator, device, "async-cert")
    emulator.assign_role("sandbox", device.object_id, "Key Vault Crypto Officer", "/keys/async-key")
    common = {"connection_verify": str(emulator.ca_file), "verify_challenge_resource": False}

    async def scenario() -> tuple[bytes, str, bool]:
        async with AsyncManagedIdentityCredential() as credential:
            async with AsyncCertificateClient(emulator.vault_url, credential, **common) as certificates:
                poller = await certificates.create_certificate(
                    "async-cert", CertificatePolicy(issuer_name="Self", subject="CN=async"), _polling_interval=0.05
                )
                created = poller
            async with AsyncSecretClient(emulator.vault_url, credential, **common) as secrets:
                secret = await secrets.get_secret("async-cert")
            async with AsyncKeyClient(emulator.vault_url, credential, **common) as keys:
                key = await keys.create_ec_key("async-key", curve="P-256")
            async with AsyncCryptographyClient(key, credential, **common) as crypto:
                digest = hashlib.sha256(b"x").digest()
                signed = await crypto.sign(SignatureAlgorithm.es256, digest)
                verified = await crypto.verify(SignatureAlgorithm.es256, digest, signed.signature)
        return bytes(created.cer), str(secret.value), verified.is_valid

    cer, value, verified = asyncio.run(scenario())
    bundle = load_keyvault_secret(value, "application/x-pkcs12")
    assert bundle.leaf.public_bytes(serialization.Encoding.DER) == cer
    assert verified


# -- authorization ---------------------------------------------------------------------------------


def test_rbac_denies_with_the_real_403_until_the_secret_scope_is_assigned(
    emulator: KeyVaultEmulator, device: Principal, kv: Clients
) -> None:
    writer = emulator.add_principal("writer")
    emulator.assign_role("sandbox", writer.object_id, "Key Vault Secrets Officer", "/")
    for name in ("device-secret", "other-secret"):
        emulator.vault().objects.set_secret(name, {"value": name})
    secrets = kv()["secrets"]
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("device-secret")
    error = caught.value
    assert error.status_code == 403
    assert error.error.code == "Forbidden"
    assert error.error.innererror["code"] == "ForbiddenByRbac"
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" in error.message
    assert f"oid={device.object_id}" in error.message
    assert "/secrets/device-secret'" in error.message
    assert "\r\n" in error.message
    emulator.assign_role("sandbox", device.object_id, "Key Vault Secrets User", "/secrets/device-secret")
    assert secrets.get_secret("device-secret").value == "device-secret"
    with pytest.raises(HttpResponseError, match="ForbiddenByRbac"):
        secrets.get_secret("other-secret")


def test_a_role_at_a_certificate_scope_does_not_reach_its_secret(
    emulator: KeyVaultEmulator, device: Principal, kv: Clients
) -> None:
    """The seed's `Access denied, Operation: GetSecret`: Certificate User on the certificate only."""
    emulator.vault().objects.create_certificate("scoped", {"policy": {"x509_props": {"subject": "CN=scoped"}}})
    emulator.vault().objects.get_operation("scoped")
    emulator.assign_role("sandbox", device.object_id, "Key Vault Certificate User", "/certificates/scoped")
    c = kv()
    assert c["certificates"].get_certificate("scoped").name == "scoped"
    with pytest.raises(HttpResponseError, match="getSecret") as caught:
        c["secrets"].get_secret("scoped")
    assert caught.value.error.innererror["code"] == "ForbiddenByRbac"


def test_a_group_assignment_covers_its_members(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    group = emulator.add_group("fleet", [device.object_id])
    emulator.vault().objects.set_secret("fleet-secret", {"value": "shared"})
    emulator.assign_role("sandbox", group.object_id, "Key Vault Secrets User", "/secrets/fleet-secret")
    assert kv()["secrets"].get_secret("fleet-secret").value == "shared"


def test_access_policies_are_ignored_in_rbac_and_enforced_in_access_policy_vaults(
    emulator: KeyVaultEmulator, device: Principal, kv: Clients
) -> None:
    emulator.set_access_policy("sandbox", device.object_id, {"secrets": ["get"]})
    emulator.vault().objects.set_secret("policy-secret", {"value": "v"})
    with pytest.raises(HttpResponseError, match="ForbiddenByRbac"):
        kv()["secrets"].get_secret("policy-secret")

    emulator.create_vault("legacy", permission_model="access-policy")
    emulator.vault("legacy").objects.set_secret("policy-secret", {"value": "legacy"})
    secrets = kv("legacy")["secrets"]
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("policy-secret")
    assert caught.value.error.innererror["code"] == "AccessDenied"
    assert "does not have secrets get permission on key vault 'legacy;" in caught.value.message
    emulator.assign_role("legacy", device.object_id, "Key Vault Administrator", "/")  # ignored here
    with pytest.raises(HttpResponseError, match="AccessDenied"):
        secrets.get_secret("policy-secret")
    emulator.set_access_policy("legacy", device.object_id, {"secrets": ["get"]})
    assert secrets.get_secret("policy-secret").value == "legacy"
    with pytest.raises(HttpResponseError, match="secrets list permission"):
        list(secrets.list_properties_of_secret_versions("policy-secret"))


def test_firewall_switch(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    emulator.create_vault("walled")
    emulator.assign_role("walled", device.object_id, "Key Vault Administrator", "/")
    emulator.vault("walled").objects.set_secret("s", {"value": "v"})
    emulator.vault("walled").firewall = True
    with pytest.raises(HttpResponseError) as caught:
        kv("walled")["secrets"].get_secret("s")
    assert caught.value.error.innererror["code"] == "ForbiddenByFirewall"
    emulator.vault("walled").firewall = False
    assert kv("walled")["secrets"].get_secret("s").value == "v"


def test_role_assignments_stop_at_the_subscription_limit(emulator: KeyVaultEmulator) -> None:
    principal = emulator.add_principal("many")
    while len(emulator.assignments) < emulator.assignments.limit:
        emulator.assignments.add(
            "sandbox", principal.object_id, "Key Vault Secrets User", f"/secrets/s{len(emulator.assignments)}"
        )
    body = {"principalId": principal.object_id, "role": "Key Vault Secrets User", "scope": "/secrets/one-more"}
    with pytest.raises(AdminError) as caught:
        admin(emulator, "POST", "/_sandbox/vaults/sandbox/roleAssignments", body)
    assert caught.value.status == 400
    assert "RoleAssignmentLimitExceeded" in caught.value.body
    emulator.assignments.limit = 10**6  # let the rest of the module assign again


# -- throttling ------------------------------------------------------------------------------------


def test_throttling_by_class_with_a_low_scale(
    emulator: KeyVaultEmulator, device: Principal, clock: FakeMonotonic, kv: Clients
) -> None:
    emulator.create_vault("busy")
    emulator.assign_role("busy", device.object_id, "Key Vault Administrator", "/")
    emulator.vault("busy").objects.set_secret("s", {"value": "v"})
    emulator.set_limits("busy", scale=0.001, retry_after=True)  # vault-other: 4 per 10 s; secret create: 1 (floor)
    secrets = kv("busy", retry_total=0)["secrets"]
    clock.value += 100
    for _ in range(4):
        secrets.get_secret("s")
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("s")
    assert caught.value.status_code == 429
    assert caught.value.error.code == "Throttled"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    secrets.set_secret("other-class", "still allowed")  # secret CREATE has its own budget
    clock.value += 10.001
    assert secrets.get_secret("s").value == "v"


def test_hsm_keys_cost_twice_the_software_create_budget(
    emulator: KeyVaultEmulator, device: Principal, clock: FakeMonotonic, kv: Clients
) -> None:
    emulator.create_vault("premium", sku="premium")
    emulator.assign_role("premium", device.object_id, "Key Vault Crypto Officer", "/")
    emulator.set_limits("premium", scale=0.1)  # key CREATE: 2 software or 1 HSM per 10 s
    keys = kv("premium", retry_total=0)["keys"]
    clock.value += 100
    assert keys.create_key("hsm-1", "EC-HSM").key_type == "EC-HSM"
    with pytest.raises(HttpResponseError, match="Throttled"):
        keys.create_key("soft-1", "EC")
    clock.value += 11
    standard = kv(retry_total=0)["keys"]
    emulator.assign_role("sandbox", device.object_id, "Key Vault Crypto Officer", "/keys/hsm-in-standard")
    with pytest.raises(HttpResponseError, match="Premium"):
        standard.create_key("hsm-in-standard", "RSA-HSM")
    keys.create_key("soft-1", "EC")
    keys.create_key("soft-2", "EC")
    with pytest.raises(HttpResponseError, match="Throttled"):
        keys.create_key("soft-3", "EC")


# -- identity --------------------------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_tokens_of_two_principals_differ_in_oid(emulator: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    for name in ("device-a", "device-b"):
        principal = emulator.add_principal(name)
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.imds_url(principal))
        token = ManagedIdentityCredential().get_token("https://vault.azure.net/.default").token
        claims = _claims(token)
        assert claims["aud"] == "https://vault.azure.net"
        assert claims["oid"] == principal.object_id
        seen.append(claims["oid"])
    assert seen[0] != seen[1]


def test_user_assigned_identity_by_client_id(emulator: KeyVaultEmulator, device: Principal) -> None:
    user_assigned = emulator.add_principal("user-assigned")
    token = ManagedIdentityCredential(client_id=user_assigned.client_id).get_token("https://vault.azure.net/.default")
    assert _claims(token.token)["oid"] == user_assigned.object_id
    del device


def test_a_device_without_identity_gets_the_imds_400_path(
    emulator: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = emulator.add_principal("no-identity", assigned=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.imds_url(nobody))
    with pytest.raises(CredentialUnavailableError):
        ManagedIdentityCredential().get_token("https://vault.azure.net/.default")


def test_a_forged_token_is_refused(emulator: KeyVaultEmulator, device: Principal) -> None:
    token = ManagedIdentityCredential().get_token("https://vault.azure.net/.default").token
    header, claims, signature = token.split(".")
    forged_claims = _claims(token) | {"oid": "00000000-0000-0000-0000-000000000000"}
    forged = ".".join(
        [header, base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode(), signature]
    )
    context = ssl.create_default_context(cafile=str(emulator.ca_file))
    request = urllib.request.Request(  # noqa: S310 - https on loopback
        f"{emulator.vault_url}/secrets/x/?api-version=2026-04-01", headers={"Authorization": f"Bearer {forged}"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, context=context, timeout=10)  # noqa: S310
    with caught.value as refused:
        assert refused.code == 401
        assert "Bearer authorization=" in refused.headers["WWW-Authenticate"]
    del claims


# -- faults ----------------------------------------------------------------------------------------


def _fault(**fields: Any) -> Any:
    from edgecert.sandbox.keyvault.vault import Fault

    return Fault(**fields)


def test_fault_injection(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    emulator.assign_role("sandbox", device.object_id, "Key Vault Secrets Officer", "/secrets/flaky")
    emulator.vault().objects.set_secret("flaky", {"value": "v"})
    strict = kv(retry_total=0)["secrets"]
    admin(emulator, "POST", "/_sandbox/faults", [
        {"operation": "secrets.get", "status": 503},
        {"operation": "secrets.get", "malformed": True},
        {"operation": "secrets.get", "drop": True},
    ])  # fmt: skip
    with pytest.raises(HttpResponseError) as caught:
        strict.get_secret("flaky")
    assert caught.value.status_code == 503
    with pytest.raises(DecodeError):
        strict.get_secret("flaky")
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        strict.get_secret("flaky")
    assert strict.get_secret("flaky").value == "v"
    # the SDK's own retry policy rides over one 503 on a GET
    admin(emulator, "POST", "/_sandbox/faults", {"operation": "secrets.get", "status": 503, "retryAfter": 0})
    assert kv()["secrets"].get_secret("flaky").value == "v"


# -- control API -----------------------------------------------------------------------------------


def test_control_api(emulator: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch, kv: Clients) -> None:
    made = admin(emulator, "POST", "/_sandbox/principals", {"name": "via-api"})
    assert set(made) == {"objectId", "clientId", "imdsUrl"}
    group = admin(emulator, "POST", "/_sandbox/groups", {"name": "g", "members": [made["objectId"]]})
    vault = admin(emulator, "PUT", "/_sandbox/vaults/api-vault", {"permissionModel": "rbac", "sku": "premium"})
    assert vault["vaultUrl"].startswith("https://127.0.0.1:")
    admin(emulator, "POST", "/_sandbox/vaults/api-vault/roleAssignments",
          {"principalId": group["objectId"], "role": "Key Vault Secrets Officer", "scope": "/secrets/api"})  # fmt: skip
    admin(emulator, "PUT", "/_sandbox/vaults/api-vault/limits", {"scale": 1, "retryAfter": False})
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", made["imdsUrl"])
    secrets = kv("api-vault")["secrets"]
    secrets.set_secret("api", "via control api")
    assert secrets.get_secret("api").value == "via control api"
    log = admin(emulator, "GET", "/_sandbox/requests")
    assert log["counters"]["api-vault secrets.set 200"] == 1
    assert any(r["caller"] == made["objectId"] for r in log["requests"])
    with pytest.raises(AdminError) as caught:
        admin(emulator, "GET", "/_sandbox/requests", token="wrong")  # noqa: S106 - a deliberately wrong token
    assert caught.value.status == 401
    with pytest.raises(AdminError) as bad_role:
        admin(emulator, "POST", "/_sandbox/vaults/api-vault/roleAssignments",
              {"principalId": made["objectId"], "role": "Key Vault Superhero", "scope": "/"})  # fmt: skip
    assert bad_role.value.status == 400


def test_auto_renew_makes_a_new_version(emulator: KeyVaultEmulator, device: Principal, kv: Clients) -> None:
    officer(emulator, device, "auto")
    certificates = kv()["certificates"]
    first = certificates.begin_create_certificate(
        "auto", CertificatePolicy(issuer_name="Self", subject="CN=auto"), _polling_interval=0.05
    ).result()
    admin(emulator, "POST", "/_sandbox/vaults/sandbox/certificates/auto/renew")
    latest = certificates.get_certificate("auto")
    assert latest.properties.version != first.properties.version


# -- fidelity --------------------------------------------------------------------------------------


def _kind(entry: dict[str, Any]) -> str | None:
    """Which of the compared responses a recorded entry is, if any."""
    body, uri, method = entry.get("ResponseBody"), entry["RequestUri"].split("?")[0], entry["RequestMethod"]
    if not isinstance(body, dict) or entry["StatusCode"] >= 400 or "error" in body:
        return None
    if uri.endswith("/create") and entry["StatusCode"] == 202:
        return "create"
    if uri.endswith("/pending") and method == "GET":
        return "pending"
    if "/certificates/" in uri and method == "GET" and "cer" in body:
        return "certificate"
    if "/secrets/" in uri and "value" in body:
        return "secret"
    return None


def _recorded(kind: str) -> list[dict[str, Any]]:
    """Recorded real-service response bodies of one kind, from every recording."""
    found = [
        entry["ResponseBody"]
        for path in sorted(FIXTURES.glob("*.json"))
        for entry in json.loads(path.read_text())["Entries"]
        if _kind(entry) == kind
    ]
    assert found, f"no recorded {kind} responses"
    return found


def _missing(recorded: Any, ours: Any, path: str = "") -> list[str]:
    """Fields the recording has that our response lacks (recursively through objects)."""
    if not isinstance(recorded, dict):
        return []
    if not isinstance(ours, dict):
        return [path or "(root)"]
    missing = []
    for key, value in recorded.items():
        if key not in ours:
            missing.append(f"{path}{key}")
        else:
            missing += _missing(value, ours[key], f"{path}{key}.")
    return missing


def _raw(emulator: KeyVaultEmulator, method: str, path: str, token: str, body: Any = None) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(emulator.ca_file))
    request = urllib.request.Request(  # noqa: S310 - https on loopback
        f"{emulator.vault_url}{path}?api-version=2026-04-01",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        return dict(json.loads(response.read()))


@pytest.mark.parametrize("kind", ["create", "pending", "certificate", "secret"])
def test_responses_carry_every_field_of_the_recorded_real_service(
    emulator: KeyVaultEmulator, device: Principal, kind: str
) -> None:
    officer(emulator, device, "fidelity")
    token = ManagedIdentityCredential().get_token("https://vault.azure.net/.default").token
    emulator.set_settings("sandbox", completion_delay=0.3)
    try:
        ours = {
            "create": _raw(emulator, "POST", "/certificates/fidelity/create", token,
                           {"policy": {"x509_props": {"subject": "CN=fidelity"}, "issuer": {"name": "Self"}}}),
        }  # fmt: skip
        in_progress = _raw(emulator, "GET", "/certificates/fidelity/pending", token)
        assert in_progress["status"] == "inProgress"
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while (completed := _raw(emulator, "GET", "/certificates/fidelity/pending", token))["status"] != "completed":
            assert datetime.now(UTC) < deadline
        ours["pending"] = in_progress | completed  # recordings hold both shapes; check each below
        ours["certificate"] = _raw(emulator, "GET", "/certificates/fidelity/", token)
        ours["secret"] = _raw(emulator, "GET", "/secrets/fidelity/", token)
    finally:
        emulator.set_settings("sandbox", completion_delay=0.0)
    for recorded in _recorded(kind):
        target = ours[kind]
        if kind == "pending":
            target = completed if recorded.get("status") == "completed" else in_progress
        assert _missing(recorded, target) == []


def test_tokens_are_refused_when_expired_for_another_audience_or_tampered() -> None:
    from edgecert.sandbox.identity import TokenError, TokenIssuer

    instant = [datetime(2026, 6, 1, tzinfo=UTC)]
    issuer = TokenIssuer(now=lambda: instant[0])
    principal = Principal("device")
    token, expires = issuer.issue(principal, "https://vault.azure.net")
    assert issuer.verify(token, "https://vault.azure.net")["oid"] == principal.object_id
    with pytest.raises(TokenError, match="AKV10022"):
        issuer.verify(token, "https://storage.azure.com")
    with pytest.raises(TokenError, match="signature"):
        issuer.verify(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), "https://vault.azure.net")
    with pytest.raises(TokenError, match="signature"):
        TokenIssuer(now=lambda: instant[0]).verify(token, "https://vault.azure.net")  # another sandbox's key
    instant[0] = expires
    with pytest.raises(TokenError, match="expired"):
        issuer.verify(token, "https://vault.azure.net")
