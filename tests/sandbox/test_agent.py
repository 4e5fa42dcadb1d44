"""The agent end to end: real agents, real SDK clients, the Key Vault and IoT Hub emulators."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgecert.adapters.filestore import FileCertStore
from edgecert.core.certinfo import certificate_facts, key_matches_certificate
from edgecert.logs import configure_logging
from edgecert.sandbox.fleet import MODULE, Sandbox, SandboxDevice
from edgecert.sandbox.servers import LoopThread
from edgecert.service import Agent

LOG = io.StringIO()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    configure_logging(LOG)
    logging.getLogger("edgecert").setLevel(logging.DEBUG)
    running = Sandbox(tmp_path_factory.mktemp("sandbox"), lifetime=timedelta(seconds=60)).start()
    try:
        yield running
    finally:
        running.stop()


class Running:
    """An agent and its host helper on an event loop of their own, so the test can watch the hub."""

    def __init__(self, sandbox: Sandbox, device: SandboxDevice, **agent: Any) -> None:
        self.sandbox, self.device = sandbox, device
        self.thread = LoopThread(f"agent-{device.device_id}")
        self.stop = asyncio.Event()
        self.agent: Agent = sandbox.agent(device, **agent)
        self.future = asyncio.run_coroutine_threadsafe(self._main(), self.thread.loop)

    async def _main(self) -> None:
        await asyncio.gather(self.agent.run(self.stop), self.device.helper.run(self.stop))

    def close(self) -> None:
        self.thread.loop.call_soon_threadsafe(self.stop.set)
        try:
            self.future.result(timeout=20)
        finally:
            self.thread.stop()

    def reported(self) -> dict[str, Any]:
        return self.sandbox.reported(self.device)

    def identity(self) -> dict[str, Any]:
        return dict((self.reported().get("certificates") or {}).get("identity") or {})

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reported = self.reported()
            if predicate(reported):
                return reported
            if self.future.done():
                self.future.result()  # raise what ended the agent
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {json.dumps(self.reported())[:1500]}")

    def method(self, name: str, payload: Any = None) -> Any:
        return self.sandbox.hub.invoke_method(self.device.device_id, MODULE, name, payload, timeout=60)


@pytest.fixture
def running(sandbox: Sandbox) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(device: SandboxDevice, **agent: Any) -> Running:
        started.append(Running(sandbox, device, **agent))
        return started[-1]

    yield start
    for each in started:
        each.close()


def identity_of(reported: dict[str, Any]) -> dict[str, Any]:
    return dict((reported.get("certificates") or {}).get("identity") or {})


def renewed(device: SandboxDevice) -> Callable[[dict[str, Any]], bool]:
    def check(reported: dict[str, Any]) -> bool:
        identity = identity_of(reported)
        return identity.get("state") == "valid" and identity.get("thumbprint") not in (None, device.initial_thumbprint)

    return check


def files_match(device: SandboxDevice) -> str:
    installed = FileCertStore(now=lambda: datetime.now(UTC)).load(device.paths)
    assert installed is not None
    assert key_matches_certificate(installed.key, installed.leaf)
    return certificate_facts(installed.leaf).thumbprint_sha256


@pytest.mark.parametrize("mode", ["vault-ca", "vault-managed", "vault-fetch"])
def test_desired_config_renews_and_reports_valid_with_the_new_certificate(
    sandbox: Sandbox, running: Callable[..., Running], mode: str
) -> None:
    device = sandbox.add_device(f"renew-{mode}", mode)
    if mode == "vault-fetch":
        sandbox.vault.renew("fleet", f"{device.device_id}-identity")  # Key Vault's AutoRenew made a newer version
    agent = running(device)
    reported = agent.wait(renewed(device), what="the renewal")
    identity = identity_of(reported)
    assert identity["thumbprint"] == files_match(device)
    assert identity["notAfter"] > datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert reported["config"]["status"] == "applied"
    assert reported["schemaVersion"] == 1
    assert identity["lastRenewal"] is not None
    assert identity["attempts"] == 0
    assert device.helper.restarts >= 1  # the runtime was asked to restart and came back authenticated


def _window_at(offset: timedelta) -> dict[str, Any]:
    start = (datetime.now(UTC) + offset).replace(second=0, microsecond=0)
    return {"start": f"{start:%H:%M}", "length": "1h", "timezone": "UTC"}


def test_outside_the_window_nothing_is_attempted_until_it_opens(
    sandbox: Sandbox, running: Callable[..., Running]
) -> None:
    # renewAt 80 % of 30 days is reached (26 days old) but urgency (95 %) is days away; the window opens in 3 h
    device = sandbox.add_device("windowed", "vault-ca", renewal={"window": _window_at(timedelta(hours=3))},
                                first=(timedelta(days=26), timedelta(days=30)), validity_days=30)  # fmt: skip
    skew = [timedelta(0)]
    agent = running(device, now=lambda: datetime.now(UTC) + skew[0])
    reported = agent.wait(lambda r: identity_of(r).get("state") == "scheduled", what="the plan")
    next_attempt = datetime.strptime(identity_of(reported)["nextAttempt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert next_attempt > datetime.now(UTC) + timedelta(hours=2, minutes=58)
    assert reported["window"]["source"] == "twin"
    time.sleep(3)
    requests = [e for e in sandbox.vault.log.snapshot()["requests"] if e["caller"] == device.principal.object_id]
    assert requests == [], "a renewal was attempted outside the window"
    skew[0] = next_attempt - datetime.now(UTC) + timedelta(seconds=5)  # the clock reaches the window
    agent.method("getStatus")  # any event wakes the agent, which then sees the new time
    agent.wait(renewed(device), what="the renewal inside the window")


def test_past_urgent_at_the_window_is_ignored(sandbox: Sandbox, running: Callable[..., Running]) -> None:
    device = sandbox.add_device("urgent", "vault-ca", renewal={"window": _window_at(timedelta(hours=3))},
                                first=(timedelta(days=29), timedelta(days=30)), validity_days=30)  # fmt: skip
    agent = running(device)
    agent.wait(renewed(device), timeout=30, what="an urgent renewal outside the window")


def test_an_invalid_desired_patch_is_rejected_and_the_last_good_config_keeps_working(
    sandbox: Sandbox, running: Callable[..., Running]
) -> None:
    device = sandbox.add_device("bad-patch", "vault-ca", first=(timedelta(days=1), timedelta(days=30)))
    agent = running(device)
    agent.wait(lambda r: identity_of(r).get("state") == "valid", what="the first plan")
    sandbox.hub.patch_desired(device.device_id, MODULE, {"renewal": {"renewAt": "80", "window": {"start": "25:00"}}})
    reported = agent.wait(lambda r: r["config"]["status"] == "rejected", what="the rejection")
    paths = {e["path"] for e in reported["config"]["errors"]}
    assert "renewal.renewAt" in paths
    assert all(e["fix"] for e in reported["config"]["errors"])
    answer = agent.method("renewNow", {"force": True})
    assert answer.status == 200, answer
    assert answer.payload["results"]["identity"]["result"] == "renewed"
    agent.wait(renewed(device), what="a renewal under the last good configuration")
    sandbox.hub.patch_desired(device.device_id, MODULE, {"renewal": {"renewAt": "80%", "window": None}})
    agent.wait(lambda r: r["config"]["status"] == "applied", what="the fixed configuration")


def test_direct_methods(sandbox: Sandbox, running: Callable[..., Running]) -> None:
    device = sandbox.add_device("methods", "vault-ca", first=(timedelta(days=1), timedelta(days=30)))
    agent = running(device)
    agent.wait(lambda r: identity_of(r).get("state") == "valid", what="the first plan")
    status = agent.method("getStatus")
    assert status.status == 200
    assert status.payload["certificates"]["identity"]["thumbprint"] == device.initial_thumbprint
    assert agent.method("renewNow", {"certificate": "nope"}).status == 404
    assert agent.method("renewNow", {"force": "yes"}).status == 400
    assert agent.method("renewNow", [1, 2]).status == 400
    assert agent.method("rollback", {}).status == 400
    assert agent.method("rollback", {"certificate": "identity"}).status == 409  # nothing to roll back to yet
    assert agent.method("doSomething").status == 404
    not_due = agent.method("renewNow", {"certificate": "identity"})
    assert not_due.payload["results"]["identity"]["result"] == "not-due"
    renewed_now = agent.method("renewNow", {"certificate": "identity", "force": True})
    assert renewed_now.status == 200
    assert renewed_now.payload["results"]["identity"]["result"] == "renewed"
    new = agent.wait(renewed(device), what="the forced renewal")
    new_thumbprint = identity_of(new)["thumbprint"]
    rolled = agent.method("rollback", {"certificate": "identity"})
    assert rolled.status == 200, rolled
    assert files_match(device) == device.initial_thumbprint
    reported = agent.wait(lambda r: identity_of(r).get("state") == "rolled-back", what="the rollback report")
    assert identity_of(reported)["thumbprint"] == device.initial_thumbprint
    assert identity_of(reported)["rolledBack"]["thumbprint"] == new_thumbprint


def test_a_certificate_the_hub_refuses_is_rolled_back(sandbox: Sandbox, running: Callable[..., Running]) -> None:
    device = sandbox.add_device("refused", "vault-ca")
    device.helper.fail_restarts = True
    agent = running(device)
    reported = agent.wait(lambda r: identity_of(r).get("state") == "rolled-back", what="the rollback")
    identity = identity_of(reported)
    assert "restart failed" in identity["rolledBack"]["cause"]
    assert identity["lastError"]["code"] == "activation.failed"
    assert files_match(device) == device.initial_thumbprint
    assert device.helper.restarts >= 2  # the new certificate, then the restored one


def test_metrics_expose_the_certificate(sandbox: Sandbox, running: Callable[..., Running]) -> None:
    device = sandbox.add_device("metered", "vault-ca")
    agent = running(device, metrics_port=0)
    reported = agent.wait(renewed(device), what="the renewal")
    port = agent.agent.metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    not_after = datetime.strptime(identity_of(reported)["notAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    def value(name: str, **labels: str) -> float:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        found = re.search(rf"^{name}\{{{re.escape(selector)}\}} (\S+)$", text, re.MULTILINE)
        assert found, f"{name}{{{selector}}} is missing"
        return float(found.group(1))

    assert value("edgecert_certificate_not_after_timestamp_seconds", certificate="identity") == not_after.timestamp()
    assert value("edgecert_certificate_state", certificate="identity", state="valid") == 1
    assert value("edgecert_certificate_state", certificate="identity", state="failed") == 0
    assert value("edgecert_renewals_total", certificate="identity", outcome="renewed") == 1
    assert value("edgecert_keyvault_requests_total", operation="keys.sign with", status="ok") >= 1
    assert "edgecert_renewal_duration_seconds_bucket" in text
    assert "edgecert_keyvault_throttled_requests_total 0.0" in text


# paho-mqtt 1.6.1 (the SDK's transport) leaks its wake-up socket pair on every reconnect (client.py:1795)
@pytest.mark.filterwarnings(r"ignore:unclosed <socket\.socket .*laddr=\('127\.0\.0\.1':ResourceWarning")
def test_the_agent_survives_a_dropped_connection_and_a_hub_restart(
    sandbox: Sandbox, running: Callable[..., Running]
) -> None:
    device = sandbox.add_device("dropped", "vault-ca", first=(timedelta(days=1), timedelta(days=30)))
    agent = running(device, retry_interval=timedelta(seconds=1))
    agent.wait(lambda r: identity_of(r).get("state") == "valid", what="the first report")
    sandbox.hub.drop(device.device_id, MODULE)
    sandbox.hub.patch_desired(device.device_id, MODULE, {"renewal": {"paused": True}})
    reported = agent.wait(lambda r: r["config"].get("idle") == "renewal.paused is true", what="the re-read twin")
    assert reported["config"]["status"] == "applied"
    sandbox.hub.patch_desired(device.device_id, MODULE, {"renewal": {"paused": False}})
    agent.wait(lambda r: r["config"].get("idle") is None, what="the next patch after the reconnect")
    # the hub restarts: every connection cut, nobody let in for 3 s; the twin changes meanwhile
    reported_before = sandbox.hub.twin(device.device_id, MODULE)["reported"]["$version"]
    sandbox.hub.restart(outage=3.0)
    sandbox.hub.patch_desired(device.device_id, MODULE, {"renewal": {"spread": "5%"}})
    reported = agent.wait(
        lambda r: r["config"]["desiredVersion"] == sandbox.hub.twin(device.device_id, MODULE)["desired"]["$version"],
        what="the twin re-read after the hub restarted",
    )
    assert reported["$version"] > reported_before  # and it reported again


def test_no_secret_reaches_logs_or_the_twin(sandbox: Sandbox) -> None:
    """Runs last in this module: scans everything the agents logged and reported."""
    texts = [LOG.getvalue()]
    texts += [json.dumps(sandbox.hub.twin(d.device_id, MODULE)["reported"]) for d in sandbox.devices]
    keys = []
    for device in sandbox.devices:
        if device.paths.key.exists():
            body = "".join(device.paths.key.read_text().splitlines()[1:-1])
            keys += [body[i : i + 24] for i in range(0, len(body) - 24, 24)]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert "SharedAccessSignature" not in text
        assert "sig=" not in text
        assert not re.search(r"eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}", text), "a JWT reached the output"
        for fragment in keys:
            assert fragment not in text, "a piece of a private key reached the output"
    assert len(texts[0]) > 1000  # the agents did log: the scan looked at something
