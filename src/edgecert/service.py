"""The agent: the long-running IoT Edge module that keeps the device's certificates renewed.

One asyncio loop. At start it repairs interrupted swaps (`recover()`), loads the last good
configuration and its own state, connects to the module twin and reads it. Then it sleeps until the
next event — a certificate's next attempt (from the schedule), a desired-properties patch, a direct
method, a reconnection, or shutdown — and handles it. It never polls busily: with nothing due it
sleeps until the earliest next attempt (at most an hour, to notice a changed clock).

Per certificate: decision -> window -> issue -> validate -> store -> activate -> verify -> report.
A failed verification restores `*.previous`, activates again and reports `rolled-back` with the
cause. Failures are isolated per certificate. Attempt counts, the pending activation and the last
good configuration survive restarts (the state file). Reported properties follow DESIGN.md's
schema 1 and are sent as small patches of what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from edgecert import __version__
from edgecert.adapters.activation import (
    ActivationResult,
    Activator,
    CommandActivator,
    NoActivation,
    RestartRequestActivator,
)
from edgecert.adapters.filestore import FileCertStore
from edgecert.adapters.keyvault import KeyVault, VaultEndpoint
from edgecert.adapters.statefile import AgentState, CertificateState, StateFile
from edgecert.config import (
    ActivationConfig,
    EdgecertConfig,
    ResolvedCertificate,
    merge_desired,
    parse_desired,
    resolve_certificates,
)
from edgecert.core.certinfo import CertFacts, KeyAndChain, certificate_facts, sha256_thumbprint
from edgecert.core.policy import Action, Decision, renewal_decision
from edgecert.core.schedule import Interval, NextAttempt, backoff_delay, first_attempt, next_attempt, stable_fraction
from edgecert.core.timefmt import iso
from edgecert.errors import ActivationError, ConfigError, EdgecertError, IssuanceError, StoreError
from edgecert.metrics import Metrics
from edgecert.ports import (
    ConnectionLost,
    DesiredPatch,
    Issuer,
    IssueRequest,
    MethodCall,
    Reconnected,
    TwinChannel,
    TwinEvent,
)
from edgecert.renewal import endpoint_of, expectations, issue_deadline, issuer_for, worth_an_attempt
from edgecert.serving import listen

__all__ = ["Agent", "AgentSettings"]

logger = logging.getLogger("edgecert.agent")

SCHEMA_VERSION = 1
MAX_SLEEP = timedelta(hours=1)
FETCH_INTERVAL = timedelta(hours=6)  # vault-fetch looks for a newer version this often
LAST_CHECK_EVERY = timedelta(hours=1)  # lastCheck alone is reported at most this often
STOP_GRACE = timedelta(seconds=5)  # a step in flight at SIGTERM may finish within this


@dataclass(frozen=True)
class AgentSettings:
    """What the module is told by its environment (not by the twin)."""

    device_id: str
    module_id: str
    state_file: Path
    request_dir: Path
    metrics_host: str = "0.0.0.0"  # noqa: S104 - inside the container, reached over the IoT Edge module network
    metrics_port: int | None = 9600
    #: Trust this CA file for the vault in addition to the configuration's (sandbox, private endpoints).
    vault_ca_file: Path | None = None


@dataclass
class _Runtime:
    """What the agent holds in memory for one configured certificate."""

    cert: ResolvedCertificate
    issuer: Issuer | None = None
    next_at: datetime | None = None
    window: Interval | None = None
    state: str = "scheduled"
    facts: CertFacts | None = None
    decision: Decision | None = None
    reason: str = ""
    retry_after: timedelta | None = None
    force: bool = False


@dataclass
class _Status:
    config: dict[str, Any] = field(default_factory=lambda: {"status": "applied", "desiredVersion": None, "errors": []})
    idle: str | None = "no desired properties yet"


class Agent:
    """The module: twin-driven, schedule-paced, one certificate failure never stops the others."""

    def __init__(
        self,
        settings: AgentSettings,
        twin: TwinChannel,
        *,
        store: FileCertStore | None = None,
        metrics: Metrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        make_vault: Callable[[VaultEndpoint, Metrics], KeyVault] | None = None,
        make_issuer: Callable[[ResolvedCertificate, KeyVault], Issuer] = issuer_for,
        make_activator: Callable[[ActivationConfig, ResolvedCertificate, Path], Activator] | None = None,
    ) -> None:
        self.settings = settings
        self.twin = twin
        self.now = now
        self.store = store or FileCertStore(now=now)
        self.metrics = metrics or Metrics()
        self.state_file = StateFile(settings.state_file)
        self.state = AgentState()
        self.config: EdgecertConfig | None = None
        self.desired: dict[str, Any] = {}
        self.status = _Status()
        self.runtimes: dict[str, _Runtime] = {}
        self.reported: dict[str, Any] = {}
        self._make_vault = make_vault or (lambda endpoint, metrics: KeyVault(endpoint, on_request=metrics.request))
        self._make_issuer = make_issuer
        self._make_activator = make_activator or _activator
        self._vault: KeyVault | None = None
        self._vault_endpoint: VaultEndpoint | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None
        self._last_check_reported: datetime | None = None
        self._twin_down_since: float | None = None
        self._retired: list[KeyVault] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; the store is consistent when this returns."""
        self.state = self.state_file.load()
        if self.state.desired:
            self._apply(self.state.desired, version=self.state.desired_version, persist=False)
        self._recover_all()
        if self.settings.metrics_port is not None:
            self._metrics_runner, self.metrics_port = await listen(
                self.metrics.app(), self.settings.metrics_host, self.settings.metrics_port, None
            )
        try:
            await self.twin.start(stop)
        except EdgecertError:
            if stop.is_set():
                await self._shutdown()
                return
            raise
        await self._refresh_from_twin()
        await self._finish_pending_activations(stop)
        try:
            await self._loop(stop)
        finally:
            await self._shutdown()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._close_retired()
            now = self.now()
            for name in [n for n, r in self.runtimes.items() if r.next_at is not None and r.next_at <= now]:
                if stop.is_set():
                    break
                await self._guarded(self._attempt(name), stop)
            await self._report()
            event = await self._next_event(stop, self._sleep_for())
            if event is not None:
                await self._guarded(self._handle(event), stop)

    async def _guarded(self, step: Any, stop: asyncio.Event) -> None:
        """Run a step; at shutdown let it finish within the grace period, else abandon it."""
        task = asyncio.ensure_future(step)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), STOP_GRACE.total_seconds())
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif task.exception() is not None:
                logger.error("step failed: %s", _describe(task.exception()))
        finally:
            stopping.cancel()

    async def _next_event(self, stop: asyncio.Event, timeout: float) -> TwinEvent | None:
        getting = asyncio.ensure_future(self.twin.events.get())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getting, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if getting in done:
            return getting.result()
        getting.cancel()
        return None

    def _sleep_for(self) -> float:
        now = self.now()
        upcoming = [r.next_at for r in self.runtimes.values() if r.next_at is not None]
        wake = min([*upcoming, now + MAX_SLEEP])
        return max(0.0, (wake - now).total_seconds())

    async def _close_retired(self) -> None:
        while self._retired:
            await self._retired.pop().close()

    async def _shutdown(self) -> None:
        self.state_file.save(self.state)
        await self._close_retired()
        with contextlib.suppress(Exception):
            await self.twin.close()
        if self._vault is not None:
            await self._vault.close()
            self._vault = None
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None

    # -- configuration ---------------------------------------------------------------------------

    async def _refresh_from_twin(self) -> None:
        try:
            desired = await self.twin.desired()
        except EdgecertError as exc:
            logger.warning("cannot read the twin: %s", _describe(exc))
            return
        self._on_desired(desired, full=True)
        self.reported = {}  # after a (re)connection, report everything again

    def _on_desired(self, patch: dict[str, Any], *, full: bool) -> None:
        version = patch.get("$version")
        self.desired = merge_desired({}, patch) if full else merge_desired(self.desired, patch)
        self._apply(self.desired, version=version if isinstance(version, int) else None, persist=True)

    def _apply(self, document: dict[str, Any], *, version: int | None, persist: bool) -> None:
        """Validate a desired document as a whole; keep the last good configuration when it is bad."""
        if not document:
            self.status.config = {"status": "applied", "desiredVersion": version, "errors": []}
            self.status.idle = "no desired properties yet"
            self._use(None)
            return
        try:
            config = parse_desired(document)
            resolved = resolve_certificates(
                config, device_id=self.settings.device_id, module_id=self.settings.module_id
            )
        except ConfigError as exc:
            self.status.config = {
                "status": "rejected",
                "desiredVersion": version,
                "errors": [p.report() for p in exc.problems],
            }
            logger.warning(
                "desired properties rejected (%d problems); the last good configuration stays", len(exc.problems)
            )
            return
        changed = config != self.config
        self.status.config = {"status": "applied", "desiredVersion": version, "errors": []}
        self.status.idle = config.idle_reason
        self._use(config, resolved)
        if persist:
            self.state.desired, self.state.desired_version = document, version
            self.state_file.save(self.state)
        if changed:
            logger.info("configuration applied (desired version %s, %d certificates)", version, len(resolved))

    def _use(self, config: EdgecertConfig | None, resolved: list[ResolvedCertificate] | None = None) -> None:
        self.config = config
        token = config.renewal.force_renew_token if config is not None else None
        fresh: dict[str, _Runtime] = {}
        for cert in resolved or []:
            runtime = self.runtimes.get(cert.name)
            if runtime is None or runtime.cert != cert:
                runtime = _Runtime(cert)
            cert_state = self.state.certificate(cert.name)
            if token is not None and cert_state.force_token != token:
                runtime.force = True  # forceRenewToken changed: re-issue in the device's next window
                cert_state.force_token = token
            fresh[cert.name] = runtime
        for gone in set(self.runtimes) - set(fresh):
            self.state.certificates.pop(gone, None)
        self.runtimes = fresh
        if config is not None and config.vault is not None:
            endpoint = endpoint_of(config)
            if self.settings.vault_ca_file is not None and endpoint.ca_file is None:
                endpoint = replace(endpoint, ca_file=self.settings.vault_ca_file)
            if endpoint != self._vault_endpoint:
                if self._vault is not None:
                    self._retired.append(self._vault)  # closed by the loop, which can await
                self._vault, self._vault_endpoint = None, endpoint
                for runtime in fresh.values():
                    runtime.issuer = None
        for name in fresh:
            self._plan(name)

    def _recover_all(self) -> None:
        for runtime in self.runtimes.values():
            try:
                report = self.store.recover(runtime.cert.paths)
            except EdgecertError as exc:
                logger.error("could not repair %s: %s", runtime.cert.name, exc.message)  # noqa: TRY400 - no traceback needed
                continue
            if report.action != "clean":
                logger.warning("repaired an interrupted swap of %s: %s", runtime.cert.name, report.action)

    # -- planning --------------------------------------------------------------------------------

    def _plan(self, name: str) -> None:
        """Decide and schedule one certificate (no I/O beyond reading its files)."""
        runtime = self.runtimes[name]
        config = self.config
        if config is None:
            return
        now = self.now()
        cert_state = self.state.certificate(name)
        try:
            installed = self.store.load(runtime.cert.paths)
        except EdgecertError as exc:
            runtime.facts, runtime.decision = None, None
            runtime.state, runtime.reason = "failed", f"the installed files are unusable ({exc.code}): renewing"
            runtime.next_at = now if not config.renewal.paused else None
            self._metric(runtime)
            return
        if installed is None:
            runtime.facts, runtime.decision = None, None
            runtime.state, runtime.reason = "missing", "no certificate is installed yet: renewing"
            runtime.next_at = self._retry_or_now(runtime, cert_state, now)
            self._metric(runtime)
            return
        facts = certificate_facts(installed.leaf)
        policy, windows, retry = config.renewal.policy(), config.renewal.windows(), config.renewal.retry.to_core()
        decision = renewal_decision(facts, policy, now=now, desired=runtime.cert.desired_shape())
        if runtime.force and decision.action is Action.WAIT:
            decision = Decision(Action.REISSUE, now, "forceRenewToken changed", decision.thresholds)
        plan = first_attempt(decision.thresholds, policy, windows, device_id=self.settings.device_id, cert_name=name)
        upcoming: NextAttempt = next_attempt(
            decision, plan, windows, retry, device_id=self.settings.device_id, cert_name=name, now=now,
            failures=cert_state.failures, failures_in_window=cert_state.failures_in_window,
            retry_after=runtime.retry_after,
        )  # fmt: skip
        runtime.facts, runtime.decision, runtime.window = facts, decision, upcoming.window
        runtime.next_at = None if config.renewal.paused else upcoming.at
        if runtime.cert.mode == "vault-fetch" and runtime.next_at is not None:
            runtime.next_at = min(runtime.next_at, now + FETCH_INTERVAL)
        runtime.state = self._state_of(decision, cert_state)
        runtime.reason = decision.reason if cert_state.failures == 0 else upcoming.reason
        self._metric(runtime)

    def _retry_or_now(self, runtime: _Runtime, cert_state: CertificateState, now: datetime) -> datetime | None:
        if self.config is None or self.config.renewal.paused:
            return None
        if cert_state.failures == 0:
            return now
        retry = self.config.renewal.retry.to_core()
        jitter = stable_fraction("backoff", self.settings.device_id, runtime.cert.name, str(cert_state.failures))
        return now + backoff_delay(cert_state.failures, retry, jitter=jitter, retry_after=runtime.retry_after)

    @staticmethod
    def _state_of(decision: Decision, cert_state: CertificateState) -> str:
        if decision.action is Action.RENEW_EXPIRED:
            return "expired"
        if cert_state.rolled_back is not None:
            return "rolled-back"
        if cert_state.failures > 0:
            return "backing-off" if cert_state.last_error_retryable else "failed"
        if decision.action is Action.WAIT:
            return "valid"
        return "scheduled"

    def _metric(self, runtime: _Runtime) -> None:
        facts, decision = runtime.facts, runtime.decision
        self.metrics.certificate(
            runtime.cert.name,
            not_before=facts.not_before if facts else None,
            not_after=facts.not_after if facts else None,
            renew_after=decision.thresholds.renew_after if decision else None,
            state=runtime.state,
        )

    # -- renewing --------------------------------------------------------------------------------

    async def _attempt(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """One renewal of one certificate, end to end; every failure becomes the certificate's state."""
        runtime = self.runtimes.get(name)
        if runtime is None or self.config is None:
            return {"result": "unknown"}
        cert, cert_state = runtime.cert, self.state.certificate(name)
        started = time.monotonic()
        runtime.state = "renewing"
        self._metric(runtime)
        await self._report()
        try:
            installed = self._installed(cert)
            issued = await self._issuer(runtime).issue(
                IssueRequest(cert, self.settings.device_id, installed, issue_deadline(runtime.decision, self.now()))
            )
            if issued is None:
                outcome = "up-to-date"
                self._succeeded(cert_state, renewed=False)
            else:
                outcome = await self._install_and_activate(runtime, issued, installed)
        except EdgecertError as exc:
            outcome = "throttled" if exc.code == "issue.throttled" else "failed"
            self._failed(runtime, cert_state, exc)
        self.metrics.renewals.labels(name, outcome).inc()
        if outcome in ("renewed", "rolled-back"):
            self.metrics.duration.observe(time.monotonic() - started)
        runtime.force = False if outcome == "renewed" else runtime.force
        self.state_file.save(self.state)
        self._plan(name)
        logger.info("certificate %s: %s (%s)", name, outcome, runtime.state)
        return {"result": outcome, "state": runtime.state}

    def _installed(self, cert: ResolvedCertificate) -> KeyAndChain | None:
        try:
            return self.store.load(cert.paths)
        except EdgecertError:
            return None  # unusable files are replaced

    def _issuer(self, runtime: _Runtime) -> Issuer:
        if self._vault is None:
            if self._vault_endpoint is None:
                raise IssuanceError("no vault is configured", remedy="add vault.url to the desired properties")
            self._vault = self._make_vault(self._vault_endpoint, self.metrics)
        if runtime.issuer is None:
            runtime.issuer = self._make_issuer(runtime.cert, self._vault)
        return runtime.issuer

    async def _install_and_activate(self, runtime: _Runtime, issued: Any, installed: KeyAndChain | None) -> str:
        cert, cert_state = runtime.cert, self.state.certificate(runtime.cert.name)
        new = sha256_thumbprint(issued.bundle.leaf)
        old = sha256_thumbprint(installed.leaf) if installed is not None else None
        cert_state.pending_activation = {"thumbprint": new, "previous": old or "", "since": iso(self.now())}
        self.state_file.save(self.state)
        self.store.install(cert.paths, issued.bundle, expectations(cert, issued))
        result = await self._activate(cert, new)
        if self._verified(result, new):
            cert_state.pending_activation = None
            self._succeeded(cert_state, renewed=True)
            return "renewed"
        await self._roll_back(runtime, cause=result.message, thumbprint=new)
        return "rolled-back"

    async def _activate(self, cert: ResolvedCertificate, thumbprint: str) -> ActivationResult:
        assert self.config is not None  # noqa: S101 - only called with a configuration
        activator = self._make_activator(self.config.activation, cert, self.settings.request_dir)
        return await activator.activate(cert, thumbprint=thumbprint, timeout=self.config.activation.verify_timeout)

    @staticmethod
    def _verified(result: ActivationResult, thumbprint: str) -> bool:
        return result.ok and result.thumbprint in (None, thumbprint)

    async def _roll_back(self, runtime: _Runtime, *, cause: str, thumbprint: str) -> None:
        cert, cert_state = runtime.cert, self.state.certificate(runtime.cert.name)
        try:
            self.store.rollback(cert.paths)
            restored = self._installed(cert)
            if restored is not None:
                await self._activate(cert, sha256_thumbprint(restored.leaf))
        except StoreError as exc:
            cause = f"{cause}; and the previous files could not be restored: {exc.message}"
        cert_state.pending_activation = None
        cert_state.rolled_back = {"cause": cause, "at": iso(self.now()), "thumbprint": thumbprint}
        error = ActivationError(
            f"the runtime did not come back with the new certificate ({cause}); the previous one is back in place",
            certificate=cert.name,
        )
        self._failed(runtime, cert_state, error)
        logger.warning("certificate %s rolled back: %s", cert.name, cause)

    def _succeeded(self, cert_state: CertificateState, *, renewed: bool) -> None:
        cert_state.failures = cert_state.failures_in_window = 0
        cert_state.window_start = cert_state.last_error = None
        if renewed:
            cert_state.last_renewal = iso(self.now())
            cert_state.rolled_back = None

    def _failed(self, runtime: _Runtime, cert_state: CertificateState, error: EdgecertError) -> None:
        window_start = iso(runtime.window.start) if runtime.window else None
        if window_start is not None and window_start == cert_state.window_start:
            cert_state.failures_in_window += 1
        else:
            cert_state.window_start, cert_state.failures_in_window = window_start, 1
        cert_state.failures += 1
        cert_state.last_error, cert_state.last_error_retryable = error.report(), error.retryable
        runtime.retry_after = error.retry_after if isinstance(error, IssuanceError) else None
        logger.warning("certificate %s failed [%s]: %s", runtime.cert.name, error.code, error.message)

    async def _finish_pending_activations(self, stop: asyncio.Event) -> None:
        """A swap whose activation was not verified before a restart is verified (or rolled back) now."""
        for name, runtime in list(self.runtimes.items()):
            pending = self.state.certificate(name).pending_activation
            if not pending or stop.is_set():
                continue
            installed = self._installed(runtime.cert)
            live = sha256_thumbprint(installed.leaf) if installed else None
            if live != pending.get("thumbprint"):
                self.state.certificate(name).pending_activation = None  # the swap never happened
                continue
            result = await self._activate(runtime.cert, live or "")
            if self._verified(result, live or ""):
                self.state.certificate(name).pending_activation = None
                self._succeeded(self.state.certificate(name), renewed=True)
            else:
                await self._roll_back(runtime, cause=result.message, thumbprint=live or "")
            self.state_file.save(self.state)
            self._plan(name)

    # -- events ----------------------------------------------------------------------------------

    async def _handle(self, event: TwinEvent) -> None:
        if isinstance(event, DesiredPatch):
            self._on_desired(event.patch, full=False)
        elif isinstance(event, Reconnected):
            await self._refresh_from_twin()
        elif isinstance(event, ConnectionLost):
            logger.warning("the module client stopped reconnecting (%s): making a new one", event.reason)
            await self.twin.restart()
        elif isinstance(event, MethodCall):
            status, payload = await self._method(event)
            try:
                await self.twin.respond(event, status, payload)
            except EdgecertError as exc:
                logger.warning("could not answer method %s: %s", event.name, _describe(exc))

    async def _method(self, call: MethodCall) -> tuple[int, Any]:
        payload = call.payload if call.payload is not None else {}
        if not isinstance(payload, dict):
            return 400, {"error": "the payload must be a JSON object"}
        if call.name == "getStatus":
            return 200, self._document()
        if call.name == "renewNow":
            return await self._renew_now(payload)
        if call.name == "rollback":
            return await self._rollback_method(payload)
        return 404, {"error": f"unknown method {call.name!r}; methods: renewNow, getStatus, rollback"}

    async def _renew_now(self, payload: dict[str, Any]) -> tuple[int, Any]:
        unknown = set(payload) - {"certificate", "force"}
        if unknown:
            return 400, {"error": f"unknown fields {sorted(unknown)}; renewNow takes certificate and force"}
        name, force = payload.get("certificate"), payload.get("force", False)
        if name is not None and not isinstance(name, str):
            return 400, {"error": "certificate must be a string"}
        if not isinstance(force, bool):
            return 400, {"error": "force must be true or false"}
        if name is not None and name not in self.runtimes:
            return 404, {"error": f"no certificate named {name!r}; configured: {sorted(self.runtimes)}"}
        results = {}
        for target in [name] if name else list(self.runtimes):
            runtime = self.runtimes[target]
            if worth_an_attempt(runtime.decision, runtime.cert, force=force):
                results[target] = await self._attempt(target, force=force)
            else:
                results[target] = {"result": "not-due", "state": runtime.state, "reason": runtime.reason}
        await self._report()
        return 200, {"results": results}

    async def _rollback_method(self, payload: dict[str, Any]) -> tuple[int, Any]:
        name = payload.get("certificate")
        if not isinstance(name, str):
            return 400, {"error": 'rollback needs {"certificate": "<name>"}'}
        runtime = self.runtimes.get(name)
        if runtime is None:
            return 404, {"error": f"no certificate named {name!r}; configured: {sorted(self.runtimes)}"}
        if self.store.load_previous(runtime.cert.paths) is None:
            return 409, {"error": f"{name} has no previous certificate to roll back to"}
        live = self._installed(runtime.cert)
        await self._roll_back(
            runtime,
            cause="rollback requested by a direct method",
            thumbprint=sha256_thumbprint(live.leaf) if live else "",
        )
        self.state_file.save(self.state)
        self._plan(name)
        await self._report()
        return 200, {"certificate": name, "state": runtime.state, "thumbprint": _thumb(runtime)}

    # -- reporting -------------------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        """The whole reported document, schema 1."""
        certificates = {}
        for name, runtime in self.runtimes.items():
            cert_state = self.state.certificate(name)
            facts, decision = runtime.facts, runtime.decision
            error = cert_state.last_error
            certificates[name] = {
                "state": runtime.state,
                "thumbprint": facts.thumbprint_sha256 if facts else None,
                "serial": facts.serial if facts else None,
                "notBefore": iso(facts.not_before) if facts else None,
                "notAfter": iso(facts.not_after) if facts else None,
                "renewAfter": iso(decision.thresholds.renew_after) if decision else None,
                "nextAttempt": iso(runtime.next_at) if runtime.next_at else None,
                "attempts": cert_state.failures,
                "lastRenewal": cert_state.last_renewal,
                "lastError": error,
                "rolledBack": cert_state.rolled_back,
            }
        windows = [r for r in self.runtimes.values() if r.window is not None and r.next_at is not None]
        window = None
        if windows:
            first = min(windows, key=lambda r: r.next_at or self.now())
            assert first.window is not None  # noqa: S101 - filtered above
            source = (
                "twin"
                if self.config and self.config.renewal.window
                else ("suggested" if self.config and self.config.renewal.suggested_window else "auto")
            )
            window = {"start": iso(first.window.start), "end": iso(first.window.end), "source": source}
        return {
            "schemaVersion": SCHEMA_VERSION,
            "agentVersion": __version__,
            "config": {**self.status.config, "idle": self.status.idle},
            "window": window,
            "certificates": certificates,
            "lastCheck": iso(self.now()),
        }

    async def _report(self) -> None:
        document = self._document()
        patch = _diff(self.reported, document)
        check = self.now()
        if (
            set(patch) <= {"lastCheck"}
            and self._last_check_reported
            and check - self._last_check_reported < LAST_CHECK_EVERY
        ):
            return
        try:
            await self.twin.report(patch)
        except EdgecertError as exc:  # the next report sends what this one could not
            logger.warning("cannot report to the twin: %s", _describe(exc))
            await self._maybe_restart_twin()
            return
        self._twin_down_since = None
        self.reported = document
        self._last_check_reported = check

    async def _maybe_restart_twin(self) -> None:
        """When the SDK stops reconnecting (refused credentials, stale trust bundle), make a new client."""
        if self.twin.connected:
            return
        now = time.monotonic()
        if self._twin_down_since is None:
            self._twin_down_since = now
        elif now - self._twin_down_since > 60:
            logger.warning("the module client has been disconnected for a minute: making a new one")
            self._twin_down_since = None
            with contextlib.suppress(Exception):
                await self.twin.restart()


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `old` into `new` (None removes a member)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = _diff(before, value)
            if inner:
                patch[key] = inner
        elif value != before or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def _activator(config: ActivationConfig, cert: ResolvedCertificate, request_dir: Path) -> Activator:
    if cert.role == "custom" or config.mode == "none":
        return NoActivation()
    if config.mode == "command":
        return CommandActivator(config.command or ())
    return RestartRequestActivator(request_dir)


def _thumb(runtime: _Runtime) -> str | None:
    return runtime.facts.thumbprint_sha256 if runtime.facts else None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "?"
    if isinstance(exc, EdgecertError):
        return f"[{exc.code}] {exc.message}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
