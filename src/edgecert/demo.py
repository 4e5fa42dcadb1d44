"""The README's main job until `edgecert sandbox` exists (F4): a self-contained demonstration.

It makes a throw-away CA and a 90-day device certificate issued 75 days ago in a temporary folder,
installs it through the certificate store (atomic swap), then runs `edgecert inspect` and
`edgecert status` on it, exactly as an operator would.
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecert.adapters.filestore import FileCertStore
from edgecert.cli import main as cli
from edgecert.core.certinfo import KeyAndChain, PrivateKey
from edgecert.core.validate import Expectations
from edgecert.crypto import generate_key, signature_hash
from edgecert.ports import CertPaths

DEVICE_ID = "demo-device-01"


def _certificate(
    subject: str, key_type: str, issuer: tuple[x509.Name, PrivateKey] | None, *, start: datetime, days: int, ca: bool
) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    signer = issuer_key if issuer is not None else key
    return builder.sign(signer, signature_hash(signer)), key


def run() -> int:
    """Generate the example, then inspect it and report its status; return the worst exit code."""
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="edgecert-demo-") as tmp:
        folder = Path(tmp)
        ca_cert, ca_key = _certificate(
            "Demo Issuing CA", "ec-p384", None, start=now - timedelta(days=365), days=3650, ca=True
        )
        leaf, leaf_key = _certificate(
            DEVICE_ID, "ec-p256", (ca_cert.subject, ca_key), start=now - timedelta(days=75), days=90, ca=False
        )
        paths = CertPaths(folder / "certs" / "device-id.pem", folder / "secrets" / "device-id.key.pem")
        store = FileCertStore(now=lambda: now)
        store.install(
            paths,
            KeyAndChain(key=leaf_key, chain=(leaf, ca_cert)),
            Expectations(anchors=(ca_cert,), subject=f"CN={DEVICE_ID}"),
        )
        config = folder / "edgecert.json"
        config.write_text(
            json.dumps(
                {
                    "schemaVersion": 1,
                    "deviceId": DEVICE_ID,
                    "vault": {"url": "https://demo-vault.vault.azure.net"},
                    "renewal": {"renewAt": "80%", "window": {"start": "02:00", "length": "2h", "timezone": "UTC"}},
                    "certificates": {
                        "identity": {
                            "role": "device-identity",
                            "mode": "vault-ca",
                            "issuerCertificateName": "demo-issuing-ca",
                            "issuerKeyName": "demo-issuing-ca",
                            "files": {"cert": f"file://{paths.cert}", "key": f"file://{paths.key}"},
                        }
                    },
                },
                indent=2,
            )
        )
        print(f"# example: a 90-day certificate for {DEVICE_ID}, issued 75 days ago, in {folder}\n")
        print(f"$ edgecert inspect {paths.cert} --device-id {DEVICE_ID} --name identity --json")
        first = cli(["inspect", str(paths.cert), "--device-id", DEVICE_ID, "--name", "identity", "--json"])
        print(f"\n$ edgecert status --config {config}")
        second = cli(["status", "--config", str(config)])
    return max(first, second)


if __name__ == "__main__":
    sys.exit(run())
