"""The certificate profile vault-ca issues, and the checks a CSR must pass first. Pure.

Leaves: CN = the device id (IoT Hub's X.509 rule), the configured SANs, EKU clientAuth (plus
serverAuth for an Edge CA or where DNS names are given), key usage for the key type, CA:FALSE, SKI,
AKI = the CA's SKI, validity no longer than requested nor past the CA's notAfter, backdated five
minutes for clock skew. An `edge-ca` role gets CA:TRUE, pathlen:0 and keyCertSign, as IoT Edge
requires of its Edge CA (reference iothub-and-edge.md §3.2). The serial and `now` are arguments.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgecert.core.certinfo import key_type_of

__all__ = ["BACKDATE", "check_csr", "leaf_builder"]

BACKDATE = timedelta(minutes=5)


def check_csr(
    csr: x509.CertificateSigningRequest,
    *,
    subject: str,
    key_type: str,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
) -> list[str]:
    """Every reason a CSR must not be signed (empty when it may be)."""
    problems = []
    if not csr.is_signature_valid:
        problems.append("the CSR's signature does not verify (no proof of possession of the key)")
    if csr.subject.rfc4514_string() != subject:
        problems.append(f"the CSR's subject is '{csr.subject.rfc4514_string()}', the device's is '{subject}'")
    found = key_type_of(csr.public_key())
    if found != key_type:
        problems.append(f"the CSR's key is {found or 'of an unsupported type'}, the configuration asks for {key_type}")
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        requested_dns = sorted(sans.get_values_for_type(x509.DNSName))
        requested_ips = sorted(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        requested_dns, requested_ips = [], []
    if requested_dns != sorted(dns_names) or requested_ips != sorted(ip_addresses):
        problems.append("the CSR's subject alternative names are not the configured ones")
    return problems


def leaf_builder(
    csr: x509.CertificateSigningRequest,
    ca: x509.Certificate,
    *,
    role: str,
    now: datetime,
    validity: timedelta,
    serial: int,
) -> x509.CertificateBuilder:
    """The to-be-signed certificate for a checked CSR, issued by `ca`."""
    public = csr.public_key()
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise TypeError("vault-ca issues RSA and EC keys only")
    if serial < 2**63:
        raise ValueError("a serial number has at least 64 random bits")
    not_before = now.replace(microsecond=0) - BACKDATE
    not_after = min(now.replace(microsecond=0) + validity, ca.not_valid_after_utc)
    edge_ca = role == "edge-ca"
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=edge_ca, path_length=0 if edge_ca else None), critical=True)
        .add_extension(_key_usage(public, ca=edge_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
    )
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    ekus = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if edge_ca or (sans is not None and sans.get_values_for_type(x509.DNSName)):
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    return builder


def _key_usage(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, *, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public, rsa.RSAPublicKey) and not ca,
        data_encipherment=False,
        key_agreement=isinstance(public, ec.EllipticCurvePublicKey) and not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public = ca.public_key()
        if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise TypeError("the CA's key is neither RSA nor EC") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
