"""vault-ca: the key stays on the device; Key Vault signs with a CA key that never leaves it.

Key Vault has no "sign this CSR" operation, so the agent makes a key and a CSR on the device,
checks the CSR against the configuration, builds the certificate itself (`core.profile`), has Key
Vault sign the digest of the to-be-signed part with the CA key (`keys/sign`: RS256, PS256, ES256,
ES384; EC signatures come back raw r||s and become DER), puts the parts together (`core.der`) and
verifies the result against the CA's public key before returning it.

The CA certificate comes from Key Vault (`certificates/read` on the CA certificate) or from a chain
pinned in the configuration (`issuerChain`). It is cached, fetched again after `ca_ttl`, and once
more at once when a signature does not verify against it (the CA key was rotated).

Least privilege (DESIGN.md): Key Vault Crypto User on `/keys/<ca>` and Key Vault Certificate User on
`/certificates/<ca>` (or the pinned chain) — two assignments for a whole fleet through a group.
Once the CA is cached a renewal costs one Key Vault request: the sign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from edgecert.adapters.keyvault import KeyVault
from edgecert.config import ResolvedCertificate
from edgecert.core.certinfo import KeyAndChain, ParseError, PrivateKey, extension, load_certificates
from edgecert.core.der import certificate_parts, ecdsa_raw_to_der, encode_certificate
from edgecert.core.profile import check_csr, leaf_builder
from edgecert.crypto import build_csr, generate_key, parse_subject
from edgecert.errors import IssuanceError, IssuedMaterialError, KeyGenerationError
from edgecert.ports import Issued, IssueRequest

__all__ = ["DEFAULT_VALIDITY", "DIGESTS", "VaultCaIssuer", "check_issuer"]

DEFAULT_VALIDITY = timedelta(days=90)
#: The digest Key Vault expects for each signature algorithm.
DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "RS256": lambda data: hashlib.sha256(data).digest(),
    "PS256": lambda data: hashlib.sha256(data).digest(),
    "ES256": lambda data: hashlib.sha256(data).digest(),
    "ES384": lambda data: hashlib.sha384(data).digest(),
}


@dataclass(frozen=True)
class _CachedCa:
    chain: tuple[x509.Certificate, ...]
    fetched: datetime


class VaultCaIssuer:
    """Issues device certificates signed by a CA key in Key Vault."""

    def __init__(
        self,
        vault: KeyVault,
        *,
        rsa_algorithm: str = "RS256",
        ca_ttl: timedelta = timedelta(hours=6),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if rsa_algorithm not in ("RS256", "PS256"):
            raise ValueError("rsa_algorithm is RS256 or PS256")
        self.vault = vault
        self.rsa_algorithm = rsa_algorithm
        self.ca_ttl = ca_ttl
        self._now = now
        self._cache: dict[str, _CachedCa] = {}

    async def issue(self, request: IssueRequest) -> Issued:
        """Make a key and CSR, have the CA key sign the certificate, verify it, return key and chain."""
        cert = request.certificate
        key = generate_key(cert.key_type or "ec-p256")
        csr = build_csr(key, parse_subject(cert.subject), dns_names=cert.dns_names, ip_addresses=cert.ip_addresses)
        problems = check_csr(
            csr,
            subject=cert.subject,
            key_type=cert.key_type or "ec-p256",
            dns_names=cert.dns_names,
            ip_addresses=cert.ip_addresses,
        )
        if problems:
            raise KeyGenerationError("refusing to sign: " + "; ".join(problems), certificate=cert.name)
        chain = await self._ca_chain(cert, request.deadline, refresh=False)
        check_issuer(chain[0], cert)
        try:
            leaf = await self._sign(cert, csr, chain[0], request.deadline)
        except InvalidSignature:
            chain = await self._ca_chain(cert, request.deadline, refresh=True)  # the CA may have been rotated
            try:
                leaf = await self._sign(cert, csr, chain[0], request.deadline)
            except InvalidSignature:
                raise IssuedMaterialError(
                    f"the signature by key '{cert.issuer_key}' does not verify against CA certificate "
                    f"'{chain[0].subject.rfc4514_string()}'",
                    remedy="issuerKeyName must name the key of the CA certificate issuerCertificateName names",
                    certificate=cert.name,
                ) from None
        return Issued(KeyAndChain(key, (leaf, *chain)), _anchors(chain))

    async def _sign(
        self,
        cert: ResolvedCertificate,
        csr: x509.CertificateSigningRequest,
        ca: x509.Certificate,
        deadline: datetime | None,
    ) -> x509.Certificate:
        algorithm = self._algorithm(ca)
        validity = timedelta(days=cert.validity_days) if cert.validity_days else DEFAULT_VALIDITY
        builder = leaf_builder(
            csr, ca, role=cert.role, now=self._now(), validity=validity, serial=x509.random_serial_number()
        )
        key, digest, pss = _placeholder_signer(algorithm)
        placeholder = builder.sign(key, digest, rsa_padding=pss)
        tbs, signature_algorithm, _ = certificate_parts(placeholder.public_bytes(serialization.Encoding.DER))
        signature = await self.vault.sign(
            cert.issuer_key or "", None, algorithm, DIGESTS[algorithm](tbs), deadline=deadline
        )
        if algorithm.startswith("ES"):
            signature = ecdsa_raw_to_der(signature)
        leaf = x509.load_der_x509_certificate(encode_certificate(tbs, signature_algorithm, signature))
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError):
            raise InvalidSignature from None
        return leaf

    def _algorithm(self, ca: x509.Certificate) -> str:
        public = ca.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            algorithm = {"secp256r1": "ES256", "secp384r1": "ES384"}.get(public.curve.name)
            if algorithm is None:
                raise IssuanceError(f"the CA's curve {public.curve.name} is not supported; use P-256 or P-384")
            return algorithm
        if isinstance(public, rsa.RSAPublicKey):
            return self.rsa_algorithm
        raise IssuanceError("the CA's key is neither RSA nor EC")

    async def _ca_chain(
        self, cert: ResolvedCertificate, deadline: datetime | None, *, refresh: bool
    ) -> tuple[x509.Certificate, ...]:
        cache_key = str(cert.issuer_chain or cert.issuer_certificate)
        cached = self._cache.get(cache_key)
        if cached is not None and not refresh and self._now() - cached.fetched < self.ca_ttl:
            return cached.chain
        if cert.issuer_chain is not None:
            try:
                chain = tuple(load_certificates(cert.issuer_chain.read_bytes()))
            except (OSError, ParseError) as exc:
                raise IssuanceError(
                    f"cannot read the pinned CA chain {cert.issuer_chain}: {exc}",
                    remedy="issuerChain must name a PEM file with the issuing CA first",
                    certificate=cert.name,
                ) from None
        else:
            found = await self.vault.certificate(cert.issuer_certificate or "", deadline=deadline)
            chain = (found.certificate,)
        self._cache[cache_key] = _CachedCa(chain, self._now())
        return chain


def check_issuer(ca: x509.Certificate, cert: ResolvedCertificate) -> None:
    """Refuse, before anything is signed, a CA that cannot issue this certificate in a chain clients accept."""
    name = ca.subject.rfc4514_string()
    constraints = extension(ca, x509.BasicConstraints)
    usage = extension(ca, x509.KeyUsage)
    problem = None
    if constraints is None or not constraints.ca:
        problem = f"CA certificate '{name}' is not a CA (basicConstraints CA:TRUE is missing)"
    elif cert.role == "edge-ca" and constraints.path_length == 0:
        problem = (
            f"CA certificate '{name}' has pathLenConstraint 0, so an Edge CA under it could issue nothing that "
            "verifies: modules' server certificates would be refused"
        )
    elif usage is not None and not usage.key_cert_sign:
        problem = f"CA certificate '{name}' may not sign certificates (keyUsage without keyCertSign)"
    if problem:
        raise IssuanceError(
            problem,
            remedy=(
                f"issue {cert.role} certificates from a CA with CA:TRUE, keyCertSign"
                + (" and no pathLenConstraint or one of at least 1" if cert.role == "edge-ca" else "")
                + " (issuerCertificateName / issuerChain)"
            ),
            certificate=cert.name,
        )


def _anchors(chain: tuple[x509.Certificate, ...]) -> tuple[x509.Certificate, ...]:
    """The chain's self-signed root if it has one, else the issuing CA itself."""
    root = chain[-1]
    return (root,) if root.subject == root.issuer else (chain[0],)


def _placeholder_signer(algorithm: str) -> tuple[PrivateKey, hashes.SHA256 | hashes.SHA384, padding.PSS | None]:
    """A throw-away key of the CA's kind: its signature is replaced; only the TBS bytes are kept."""
    digest: hashes.SHA256 | hashes.SHA384 = hashes.SHA384() if algorithm == "ES384" else hashes.SHA256()
    if algorithm.startswith("ES"):
        return _placeholder_key(algorithm), digest, None
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32) if algorithm == "PS256" else None
    return _placeholder_key("RSA"), digest, pss


@cache
def _placeholder_key(kind: str) -> PrivateKey:
    return generate_key({"ES256": "ec-p256", "ES384": "ec-p384"}.get(kind, "rsa-2048"))
