"""Key Vault through the device's managed identity, on the async Azure SDKs (aiohttp transport).

Only this module imports `azure.keyvault`. It fetches and translates; it makes no decisions.

Retries are ours, not the SDK's. The SDK pipeline's RetryPolicy (reference §3: up to 3 retries per
status, 0.8 s x 2^n backoff, POSTs retried only on 500/503/504 or when a Retry-After came) is set
to `retry_total=0`, because it knows neither our deadline (the schedule's urgency point) nor the
fleet-wide backoff floor, and two stacked layers would multiply the attempts a throttled vault sees.
One tenacity loop per Key Vault request retries only errors marked `retryable` (429, 5xx, timeouts,
dropped connections), with exponential backoff and full jitter above a floor, never sooner than a
`Retry-After` the vault sent (plus up to one floor of jitter, so a throttled fleet does not return in
one instant), bounded by attempts, by total time and by the deadline.

The sandbox CA (or the CA of a TLS-inspecting proxy) is trusted through `connection_verify=<caFile>`;
verification is never turned off.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.identity.aio import ManagedIdentityCredential
from azure.keyvault.certificates.aio import CertificateClient
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto import SignatureAlgorithm
from azure.keyvault.keys.crypto.aio import CryptographyClient
from azure.keyvault.secrets.aio import SecretClient
from cryptography import x509
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay

from edgecert.adapters.keyvault_errors import Call, translate
from edgecert.errors import EdgecertError, IssuanceError

__all__ = ["KeyVault", "PendingOperation", "RequestRetry", "SecretValue", "VaultCertificate", "VaultEndpoint"]

SCOPE = "https://vault.azure.net/.default"
_T = TypeVar("_T")


@dataclass(frozen=True)
class VaultEndpoint:
    """Where the vault is and how to reach it."""

    url: str
    client_id: str | None = None
    ca_file: Path | None = None
    #: Only for a vault that is not under vault.azure.net (the sandbox): skip the SDK's check that the
    #: challenge's resource matches the vault's domain.
    verify_challenge_resource: bool = True


@dataclass(frozen=True)
class RequestRetry:
    """Retry bounds for one Key Vault request."""

    attempts: int = 6
    total: timedelta = timedelta(minutes=2)
    floor: timedelta = timedelta(milliseconds=500)
    ceiling: timedelta = timedelta(seconds=30)
    timeout: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class VaultCertificate:
    """One certificate version as Key Vault describes it."""

    name: str
    version: str
    cer: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The DER `cer` parsed."""
        return x509.load_der_x509_certificate(self.cer)


@dataclass(frozen=True)
class SecretValue:
    """A secret version's value and content type (never logged)."""

    name: str
    version: str
    value: str = field(repr=False)
    content_type: str | None


@dataclass(frozen=True)
class PendingOperation:
    """A certificate operation's status."""

    status: str
    status_details: str | None
    error_code: str | None
    error_message: str | None
    #: The PKCS#10 request of the operation (DER): its public key pins the version it produces.
    csr: bytes | None = None


class KeyVault:
    """The async clients of one vault, with our retry loop and error translation around every request."""

    def __init__(
        self,
        endpoint: VaultEndpoint,
        *,
        retry: RequestRetry | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        #: Called after every request with the operation and "ok" or the error code (metrics).
        self.on_request = on_request
        self.retry = retry or RequestRetry()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._sleep = sleep
        self._credential = (
            ManagedIdentityCredential(client_id=endpoint.client_id)
            if endpoint.client_id
            else (ManagedIdentityCredential())
        )
        self._options: dict[str, Any] = {
            "connection_verify": str(endpoint.ca_file) if endpoint.ca_file else True,
            "verify_challenge_resource": endpoint.verify_challenge_resource,
            "retry_total": 0,  # we own retries: see the module docstring
            "connection_timeout": 10,
            "read_timeout": self.retry.timeout.total_seconds(),
        }
        self._certificates = CertificateClient(endpoint.url, self._credential, **self._options)
        self._secrets = SecretClient(endpoint.url, self._credential, **self._options)
        self._keys = KeyClient(endpoint.url, self._credential, **self._options)
        self._crypto: dict[str, CryptographyClient] = {}
        self._recent: deque[float] = deque()
        #: Requests sent, by operation (attempts included), for benchmarks and reports.
        self.sent: dict[str, int] = {}
        #: Throttled answers received.
        self.throttled = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every client and the credential."""
        for crypto in self._crypto.values():
            await crypto.close()
        await self._certificates.close()
        await self._secrets.close()
        await self._keys.close()
        await self._credential.close()

    # -- identity --------------------------------------------------------------------------------

    async def caller(self) -> dict[str, Any]:
        """The claims of the identity's token for Key Vault (`oid` is the object id roles name)."""
        call = Call("get a token", "certificates", "-", self.endpoint.url)
        token = await self._once(call, lambda: self._credential.get_token(SCOPE))
        payload = token.token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return claims

    # -- certificates ----------------------------------------------------------------------------

    async def certificate(self, name: str, version: str | None = None, *, deadline: datetime | None = None,
                          role_hint: Mapping[str, str] | None = None) -> VaultCertificate:  # fmt: skip
        """A certificate version (the latest without `version`)."""
        call = Call("get", "certificates", name, self.endpoint.url, role_hint)
        if version:
            found = await self._call(call, lambda: self._certificates.get_certificate_version(name, version), deadline)
        else:
            found = await self._call(call, lambda: self._certificates.get_certificate(name), deadline)
        properties = found.properties
        if properties is None:
            raise IssuanceError(f"certificate '{name}': the vault's answer has no properties")
        return VaultCertificate(name, str(properties.version), bytes(found.cer or b""))

    async def create_certificate(self, name: str, policy: dict[str, Any], *, deadline: datetime | None = None,
                                 role_hint: Mapping[str, str] | None = None) -> PendingOperation:  # fmt: skip
        """Start a new version with this REST policy; the operation is polled with `operation`."""
        call = Call("create", "certificates", name, self.endpoint.url, role_hint)
        body = await self._call(
            call, lambda: self._rest("POST", f"/certificates/{name}/create", {"policy": policy}), deadline
        )
        return _operation(body)

    async def operation(self, name: str, *, deadline: datetime | None = None,
                        role_hint: Mapping[str, str] | None = None) -> PendingOperation:  # fmt: skip
        """The pending operation of a certificate."""
        call = Call("poll the operation", "certificates", name, self.endpoint.url, role_hint)
        return _operation(
            await self._call(call, lambda: self._rest("GET", f"/certificates/{name}/pending", None), deadline)
        )

    async def policy(self, name: str, *, deadline: datetime | None = None,
                     role_hint: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        """A certificate's policy in its REST form."""
        call = Call("get the policy", "certificates", name, self.endpoint.url, role_hint)
        return await self._call(call, lambda: self._rest("GET", f"/certificates/{name}/policy", None), deadline)

    # -- secrets and keys ------------------------------------------------------------------------

    async def secret(self, name: str, version: str | None = None, *, deadline: datetime | None = None) -> SecretValue:
        """A secret version's value (a certificate's key and chain, for certificate-backed secrets)."""
        call = Call("get", "secrets", name, self.endpoint.url)
        found = await self._call(call, lambda: self._secrets.get_secret(name, version), deadline)
        return SecretValue(name, str(found.properties.version), str(found.value or ""), found.properties.content_type)

    async def sign(self, key_name: str, key_version: str | None, algorithm: str, digest: bytes, *,
                   deadline: datetime | None = None) -> bytes:  # fmt: skip
        """Have Key Vault sign a digest with a key (EC signatures come back raw r||s)."""
        key_id = f"{self.endpoint.url}/keys/{key_name}" + (f"/{key_version}" if key_version else "")
        client = self._crypto.get(key_id)
        if client is None:
            # Read the key once through our retries and hand it to the crypto client: given only an id, the
            # client reads it itself on first use, outside our retry loop, and ignores a 429 there.
            read = Call("get", "keys", key_name, self.endpoint.url)
            key = await self._call(read, lambda: self._keys.get_key(key_name, key_version), deadline)
            client = self._crypto[key_id] = CryptographyClient(key, self._credential, **self._options)
        call = Call("sign with", "keys", key_name, self.endpoint.url)
        result = await self._call(call, lambda: client.sign(SignatureAlgorithm(algorithm), digest), deadline)
        return bytes(result.signature)

    # -- the retry loop --------------------------------------------------------------------------

    async def _call(self, call: Call, request: Callable[[], Awaitable[_T]], deadline: datetime | None) -> _T:
        """Send a request with our retries; raise the translated error when they run out."""
        started = time.monotonic()
        budget = self.retry.total.total_seconds()
        if deadline is not None:
            budget = max(0.0, min(budget, (deadline - datetime.now(UTC)).total_seconds()))
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, EdgecertError) and e.retryable),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(budget),
            wait=self._wait(started, budget),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(call, request)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(self, call: Call, request: Callable[[], Awaitable[_T]]) -> _T:
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 10:
            self._recent.popleft()
        self._recent.append(now)
        self.sent[call.operation] = self.sent.get(call.operation, 0) + 1
        try:
            result = await asyncio.wait_for(request(), self.retry.timeout.total_seconds())
        except Exception as exc:
            error = translate(exc, _with_rate(call, len(self._recent)))
            if error.code == "issue.throttled":
                self.throttled += 1
            if self.on_request is not None:
                self.on_request(f"{call.kind}.{call.operation}", error.code)
            raise error from exc
        if self.on_request is not None:
            self.on_request(f"{call.kind}.{call.operation}", "ok")
        return result

    def _wait(self, started: float, budget: float) -> Callable[[RetryCallState], float]:
        floor, ceiling = self.retry.floor.total_seconds(), self.retry.ceiling.total_seconds()

        def wait(state: RetryCallState) -> float:
            # full jitter above a floor: uniform in [floor, floor * 2^n], capped at the ceiling
            top = min(ceiling, floor * 2 ** (state.attempt_number - 1))
            delay = floor + self._rng.random() * max(0.0, top - floor)
            error = state.outcome.exception() if state.outcome is not None else None
            hint = getattr(error, "retry_after", None)
            if isinstance(hint, timedelta) and delay < hint.total_seconds():
                # never sooner than the server asked, and spread so that every caller it throttled does not
                # come back in the same instant
                delay = hint.total_seconds() + self._rng.random() * floor
            # never wait past the end of the budget (the deadline): the stop condition ends it there
            remaining = budget - (time.monotonic() - started)
            return float(max(0.0, min(delay, remaining)))

        return wait

    async def _rest(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """A raw REST request through the client's pipeline (auth, TLS, api-version).

        Used for the operations the SDK offers only behind its poller, so that every request gets
        our retries and our polling bounds.
        """
        request = HttpRequest(method, path, json=body) if body is not None else HttpRequest(method, path)
        response = await self._certificates.send_request(request)
        if response.status_code >= 400:
            raise HttpResponseError(response=response)
        data = response.json()
        if not isinstance(data, dict):
            raise IssuanceError(f"{method} {path}: the vault answered with something that is not an object")
        return data


def _with_rate(call: Call, recent: int) -> Call:
    return replace(call, recent_requests=recent)


def _operation(body: dict[str, Any]) -> PendingOperation:
    error = body.get("error") or {}
    return PendingOperation(
        status=str(body.get("status", "")),
        status_details=body.get("status_details"),
        error_code=error.get("code") if isinstance(error, dict) else None,
        error_message=error.get("message") if isinstance(error, dict) else None,
        csr=base64.b64decode(body["csr"]) if isinstance(body.get("csr"), str) else None,
    )
