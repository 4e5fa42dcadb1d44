"""Prometheus metrics of one agent, served as text on `:9600/metrics` (the IoT Edge convention).

Add the module's endpoint to the metrics-collector's `MetricsEndpointsCSV`
(`http://edgecert:9600/metrics`). Each agent has its own registry, so several agents (the sandbox)
can run in one process.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["STATES", "Metrics"]

#: The states a certificate is reported in (DESIGN.md, reported properties).
STATES = ("valid", "scheduled", "renewing", "backing-off", "failed", "expired", "rolled-back", "missing")


class Metrics:
    """The agent's series; names follow Prometheus conventions (seconds, timestamps, _total)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["certificate"]
        self.not_after = Gauge(
            "edgecert_certificate_not_after_timestamp_seconds", "notAfter of the installed certificate",
            labels, registry=self.registry,
        )  # fmt: skip
        self.not_before = Gauge(
            "edgecert_certificate_not_before_timestamp_seconds", "notBefore of the installed certificate",
            labels, registry=self.registry,
        )  # fmt: skip
        self.renew_after = Gauge(
            "edgecert_certificate_renew_after_timestamp_seconds", "when the policy makes renewal due",
            labels, registry=self.registry,
        )  # fmt: skip
        self.state = Gauge(
            "edgecert_certificate_state", "1 for the certificate's current state, 0 for the others",
            ["certificate", "state"], registry=self.registry,
        )  # fmt: skip
        self.renewals = Counter(
            "edgecert_renewals", "renewal attempts by outcome", ["certificate", "outcome"], registry=self.registry
        )
        self.requests = Counter(
            "edgecert_keyvault_requests", "Key Vault requests by operation and status (ok or error code)",
            ["operation", "status"], registry=self.registry,
        )  # fmt: skip
        self.throttled = Counter(
            "edgecert_keyvault_throttled_requests", "Key Vault requests answered 429", registry=self.registry
        )
        self.duration = Histogram(
            "edgecert_renewal_duration_seconds", "from the decision to renew to the stored, activated files",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=self.registry,
        )  # fmt: skip

    def certificate(
        self,
        name: str,
        *,
        not_before: datetime | None,
        not_after: datetime | None,
        renew_after: datetime | None,
        state: str,
    ) -> None:
        """Set a certificate's timestamps and state."""
        for gauge, value in (
            (self.not_before, not_before),
            (self.not_after, not_after),
            (self.renew_after, renew_after),
        ):
            if value is not None:
                gauge.labels(name).set(value.timestamp())
        for candidate in STATES:
            self.state.labels(name, candidate).set(1 if candidate == state else 0)

    def request(self, operation: str, status: str) -> None:
        """Count one Key Vault request."""
        self.requests.labels(operation, status).inc()
        if status == "issue.throttled":
            self.throttled.inc()

    def text(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def app(self) -> web.Application:
        """An aiohttp application serving `/metrics`."""

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=self.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app
