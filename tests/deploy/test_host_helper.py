"""The host helper contrib/host/edgecert-activate, its systemd units and tmpfiles entry.

The helper runs as a subprocess against a fake `iotedge` (first on PATH) that records each call in a log:
`begin <args>` / `end <args>` around a restart or config apply, `status` for `system status`.
"""

from __future__ import annotations

import ast
import asyncio
import configparser
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from edgecert.adapters.activation import RestartRequestActivator, write_json_atomically
from edgecert.config import ResolvedCertificate
from edgecert.core.certinfo import sha256_thumbprint
from edgecert.ports import CertPaths
from tests.pki import make_ca, make_leaf

HOST_DIR = Path(__file__).resolve().parents[2] / "contrib" / "host"
HELPER = HOST_DIR / "edgecert-activate"
INSTALLED_HELPER = "/usr/local/sbin/edgecert-activate"
REQUEST_DIR = "/run/edgecert/requests"
START = datetime(2025, 1, 1, tzinfo=UTC)

# A stand-in for `iotedge`: FAKE_IOTEDGE_FAIL makes a restart fail with that last line, FAKE_IOTEDGE_SLEEP makes it
# slow, FAKE_IOTEDGE_STATUS is running | down | up-after-N (Down for the first N calls) | unsupported.
FAKE_IOTEDGE = """#!{python} -S
import os, sys, time

args = " ".join(sys.argv[1:])
log = os.environ["FAKE_IOTEDGE_LOG"]


def record(line):
    with open(log, "a") as handle:
        handle.write(line + "\\n")


if args == "system status":
    record("status")
    mode = os.environ.get("FAKE_IOTEDGE_STATUS", "running")
    if mode == "unsupported":
        sys.stderr.write("error: unrecognized subcommand 'status'\\n")
        sys.exit(2)
    with open(log) as handle:
        calls = sum(1 for line in handle if line == "status\\n")
    edged = "Running"
    if mode == "down":
        edged = "Down - failed"
    elif mode.startswith("up-after-") and calls <= int(mode[len("up-after-"):]):
        edged = "Down - activating"
    print("System services:")
    for name, state in [("aziot-edged", edged), ("aziot-identityd", "Running"), ("aziot-keyd", "Ready"),
                        ("aziot-certd", "Ready"), ("aziot-tpmd", "Ready")]:
        print("    {{:24}}{{}}".format(name, state))
    print()
    print("Use 'iotedge system logs' to check for non-fatal errors.")
    sys.exit(0)
if args in ("system restart", "config apply"):
    record("begin " + args)
    print("Stopping aziot-edged.service...Stopped!")
    time.sleep(float(os.environ.get("FAKE_IOTEDGE_SLEEP", "0")))
    record("end " + args)
    if os.environ.get("FAKE_IOTEDGE_FAIL"):
        sys.stderr.write(os.environ["FAKE_IOTEDGE_FAIL"] + "\\n")
        sys.exit(1)
    print("Starting aziot-edged.service...Started!")
    sys.exit(0)
record("unexpected " + args)
sys.exit(64)
"""


@dataclass
class Host:
    """A request folder, an allowed certificate folder and the fake iotedge, all under tmp_path."""

    folder: Path
    aziot: Path
    log: Path
    env: dict[str, str]

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(HELPER),
            "--folder",
            str(self.folder),
            "--allowed-prefix",
            str(self.aziot),
            "--status-interval",
            "0.02",
            "--status-timeout",
            "3",
            "--command-timeout",
            "10",
            *extra,
        ]

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*extra), env=self.env, capture_output=True, text=True, timeout=30, check=False
        )

    def spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def request(self, cert: Path, *, action: str = "restart", thumbprint: str = "") -> str:
        request_id = uuid.uuid4().hex
        write_json_atomically(
            self.folder / f"{request_id}.request.json", request_body(request_id, cert, action, thumbprint)
        )
        return request_id

    def result(self, stem: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads((self.folder / f"{stem}.result.json").read_text())
        return value

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def request_body(request_id: str, cert: Path, action: str = "restart", thumbprint: str = "") -> dict[str, Any]:
    """A request as RestartRequestActivator writes it."""
    return {
        "id": request_id,
        "action": action,
        "certificate": "identity",
        "role": "device-identity",
        "thumbprint": thumbprint,
        "files": {"cert": str(cert), "key": str(cert.with_suffix(".key.pem"))},
        "requestedAt": "2025-01-01T00:00:00Z",
    }


@pytest.fixture
def host(tmp_path: Path) -> Host:
    folder, aziot, bin_dir = tmp_path / "requests", tmp_path / "var" / "aziot", tmp_path / "bin"
    for made in (folder, aziot / "certs", bin_dir):
        made.mkdir(parents=True)
    fake = bin_dir / "iotedge"
    fake.write_text(FAKE_IOTEDGE.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "iotedge.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_IOTEDGE_LOG": str(log)}
    return Host(folder=folder, aziot=aziot, log=log, env=env)


@pytest.fixture
def device_cert(host: Host) -> tuple[Path, str]:
    """A real leaf + CA chain file under the allowed folder, and the leaf's SHA-256 thumbprint."""
    ca = make_ca("Test Root", not_before=START)
    leaf = make_leaf(ca, "device-1", not_before=START)
    path = host.aziot / "certs" / "device-1.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf.cert, ca.cert)))
    return path, sha256_thumbprint(leaf.cert)


def begins(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("begin ")]


# -- one request ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "command"), [("restart", "system restart"), ("config-apply", "config apply")])
def test_a_request_is_answered_ok_with_the_thumbprint_of_the_certificate_file(
    host: Host, device_cert: tuple[Path, str], action: str, command: str
) -> None:
    cert, thumbprint = device_cert
    request_id = host.request(cert, action=action, thumbprint=thumbprint)

    done = host.run()

    assert done.returncode == 0, done.stdout + done.stderr
    assert host.result(request_id) == {
        "id": request_id,
        "status": "ok",
        "message": f"iotedge {command}: the runtime is back (aziot-edged Running)",
        "thumbprint": thumbprint,
    }
    assert host.calls() == [f"begin {command}", f"end {command}", "status"]
    assert f"answered {request_id}: ok (thumbprint {thumbprint})" in done.stdout
    result_file = host.folder / f"{request_id}.result.json"
    assert stat.S_IMODE(result_file.stat().st_mode) == 0o644  # the module runs as another uid
    names = {p.name for p in host.folder.iterdir()}
    assert names == {f"{request_id}.request.json", result_file.name, ".edgecert-activate.lock"}  # no temp files left


def test_a_failing_restart_is_reported_with_its_last_output_line(host: Host, device_cert: tuple[Path, str]) -> None:
    request_id = host.request(device_cert[0], thumbprint=device_cert[1])
    host.env["FAKE_IOTEDGE_FAIL"] = "Error: could not start aziot-edged.service: exit status 1"

    done = host.run()

    assert done.returncode == 0
    assert host.result(request_id) == {
        "id": request_id,
        "status": "failed",
        "message": "iotedge system restart exited with 1: Error: could not start aziot-edged.service: exit status 1",
    }
    assert host.calls() == ["begin system restart", "end system restart"]  # no status wait after a failure


def test_a_restart_that_does_not_finish_in_time_is_killed_and_reported(
    host: Host, device_cert: tuple[Path, str]
) -> None:
    request_id = host.request(device_cert[0])
    host.env["FAKE_IOTEDGE_SLEEP"] = "20"

    done = host.run("--command-timeout", "0.5")

    assert done.returncode == 0
    assert host.result(request_id)["status"] == "failed"
    assert host.result(request_id)["message"] == "iotedge system restart did not finish within 0.5 s"
    assert "end system restart" not in host.calls()  # killed while it slept


def test_a_non_ascii_certificate_name_is_logged_under_an_ascii_locale(
    host: Host, device_cert: tuple[Path, str]
) -> None:
    # systemd may run the helper with the C locale; Python 3.6 then has an ASCII stdout.
    request_id = uuid.uuid4().hex
    body = request_body(request_id, device_cert[0]) | {"certificate": "identit\u00e9-\u00fc"}
    write_json_atomically(host.folder / f"{request_id}.request.json", body)
    host.env["PYTHONIOENCODING"] = "ascii"

    done = host.run()

    assert done.returncode == 0, done.stderr
    assert host.result(request_id)["status"] == "ok"
    assert "(identit\u00e9-\u00fc, device-identity)" in done.stdout


def test_a_certificate_that_is_not_the_requested_one_is_named_in_the_message(
    host: Host, device_cert: tuple[Path, str]
) -> None:
    cert, thumbprint = device_cert
    request_id = host.request(cert, thumbprint="AB" * 32)

    host.run()

    result = host.result(request_id)
    assert result["status"] == "ok"
    assert result["thumbprint"] == thumbprint  # what the file holds; the module compares it with its own
    assert f"holds the certificate {thumbprint}, not the requested one" in result["message"]


@pytest.mark.parametrize(
    ("mode", "options", "status", "message", "status_calls"),
    [
        pytest.param("running", (), "ok", "the runtime is back (aziot-edged Running)", 1, id="running at once"),
        pytest.param("up-after-2", (), "ok", "the runtime is back (aziot-edged Running)", 3, id="running on poll 3"),
        pytest.param(
            "down",
            ("--status-timeout", "0.2"),
            "failed",
            "finished, but the runtime did not report Running within 0.2 s: aziot-edged Down - failed",
            None,
            id="stays down",
        ),
        pytest.param(
            "unsupported",
            (),
            "ok",
            "gave no service states (error: unrecognized subcommand 'status'); trusting the exit status",
            1,
            id="status not supported",
        ),
    ],
)
def test_the_runtime_status_after_the_restart_decides_the_answer(
    host: Host,
    device_cert: tuple[Path, str],
    mode: str,
    options: tuple[str, ...],
    status: str,
    message: str,
    status_calls: int | None,
) -> None:
    request_id = host.request(device_cert[0])
    host.env["FAKE_IOTEDGE_STATUS"] = mode

    host.run(*options)

    result = host.result(request_id)
    assert result["status"] == status
    assert message in result["message"]
    assert ("thumbprint" in result) == (status == "ok")
    polls = host.calls().count("status")
    assert polls == status_calls if status_calls is not None else polls >= 2


# -- refused requests ------------------------------------------------------------------------------------------------

CONTENT_MARKER = "CONTENT_MARKER-CONTENT-NEVER-IN-A-MESSAGE"


def write_raw(host: Host, body: bytes, stem: str | None = None) -> str:
    stem = stem or uuid.uuid4().hex
    (host.folder / f"{stem}.request.json").write_bytes(body)
    return stem


def write_changed(host: Host, cert: Path, change: Callable[[dict[str, Any]], None], stem: str | None = None) -> str:
    request_id = uuid.uuid4().hex
    body = request_body(request_id, cert)
    change(body)
    return write_raw(host, json.dumps(body).encode(), stem or request_id)


def write_stale(host: Host, cert: Path) -> str:
    request_id = host.request(cert)
    two_hours_ago = time.time() - 7200
    os.utime(host.folder / f"{request_id}.request.json", (two_hours_ago, two_hours_ago))
    return request_id


def write_link(host: Host, cert: Path) -> str:
    request_id = uuid.uuid4().hex
    target = host.folder.parent / "elsewhere.json"
    target.write_text(json.dumps(request_body(request_id, cert)))
    (host.folder / f"{request_id}.request.json").symlink_to(target)
    return request_id


MALFORMED: list[Any] = [
    pytest.param(lambda h, c: write_raw(h, b'{"id": "' + CONTENT_MARKER.encode()), "not valid JSON", id="not JSON"),
    pytest.param(lambda h, c: write_raw(h, b"\xff\xfe" + CONTENT_MARKER.encode()), "not UTF-8", id="not UTF-8"),
    pytest.param(
        lambda h, c: write_raw(h, json.dumps([CONTENT_MARKER]).encode()), "must be a JSON object", id="JSON array"
    ),
    pytest.param(lambda h, c: write_raw(h, b" " * 70_000 + b"{}"), "larger than 65536 bytes", id="larger than 64 KiB"),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: None, stem="restart-now"),
        "the file name must be <id>.request.json",
        id="file name is not an id",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b.update(id=uuid.uuid4().hex)),
        "`id` differs from the id in the file name",
        id="id differs from the file name",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b.update(id=b["id"].upper())),
        "`id` must be a string of 32 lower-case hex digits",
        id="id in upper case",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b.pop("id")),
        "`id` must be a string of 32 lower-case hex digits",
        id="no id",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b.update(action="reboot")),
        "`action` must be one of config-apply, restart",
        id="unknown action",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b.pop("files")), "`files` must be an object", id="no files"
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b["files"].update(cert="var/aziot/certs/device-1.pem")),
        "`files.cert` must be an absolute path",
        id="relative path",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b["files"].update(cert="/etc/shadow")),
        "`files.cert` must be under ",
        id="path outside the allowed prefix",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b["files"].update(cert=f"{c.parent}/../../../../etc/shadow")),
        "`files.cert` must not contain '..'",
        id="path escaping with ..",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b["files"].update(cert=f"{c.parent.parent}-evil/x.pem")),
        "`files.cert` must be under ",
        id="path sharing the prefix's name only",
    ),
    pytest.param(
        lambda h, c: write_changed(h, c, lambda b: b.update(role=["device-identity"])),
        "`role` must be a string",
        id="role not a string",
    ),
    pytest.param(write_stale, "older than 3600 s: not acted on", id="stale request"),
    pytest.param(write_link, "the request file is a symbolic link", id="request file is a symbolic link"),
]


@pytest.mark.parametrize(("write", "fragment"), MALFORMED)
def test_a_malformed_request_is_refused_and_nothing_runs(
    host: Host, device_cert: tuple[Path, str], write: Callable[[Host, Path], str], fragment: str
) -> None:
    stem = write(host, device_cert[0])

    done = host.run()

    assert done.returncode == 0, done.stdout + done.stderr
    result = host.result(stem)
    assert result["status"] == "failed"
    assert fragment in result["message"]
    assert CONTENT_MARKER not in result["message"]
    assert "thumbprint" not in result
    assert not host.log.exists(), f"iotedge was run: {host.calls()}"
    assert f"request {stem} rejected: {result['message']}" in done.stdout


def test_refused_requests_do_not_stop_valid_ones_and_pending_requests_share_one_command(
    host: Host, device_cert: tuple[Path, str]
) -> None:
    cert, thumbprint = device_cert
    restarts = [host.request(cert, thumbprint=thumbprint) for _ in range(2)]
    config_apply = host.request(cert, action="config-apply", thumbprint=thumbprint)
    refused = write_raw(host, b"[]")

    done = host.run()

    assert done.returncode == 0
    assert begins(host.calls()) == ["begin config apply"]  # config apply restarts too: one command answers all
    for request_id in [*restarts, config_apply]:
        assert host.result(request_id)["status"] == "ok"
        assert host.result(request_id)["thumbprint"] == thumbprint
    assert host.result(refused)["status"] == "failed"
    assert "done: 4 request(s) answered, 1 restart(s)" in done.stdout


def key_file(host: Host, cert: Path) -> Path:
    del cert
    path = host.aziot / "certs" / "device-1.key.pem"
    key = make_ca("k", not_before=START).key
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def link_outside(host: Host, cert: Path) -> Path:
    outside = host.folder.parent / "outside.pem"
    outside.write_bytes(cert.read_bytes())
    link = host.aziot / "certs" / "link.pem"
    link.symlink_to(outside)
    return link


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(lambda h, c: c.with_name("missing.pem"), "cannot read ", id="missing file"),
        pytest.param(key_file, "holds no PEM certificate", id="a key, not a certificate"),
        pytest.param(link_outside, "leads outside", id="link out of the allowed folder"),
    ],
)
def test_a_certificate_file_that_cannot_be_used_fails_the_request_without_its_contents(
    host: Host, device_cert: tuple[Path, str], make: Callable[[Host, Path], Path], fragment: str
) -> None:
    path = make(host, device_cert[0])
    request_id = host.request(path)

    host.run()

    result = host.result(request_id)
    assert result["status"] == "failed"
    assert result["message"].startswith("iotedge system restart: the runtime is back (aziot-edged Running), but ")
    assert fragment in result["message"]
    assert str(path) in result["message"]
    if path.exists():
        body = "".join(path.read_text().splitlines()[1:3])
        assert body not in result["message"]


# -- several helpers, several requests -------------------------------------------------------------------------------


def assert_never_overlapping(calls: list[str]) -> None:
    running = 0
    for call in calls:
        if call.startswith("begin "):
            running += 1
            assert running == 1, f"two restarts at once: {calls}"
        elif call.startswith("end "):
            running -= 1


def test_two_helpers_at_once_answer_each_request_once_and_never_restart_together(
    host: Host, device_cert: tuple[Path, str]
) -> None:
    cert, thumbprint = device_cert
    ids = [host.request(cert, thumbprint=thumbprint) for _ in range(3)]
    host.env["FAKE_IOTEDGE_SLEEP"] = "0.3"

    helpers = [host.spawn(), host.spawn()]
    outputs = [helper.communicate(timeout=30)[0] for helper in helpers]

    assert [helper.returncode for helper in helpers] == [0, 0], outputs
    log = "".join(outputs)
    for request_id in ids:
        assert log.count(f"answered {request_id}: ") == 1, log
        assert host.result(request_id)["status"] == "ok"
        assert host.result(request_id)["thumbprint"] == thumbprint
    calls = host.calls()
    assert_never_overlapping(calls)
    assert 1 <= len(begins(calls)) <= 2, calls


def test_a_request_written_during_a_restart_gets_a_restart_of_its_own(
    host: Host, device_cert: tuple[Path, str]
) -> None:
    cert, thumbprint = device_cert
    first = host.request(cert, thumbprint=thumbprint)
    host.env["FAKE_IOTEDGE_SLEEP"] = "0.4"
    helper = host.spawn()
    deadline = time.monotonic() + 10
    while not begins(host.calls()):
        assert time.monotonic() < deadline, "the first restart never began"
        time.sleep(0.01)

    second = host.request(cert, thumbprint=thumbprint)  # its files changed after the runtime began restarting
    output = helper.communicate(timeout=30)[0]

    assert helper.returncode == 0, output
    assert begins(host.calls()) == ["begin system restart", "begin system restart"]
    assert f"for 1 request(s): {first}" in output
    assert f"for 1 request(s): {second}" in output
    assert host.result(first)["status"] == host.result(second)["status"] == "ok"


def test_an_empty_folder_runs_nothing(host: Host) -> None:
    done = host.run()

    assert done.returncode == 0
    assert "done: 0 request(s) answered, 0 restart(s)" in done.stdout
    assert not host.log.exists()


def test_a_missing_folder_is_an_error(host: Host) -> None:
    done = host.run("--folder", str(host.folder / "absent"))

    assert done.returncode == 1
    assert "cannot open the lock file" in done.stdout
    assert "No such file or directory" in done.stdout


# -- the module's side of the protocol --------------------------------------------------------------------------------


@contextlib.contextmanager
def helper_loop(host: Host) -> Iterator[None]:
    """Run the helper again and again, as the path unit does when the folder changes (configure the fake first)."""
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            host.run()
            stop.wait(0.02)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.mark.parametrize("fail", [False, True], ids=["restart ok", "restart fails"])
def test_the_module_activator_gets_the_helpers_answer(host: Host, device_cert: tuple[Path, str], fail: bool) -> None:
    cert, thumbprint = device_cert
    if fail:
        host.env["FAKE_IOTEDGE_FAIL"] = "Error: aziot-edged.service failed"
    certificate = ResolvedCertificate(
        name="identity",
        role="device-identity",
        mode="vault-ca",
        vault_object=None,
        issuer_certificate=None,
        issuer_key=None,
        issuer_chain=None,
        key_type="ec-p256",
        subject="CN=device-1",
        dns_names=(),
        ip_addresses=(),
        validity_days=90,
        paths=CertPaths(cert=cert, key=cert.with_suffix(".key.pem")),
    )
    activator = RestartRequestActivator(host.folder, poll=timedelta(milliseconds=20))

    with helper_loop(host):
        result = asyncio.run(activator.activate(certificate, thumbprint=thumbprint, timeout=timedelta(seconds=20)))

    if fail:
        assert not result.ok
        assert result.message == "iotedge system restart exited with 1: Error: aziot-edged.service failed"
        assert result.thumbprint is None
    else:
        assert result.ok, result.message
        assert result.thumbprint == thumbprint
        assert result.message == "iotedge system restart: the runtime is back (aziot-edged Running)"
    assert len(begins(host.calls())) == 1
    assert [p.name for p in host.folder.iterdir()] == [".edgecert-activate.lock"]  # the module cleaned up


# -- the files installed on the host ----------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((HOST_DIR / name).read_text())
    return parser


def test_the_systemd_units_watch_the_request_folder_and_run_the_installed_helper() -> None:
    path_unit, service = unit("edgecert-activate.path"), unit("edgecert-activate.service")

    assert path_unit["Path"]["PathChanged"] == REQUEST_DIR
    assert path_unit["Path"]["Unit"] == "edgecert-activate.service"
    assert path_unit["Install"]["WantedBy"] == "multi-user.target"
    assert set(path_unit["Path"]) == {"PathChanged", "Unit"}  # no level trigger: the lock file would loop it
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].split() == [INSTALLED_HELPER]
    assert not service.has_section("Install")  # started by the path unit only
    environment = dict(item.split("=", 1) for item in service["Service"]["Environment"].split())
    assert environment == {"EDGECERT_REQUEST_DIR": REQUEST_DIR, "EDGECERT_ALLOWED_PREFIXES": "/var/aziot/"}
    readme = (HOST_DIR / "README.md").read_text()
    assert f"install -m 0755 contrib/host/edgecert-activate {INSTALLED_HELPER}" in readme
    assert "systemctl enable --now edgecert-activate.path" in readme


def test_the_request_folder_is_the_one_the_module_writes_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecert.module import settings_from_environment

    monkeypatch.delenv("EDGECERT_REQUEST_DIR", raising=False)
    monkeypatch.setenv("EDGECERT_CONNECTION_STRING", "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5")
    settings, _ = settings_from_environment()

    assert str(settings.request_dir) == REQUEST_DIR


def test_the_tmpfiles_entry_makes_the_folder_writable_by_the_module_uid_only() -> None:
    lines = [line.split() for line in (HOST_DIR / "edgecert.conf").read_text().splitlines()]
    entries = {fields[1]: fields for fields in lines if fields and not fields[0].startswith("#")}

    assert entries[REQUEST_DIR] == ["d", REQUEST_DIR, "2770", "root", "10001", "-"]
    assert entries["/run/edgecert"] == ["d", "/run/edgecert", "0755", "root", "root", "-"]


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    (tmp_path / "edgecert-activate.path").write_text((HOST_DIR / "edgecert-activate.path").read_text())
    service = (HOST_DIR / "edgecert-activate.service").read_text()
    assert f"ExecStart={INSTALLED_HELPER}\n" in service
    # verify checks that ExecStart exists: point it at the helper in the checkout, as installed it is elsewhere.
    (tmp_path / "edgecert-activate.service").write_text(service.replace(INSTALLED_HELPER, str(HELPER)))

    done = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            str(tmp_path / "edgecert-activate.path"),
            str(tmp_path / "edgecert-activate.service"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # unknown keys and bad values are only warnings


def test_the_helper_is_an_executable_python_36_script() -> None:
    source = HELPER.read_text()

    assert source.startswith("#!/usr/bin/python3 -I\n")
    assert HELPER.stat().st_mode & stat.S_IXUSR
    tree = ast.parse(source, feature_version=(3, 6))  # RHEL 8's python3; catches newer syntax
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert "__future__" not in imported  # `from __future__ import annotations` needs 3.7


def test_the_helper_passes_ruff_when_named_explicitly() -> None:
    # ruff only discovers *.py files; a file without the suffix is linted when it is named. ruff is a dev dependency.
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(HELPER)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
