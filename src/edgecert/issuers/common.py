"""What the issuers share: reading a certificate-backed secret and checking it against the vault's `cer`."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgecert.adapters.keyvault import SecretValue
from edgecert.core.certinfo import KeyAndChain, ParseError, load_keyvault_secret
from edgecert.errors import IssuedMaterialError

__all__ = ["bundle_from_secret", "chain_root"]


def bundle_from_secret(secret: SecretValue, cer: bytes, *, certificate: str) -> KeyAndChain:
    """The key and chain of a certificate-backed secret, which must hold the certificate `cer`."""
    try:
        bundle = load_keyvault_secret(secret.value, secret.content_type)
    except ParseError as exc:
        raise IssuedMaterialError(
            f"secret '{secret.name}' version {secret.version} is not a usable key and chain: {exc}",
            remedy="the secret must be the certificate's own (PFX or PEM with its exportable private key)",
            certificate=certificate,
        ) from None
    if bundle.leaf.public_bytes(serialization.Encoding.DER) != cer:
        raise IssuedMaterialError(
            f"secret '{secret.name}' version {secret.version} holds another certificate than the certificate object",
            certificate=certificate,
        )
    return bundle


def chain_root(bundle: KeyAndChain) -> tuple[x509.Certificate, ...]:
    """The self-signed root at the end of a chain, as the anchor it must build to (none if absent)."""
    last = bundle.chain[-1]
    return (last,) if len(bundle.chain) > 1 and last.subject == last.issuer else ()
