"""One emulated vault on its own loopback HTTPS address: the request pipeline in front of its objects.

Each request goes through the stages of the real service, in this order:

1. challenge: no bearer token → 401 with `WWW-Authenticate`, before the body is read (the SDK's
   first request carries no token and, for a POST, an empty body; reference §1);
2. token: issued by the sandbox's identity endpoint, audience `https://vault.azure.net`, not expired;
   the caller is its `oid`;
3. firewall switch → 403 `ForbiddenByFirewall`;
4. authorization by the vault's permission model → 403 `ForbiddenByRbac` or `AccessDenied`;
5. throttling by transaction class → 429 `Throttled` (with `Retry-After` when switched on);
6. injected faults (status, delay, dropped connection, malformed body, failed issuance);
7. the operation itself.

Throttled requests, challenges and denials consume no quota unless `denied_consumes` is set (the
throttling guide says 429s do not count; the rest is unconfirmed).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edgecert.sandbox.identity import ISSUER, TENANT_ID, IdentityDirectory, TokenError, TokenIssuer
from edgecert.sandbox.keyvault.authz import PREFIX, AccessPolicy, Denial, RoleAssignments
from edgecert.sandbox.keyvault.limits import Throttle, key_create_cost, key_transaction_cost
from edgecert.sandbox.keyvault.objects import VaultError, VaultObjects

__all__ = ["AUDIENCE", "OPERATIONS", "Fault", "Faults", "Operation", "RequestLog", "Vault"]

AUDIENCE = "https://vault.azure.net"
SUBSCRIPTION = "00000000-5ec0-4000-8000-00000000ed9e"
RESOURCE_GROUP = "edgecert-sandbox"
LOCATION = "westeurope"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="{AUDIENCE}"'
_STATUS_CODES = {400: "BadParameter", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 429: "Throttled"}


@dataclass(frozen=True)
class Operation:
    """One REST operation: its RBAC data action, access-policy permission and throttling class."""

    name: str
    method: str
    paths: tuple[str, ...]
    action: str
    permission: tuple[str, str]
    throttle: str
    call: Callable[[VaultObjects, dict[str, str], dict[str, Any], dict[str, str]], dict[str, Any]]
    status: int = 200

    @property
    def collection(self) -> str:
        """certificates, secrets or keys."""
        return self.name.split(".")[0]


def _ops() -> list[Operation]:
    def name(m: dict[str, str]) -> str:
        return m["name"]

    def version(m: dict[str, str]) -> str | None:
        return m.get("version") or None

    return [
        Operation(
            "certificates.create", "POST", ("/certificates/{name}/create",), "certificates/create/action",
            ("certificates", "create"), "key-create",
            lambda o, m, b, q: o.create_certificate(name(m), b), status=202,
        ),
        Operation(
            "certificates.merge", "POST", ("/certificates/{name}/pending/merge",), "certificates/create/action",
            ("certificates", "create"), "vault-other", lambda o, m, b, q: o.merge(name(m), b), status=201,
        ),
        Operation(
            "certificates.pending", "GET", ("/certificates/{name}/pending",), "certificates/read",
            ("certificates", "get"), "vault-other", lambda o, m, b, q: o.get_operation(name(m)),
        ),
        Operation(
            "certificates.policy", "GET", ("/certificates/{name}/policy",), "certificates/read",
            ("certificates", "get"), "vault-other", lambda o, m, b, q: o.certificate_policy(name(m)),
        ),
        Operation(
            "certificates.versions", "GET", ("/certificates/{name}/versions",), "certificates/read",
            ("certificates", "list"), "vault-other", lambda o, m, b, q: o.certificate_versions(name(m)),
        ),
        Operation(
            "certificates.import", "POST", ("/certificates/{name}/import",), "certificates/import/action",
            ("certificates", "import"), "vault-other", lambda o, m, b, q: o.import_certificate(name(m), b),
        ),
        Operation(
            "certificates.get", "GET",
            ("/certificates/{name}", "/certificates/{name}/", "/certificates/{name}/{version}"),
            "certificates/read", ("certificates", "get"), "vault-other",
            lambda o, m, b, q: o.get_certificate(name(m), version(m)),
        ),
        Operation(
            "certificates.update", "PATCH",
            ("/certificates/{name}", "/certificates/{name}/", "/certificates/{name}/{version}"),
            "certificates/update/action", ("certificates", "update"), "vault-other",
            lambda o, m, b, q: o.update_certificate(name(m), version(m), b),
        ),
        Operation(
            "secrets.versions", "GET", ("/secrets/{name}/versions",), "secrets/readMetadata/action",
            ("secrets", "list"), "vault-other", lambda o, m, b, q: o.secret_versions(name(m)),
        ),
        Operation(
            "secrets.get", "GET", ("/secrets/{name}", "/secrets/{name}/", "/secrets/{name}/{version}"),
            "secrets/getSecret/action", ("secrets", "get"), "vault-other",
            lambda o, m, b, q: o.get_secret(name(m), version(m), q.get("outContentType")),
        ),
        Operation(
            "secrets.set", "PUT", ("/secrets/{name}",), "secrets/setSecret/action", ("secrets", "set"),
            "secret-create", lambda o, m, b, q: o.set_secret(name(m), b),
        ),
        Operation(
            "keys.create", "POST", ("/keys/{name}/create",), "keys/create/action", ("keys", "create"),
            "key-create", lambda o, m, b, q: o.create_key(name(m), b),
        ),
        Operation(
            "keys.versions", "GET", ("/keys/{name}/versions",), "keys/read", ("keys", "list"), "key-other",
            lambda o, m, b, q: o.key_versions(name(m)),
        ),
        Operation(
            "keys.get", "GET", ("/keys/{name}", "/keys/{name}/", "/keys/{name}/{version}"), "keys/read",
            ("keys", "get"), "key-other", lambda o, m, b, q: o.get_key(name(m), version(m)),
        ),
        Operation(
            "keys.sign", "POST", ("/keys/{name}/{version}/sign", "/keys/{name}//sign"), "keys/sign/action",
            ("keys", "sign"), "key-other", lambda o, m, b, q: o.sign(name(m), m.get("version", ""), b),
        ),
        Operation(
            "keys.verify", "POST", ("/keys/{name}/{version}/verify", "/keys/{name}//verify"), "keys/verify/action",
            ("keys", "verify"), "key-other", lambda o, m, b, q: o.verify(name(m), m.get("version", ""), b),
        ),
    ]  # fmt: skip


#: Every emulated operation, by name.
OPERATIONS: dict[str, Operation] = {op.name: op for op in _ops()}


@dataclass
class Fault:
    """An injected fault for requests matching `operation` (a glob such as `certificates.*`)."""

    operation: str = "*"
    vault: str | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    drop: bool = False
    malformed: bool = False
    fail_issuance: dict[str, str] | None = None
    times: int = 1

    def matches(self, vault: str, operation: str) -> bool:
        """True when this fault applies to a request."""
        return (self.vault in (None, vault)) and fnmatch.fnmatchcase(operation, self.operation)


class Faults:
    """Scripted faults, taken in the order they were added (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault; `times` -1 applies it to every matching request."""
        with self._lock:
            self._queue.append(fault)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queue.clear()

    def take(self, vault: str, operation: str) -> Fault | None:
        """The first queued fault matching a request, counting one use of it."""
        with self._lock:
            for fault in self._queue:
                if fault.matches(vault, operation):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self._queue.remove(fault)
                    return fault
        return None


class RequestLog:
    """What every vault was asked, and counters by vault, operation and status (thread-safe)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)
        self.counters: Counter[str] = Counter()

    def record(self, entry: dict[str, Any]) -> None:
        """Add one request."""
        with self._lock:
            self.entries.append(entry)
            self.counters[f"{entry['vault']} {entry['operation']} {entry['status']}"] += 1

    def snapshot(self) -> dict[str, Any]:
        """The log and the counters, as JSON-ready values."""
        with self._lock:
            return {"requests": list(self.entries), "counters": dict(self.counters)}


@dataclass
class Vault:
    """An emulated vault: its objects, permission model, limits and switches."""

    name: str
    objects: VaultObjects
    permission_model: str = "rbac"
    sku: str = "standard"
    firewall: bool = False
    retry_after: bool = False
    denied_consumes: bool = False
    access_denied_code: str = "AccessDenied"
    throttle: Throttle = field(default_factory=Throttle)
    access_policies: dict[str, AccessPolicy] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        """The vault's ARM resource id, as 403 messages name it."""
        return (
            f"/subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/providers/microsoft.keyvault/"
            f"vaults/{self.name}"
        )


@dataclass
class Context:
    """What the pipeline shares with every vault: identities, tokens, assignments, faults, log."""

    directory: IdentityDirectory
    tokens: TokenIssuer
    assignments: RoleAssignments
    faults: Faults
    log: RequestLog
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: The clock of the throttling windows (seconds); tests pass one they can move.
    monotonic: Callable[[], float] = time.monotonic


def vault_app(vault: Vault, context: Context) -> web.Application:
    """The aiohttp application serving one vault."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    for op in OPERATIONS.values():
        for path in op.paths:
            app.router.add_route(op.method, path, _handler(vault, context, op))
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app


def _handler(vault: Vault, context: Context, op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        caller: dict[str, Any] = {}
        response = await _pipeline(vault, context, op, request, caller)
        context.log.record(
            {
                "time": context.now().isoformat(),
                "vault": vault.name,
                "method": request.method,
                "path": request.path,
                "operation": op.name,
                "status": response.status,
                "caller": caller.get("oid"),
                "class": op.throttle,
                "ms": round((time.monotonic() - started) * 1000, 1),
                "retryAfter": response.headers.get("Retry-After"),
            }
        )
        return response

    return handle


async def _pipeline(
    vault: Vault, context: Context, op: Operation, request: web.Request, caller: dict[str, Any]
) -> web.StreamResponse:
    refused = _authenticate(vault, context, request, caller)
    if refused is not None:
        return refused
    body = await _read_body(request)
    if isinstance(body, web.Response):
        return body
    name = request.match_info.get("name", "")
    denial = _authorize(vault, context, op, str(caller.get("oid", "")), name=name, identity=_identity(caller))
    if denial is not None and not vault.denied_consumes:
        return _error(VaultError(403, "Forbidden", denial.message, denial.inner_code))
    kty = _requested_key_type(body)
    if op.throttle == "key-create" and kty.endswith("-HSM") and vault.sku != "premium":
        # HSM-protected keys exist only in Premium vaults (the exact error text is unconfirmed)
        return _error(VaultError(400, "BadParameter", f"Key type {kty} is only allowed in a Premium vault"))
    kind, cost = _throttle_class(vault, op, name, version=request.match_info.get("version"), body=body)
    budget = vault.throttle.take(kind, cost, context.monotonic())
    if not budget.allowed:
        headers = {"Retry-After": str(int(budget.retry_after.total_seconds()))} if vault.retry_after else {}
        message = "Request was not processed because too many requests were received. "
        return _error(VaultError(429, "Throttled", message + "Reason: VaultRequestTypeLimitReached"), headers)
    if denial is not None:
        return _error(VaultError(403, "Forbidden", denial.message, denial.inner_code))
    fault = context.faults.take(vault.name, op.name)
    if fault is not None:
        injected = await _inject(fault, request)
        if injected is not None:
            return injected
    try:
        result = await asyncio.to_thread(op.call, vault.objects, dict(request.match_info), body, dict(request.query))
        if fault is not None and fault.fail_issuance and op.name == "certificates.create":
            rejected = fault.fail_issuance
            vault.objects.fail_pending(
                name, rejected.get("code", "Request rejected"), rejected.get("message", "The issuer rejected it")
            )
    except VaultError as exc:
        return _error(exc)
    headers = {}
    if op.status == 202:
        headers = {"Retry-After": "10", "Location": f"{vault.objects.url}/certificates/{name}/pending"}
    return web.json_response(result, status=op.status, headers=headers)


def _authenticate(vault: Vault, context: Context, request: web.Request, caller: dict[str, Any]) -> web.Response | None:
    """The stages before the body is read: api-version, bearer challenge, token, firewall."""
    if "api-version" not in request.query:
        return _error(VaultError(400, "BadParameter", "The request URI contains an invalid api-version"))
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return _challenge("AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token.")
    try:
        caller.update(context.tokens.verify(header.removeprefix("Bearer ").strip(), AUDIENCE))
    except TokenError as exc:
        return _challenge(str(exc))
    if vault.firewall:
        message = (
            "Client address is not authorized and caller is not a trusted service.\r\n"
            f"Client address: {request.remote}\r\nCaller: {_identity(caller)}\r\n"
            f"Vault: {vault.name};location={LOCATION}\r\n"
        )
        return _error(VaultError(403, "Forbidden", message, "ForbiddenByFirewall"))
    return None


async def _read_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.method not in ("POST", "PUT", "PATCH"):
        return {}
    try:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
    except ValueError:
        return _error(VaultError(400, "BadParameter", "The request body is not valid JSON"))
    if not isinstance(body, dict):
        return _error(VaultError(400, "BadParameter", "The request body must be a JSON object"))
    return body


def _identity(claims: dict[str, Any]) -> str:
    return f"appid={claims.get('appid')};oid={claims.get('oid')};iss={ISSUER}"


def _authorize(vault: Vault, context: Context, op: Operation, oid: str, *, name: str, identity: str) -> Denial | None:
    identities = context.directory.memberships(oid)
    scope = f"/{op.collection}/{name}"
    if vault.permission_model == "rbac":
        if context.assignments.covering(vault.name, identities, op.action, scope) is not None:
            return None
        return Denial(
            "ForbiddenByRbac",
            "Caller is not authorized to perform action on resource.\r\n"
            "If role assignments, deny assignments or role definitions were changed recently, please observe "
            "propagation time.\r\n"
            f"Caller: {identity}\r\n"
            f"Action: '{PREFIX}{op.action}'\r\n"
            f"Resource: '{vault.resource}{scope}'\r\n"
            "Assignment: (not found)\r\n"
            "DenyAssignmentId: null\r\n"
            "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
            f"Vault: {vault.name};location={LOCATION}\r\n",
        )
    kind, permission = op.permission
    if any(vault.access_policies[i].allows(kind, permission) for i in identities if i in vault.access_policies):
        return None
    return Denial(
        vault.access_denied_code,
        f"The user, group or application '{identity}' does not have {kind} {permission} permission on key vault "
        f"'{vault.name};location={LOCATION}'. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125287",
    )


def _throttle_class(
    vault: Vault, op: Operation, name: str, *, version: str | None, body: dict[str, Any]
) -> tuple[str, float]:
    if op.throttle == "key-create":
        return "key-create", key_create_cost(hsm=_requested_key_type(body).endswith("-HSM"))
    if op.throttle == "key-other":
        key = vault.objects.key_info(name, version)
        if key is None:
            return "key-other", key_transaction_cost("EC", None)
        size = getattr(key.key, "key_size", None)
        return "key-other", key_transaction_cost(key.kty, size if key.kty.startswith("RSA") else None)
    return op.throttle, 1.0


def _requested_key_type(body: dict[str, Any]) -> str:
    """The key type a create request asks for (a key's `kty`, or a certificate policy's)."""
    policy = body.get("policy")
    props = policy.get("key_props") if isinstance(policy, dict) else None
    kty = props.get("kty") if isinstance(props, dict) else body.get("kty")
    return str(kty or "RSA")


async def _inject(fault: Fault, request: web.Request) -> web.StreamResponse | None:
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.drop:
        if request.transport is not None:
            request.transport.abort()  # the client sees the connection reset, with no response
        return web.Response(status=503)
    if fault.malformed:
        return web.Response(status=200, body=b'{"id": "truncated', content_type="application/json")
    if fault.status is not None:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        code = fault.code or _STATUS_CODES.get(fault.status, "InternalServerError")
        return _error(VaultError(fault.status, code, fault.message or f"Injected fault: {code}"), headers)
    return None


async def _unknown(request: web.Request) -> web.StreamResponse:
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return _challenge("AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token.")
    return _error(VaultError(400, "BadParameter", f"The operation {request.method} {request.path} is not supported"))


def _challenge(message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": "Unauthorized", "message": message}},
        status=401,
        headers={"WWW-Authenticate": CHALLENGE},
    )


def _error(error: VaultError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=headers or {})
