"""Shared fixtures: certificates made by openssl, and a runner for the `edgecert` command."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edgecert.cli import main


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `edgecert ARGS...` in-process and capture its exit code and output."""

    def run(*args: str) -> CliResult:
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def openssl(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run openssl with fixed arguments; fail the test with its stderr when it fails."""
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, cwd=cwd, input=stdin)
    if done.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed: {done.stderr}")
    return done.stdout + done.stderr


OPENSSL_KEYS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}

_CA_CONFIG = """
[ ca ]
default_ca = edgecert_test
[ edgecert_test ]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = copy
[ any_name ]
commonName = supplied
"""


def openssl_cert(folder: Path, name: str, *, key: str, not_before: datetime, not_after: datetime) -> Path:
    """A self-signed certificate with exact validity dates, made by `openssl ca -selfsign`.

    OpenSSL 3.0's `req -x509` only counts whole days, so the 10-minute certificates need `ca`.
    """
    work = folder / f"openssl-{name}"
    work.mkdir()
    (work / "ca.cnf").write_text(_CA_CONFIG)
    (work / "index.txt").write_text("")
    (work / "serial").write_text("1000\n")
    openssl(
        "req",
        "-new",
        *OPENSSL_KEYS[key],
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.pem",
        "-subj",
        f"/CN={name}",
        cwd=work,
    )
    cert = folder / f"{name}.pem"
    openssl(
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        "key.pem",
        "-in",
        "req.pem",
        "-out",
        str(cert),
        "-notext",
        "-startdate",
        not_before.strftime("%Y%m%d%H%M%SZ"),
        "-enddate",
        not_after.strftime("%Y%m%d%H%M%SZ"),
        cwd=work,
    )
    return cert


@pytest.fixture
def figure(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a measured figure straight to the terminal, so CI logs show it without `-s`."""

    def show(text: str) -> None:
        with capsys.disabled():
            print(f"\n[figure] {text}")

    return show
