"""Just enough DER to put a remotely made signature on a certificate.

Key Vault has no "sign this CSR" operation, so vault-ca builds the certificate itself: the
to-be-signed part comes from `cryptography`, Key Vault signs its digest with the CA key, and the
three parts are put together here (RFC 5280 §4.1: Certificate ::= SEQUENCE { tbsCertificate,
signatureAlgorithm, signatureValue BIT STRING }). Pure.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["DerError", "certificate_parts", "ecdsa_raw_to_der", "encode_certificate"]

_SEQUENCE = 0x30
_BIT_STRING = 0x03


class DerError(ValueError):
    """Bytes are not the DER structure expected."""


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise DerError("truncated DER element")
    tag, first = data[offset], data[offset + 1]
    if first < 0x80:
        start, size = offset + 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or offset + 2 + count > len(data):
            raise DerError("unsupported DER length")
        start, size = offset + 2 + count, int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    if start + size > len(data):
        raise DerError("truncated DER element")
    return tag, start, start + size


def certificate_parts(certificate: bytes) -> tuple[bytes, bytes, bytes]:
    """The encoded tbsCertificate, signatureAlgorithm and signatureValue of a DER certificate."""
    tag, start, end = _element(certificate, 0)
    if tag != _SEQUENCE or end != len(certificate):
        raise DerError("not a DER certificate")
    parts = []
    offset = start
    while offset < end:
        _tag, _start, stop = _element(certificate, offset)
        parts.append(certificate[offset:stop])
        offset = stop
    if len(parts) != 3:
        raise DerError(f"a certificate has 3 parts, this has {len(parts)}")
    return parts[0], parts[1], parts[2]


def encode_certificate(tbs: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    """A DER certificate from its encoded parts and a signature (as the algorithm defines it)."""
    return _tlv(_SEQUENCE, tbs + signature_algorithm + _tlv(_BIT_STRING, b"\x00" + signature))


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """Key Vault's ES* signature (r || s, each the curve size) as the DER ECDSA-Sig-Value X.509 needs."""
    if not raw or len(raw) % 2:
        raise DerError("an ECDSA signature r||s has an even, non-zero length")
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
