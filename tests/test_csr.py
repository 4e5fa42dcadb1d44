"""On-device keys and CSRs: every key type verifies with `openssl req -verify` and carries its names."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgecert.core.certinfo import KEY_TYPES, key_type_of, load_private_key
from edgecert.crypto import build_csr, generate_key, parse_subject
from edgecert.errors import KeyGenerationError
from tests.conftest import CliResult, openssl


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_makes_a_csr_that_openssl_verifies(
    key_type: str, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    key_out, csr_out = tmp_path / "device.key", tmp_path / "device.csr"
    result = run_cli(
        "csr", "--key-type", key_type, "--subject", "CN=press-7,O=Contoso,C=DE",
        "--dns", "press-7.factory.local", "--dns", "press-7", "--ip", "10.1.2.3", "--ip", "fd00::7",
        "--key-out", str(key_out), "--csr-out", str(csr_out), "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    verified = openssl("req", "-verify", "-noout", "-in", str(csr_out))
    assert "verify OK" in verified
    text = openssl("req", "-noout", "-text", "-in", str(csr_out))
    assert "CN = press-7" in text or "CN=press-7" in text
    assert "DNS:press-7.factory.local" in text
    assert "DNS:press-7," in text
    assert "IP Address:10.1.2.3" in text
    assert "IP Address:FD00:0:0:0:0:0:0:7" in text
    request = x509.load_pem_x509_csr(csr_out.read_bytes())
    assert request.subject.rfc4514_string() == "CN=press-7,O=Contoso,C=DE"
    key = load_private_key(key_out.read_bytes())
    assert key_type_of(key) == key_type
    assert key_type_of(request.public_key()) == key_type
    assert stat.S_IMODE(key_out.stat().st_mode) == 0o600
    assert result.json()["subject"] == "CN=press-7,O=Contoso,C=DE"
    assert "PRIVATE" not in result.out


def test_csr_refuses_to_overwrite_a_key(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    key_out, csr_out = tmp_path / "device.key", tmp_path / "device.csr"
    key_out.write_bytes(b"an existing key nobody wants to lose")
    result = run_cli("csr", "--subject", "CN=x", "--key-out", str(key_out), "--csr-out", str(csr_out))
    assert result.code == 1
    assert "exists already" in result.err
    assert "--force" in result.err
    assert key_out.read_bytes() == b"an existing key nobody wants to lose"
    forced = run_cli("csr", "--subject", "CN=x", "--key-out", str(key_out), "--csr-out", str(csr_out), "--force")
    assert forced.code == 0
    assert b"PRIVATE KEY" in key_out.read_bytes()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--key-type", "dsa-1024", "--subject", "CN=x"], "unknown key type"),
        (["--subject", "not a dn"], "distinguished name"),
        (["--subject", "CN=x", "--ip", "10.0.0.300"], "not an IP address"),
    ],
    ids=["unknown key type", "subject that is not a DN", "bad IP address"],
)
def test_csr_bad_input_exits_2(tmp_path: Path, run_cli: Callable[..., CliResult], args: list[str], needle: str) -> None:
    result = run_cli("csr", *args, "--key-out", str(tmp_path / "k"), "--csr-out", str(tmp_path / "c"))
    assert result.code == 2
    assert needle in result.err
    assert "remedy:" in result.err
    assert not (tmp_path / "k").exists()


def test_keys_are_the_requested_algorithms() -> None:
    assert isinstance(generate_key("ec-p384"), ec.EllipticCurvePrivateKey)
    assert generate_key("ec-p384").curve.name == "secp384r1"
    assert isinstance(generate_key("rsa-3072"), rsa.RSAPrivateKey)
    assert generate_key("rsa-3072").key_size == 3072
    with pytest.raises(KeyGenerationError, match="unknown key type") as caught:
        generate_key("ed25519")
    assert "ec-p256" in caught.value.remedy


def test_csr_without_sans_has_no_san_extension() -> None:
    request = build_csr(generate_key(), parse_subject("CN=device-1"))
    with pytest.raises(x509.ExtensionNotFound):
        request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert request.is_signature_valid
