"""The Key Vault emulator with its identity endpoint and control API, as one startable object.

Each vault listens on its own loopback HTTPS address (the SDK parses ids as
`/{collection}/{name}[/{version}]` with nothing before them, so vaults cannot share one by path);
the identity endpoint is plain HTTP (as IMDS is); the control API is HTTPS with a bearer token.
Clients trust `ca_file` and pass `verify_challenge_resource=False` (the vault is not under
`vault.azure.net`). Everything runs on one event loop in its own thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from aiohttp import web

from edgecert.sandbox.identity import Group, IdentityDirectory, Principal, TokenIssuer, imds_app
from edgecert.sandbox.keyvault.authz import ACCESS_POLICY_PERMISSIONS, AccessPolicy, RoleAssignment, RoleAssignments
from edgecert.sandbox.keyvault.limits import Throttle
from edgecert.sandbox.keyvault.objects import VaultObjects, VaultSettings
from edgecert.sandbox.keyvault.vault import Context, Fault, Faults, RequestLog, Vault, vault_app
from edgecert.sandbox.pki import SandboxCA
from edgecert.sandbox.servers import LoopThread, admin_auth, json_error, listen, server_tls

__all__ = ["KeyVaultEmulator"]

PERMISSION_MODELS = ("rbac", "access-policy")


class KeyVaultEmulator:
    """Key Vault, managed identity and the control API on loopback (start, use, stop)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        admin_port: int = 0,
        vault_name: str = "sandbox",
        vault_port: int = 0,
        permission_model: str = "rbac",
        ca: SandboxCA | None = None,
        now: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if permission_model not in PERMISSION_MODELS:
            raise ValueError(f"permission model {permission_model!r} is not one of {', '.join(PERMISSION_MODELS)}")
        self.state_dir = state_dir
        self.host = host
        self._admin_port = admin_port
        self.vault_name = vault_name
        self._vault_port = vault_port
        self._permission_model = permission_model
        self._now = now or (lambda: datetime.now(UTC))
        self.ca = ca or SandboxCA()
        self.issuing_ca = SandboxCA("edgecert sandbox issuing CA")
        self.admin_token = secrets.token_urlsafe(24)
        self.directory = IdentityDirectory()
        self.assignments = RoleAssignments()
        self.faults = Faults()
        self.log = RequestLog()
        self.context = Context(
            self.directory,
            TokenIssuer(now=self._now),
            self.assignments,
            self.faults,
            self.log,
            self._now,
            monotonic or time.monotonic,
        )
        self.vaults: dict[str, Vault] = {}
        self._urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self.ca_file = state_dir / "ca.pem"
        self.identity_url = ""
        self.admin_url = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the identity endpoint, the control API and the first vault."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ca.write_ca_file(self.ca_file)
        self._tls = server_tls(*self.ca.server(self.host, "localhost").write(self.state_dir / "tls", "keyvault"))
        self._loop = LoopThread("keyvault-emulator")
        identity_runner, identity_port = self._loop.run(
            listen(imds_app(self.directory, self.context.tokens), self.host, 0, None)
        )
        admin_runner, admin_port = self._loop.run(listen(self._admin_app(), self.host, self._admin_port, self._tls))
        self._runners += [identity_runner, admin_runner]
        self.identity_url = f"http://{_netloc(self.host, identity_port)}"
        self.admin_url = f"https://{_netloc(self.host, admin_port)}"
        self.create_vault(self.vault_name, permission_model=self._permission_model, port=self._vault_port)
        return self

    def stop(self) -> None:
        """Stop every listener and the emulator's thread."""
        if self._loop is None:
            return
        for runner in reversed(self._runners):
            self._loop.run(runner.cleanup())
        self._runners.clear()
        self._loop.stop()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- identities ------------------------------------------------------------------------------

    def add_principal(self, name: str, *, assigned: bool = True) -> Principal:
        """A managed identity; `assigned=False` stands for a device with no identity assigned."""
        return self.directory.add_principal(name, assigned=assigned)

    def add_group(self, name: str, members: list[str]) -> Group:
        """An Entra ID group of principals."""
        return self.directory.add_group(name, members)

    def imds_url(self, principal: Principal) -> str:
        """The value of AZURE_POD_IDENTITY_AUTHORITY_HOST for a device with this identity."""
        return f"{self.identity_url}/principals/{principal.object_id}"

    # -- vaults ----------------------------------------------------------------------------------

    @property
    def vault_url(self) -> str:
        """The URL of the first vault."""
        return self.url_of(self.vault_name)

    def url_of(self, vault: str) -> str:
        """The URL of a vault."""
        return self._urls[vault]

    def create_vault(self, name: str, *, permission_model: str = "rbac", sku: str = "standard", port: int = 0) -> str:
        """Create (or reconfigure) a vault on its own address; return its URL."""
        if self._loop is None:
            raise RuntimeError("start the emulator first")
        return self._loop.run(self._create_vault(name, permission_model=permission_model, sku=sku, port=port))

    async def _create_vault(self, name: str, *, permission_model: str, sku: str, port: int = 0) -> str:
        if permission_model not in PERMISSION_MODELS:
            raise ValueError(f"permissionModel must be one of {', '.join(PERMISSION_MODELS)}")
        if sku not in ("standard", "premium"):
            raise ValueError("sku must be 'standard' or 'premium'")
        existing = self.vaults.get(name)
        if existing is not None:
            existing.permission_model, existing.sku = permission_model, sku
            return self._urls[name]
        vault = Vault(name, VaultObjects("", self.issuing_ca.signing_pair(), now=self._now), permission_model, sku)
        runner, real_port = await listen(vault_app(vault, self.context), self.host, port, self._tls)
        url = f"https://{_netloc(self.host, real_port)}"
        vault.objects.url = url
        with self._lock:
            self.vaults[name] = vault
            self._urls[name] = url
            self._runners.append(runner)
        return url

    def vault(self, name: str | None = None) -> Vault:
        """A vault by name (the first one by default)."""
        found = self.vaults.get(name or self.vault_name)
        if found is None:
            raise KeyError(f"no vault named {name!r}")
        return found

    def assign_role(self, vault: str, principal_id: str, role: str, scope: str = "/") -> RoleAssignment:
        """Give a built-in role to a principal or group at a scope of a vault."""
        self.vault(vault)
        return self.assignments.add(vault, principal_id, role, scope)

    def set_access_policy(self, vault: str, object_id: str, permissions: dict[str, list[str]]) -> AccessPolicy:
        """Set one identity's access-policy permission lists (ignored by RBAC vaults)."""
        for kind, granted in permissions.items():
            known = ACCESS_POLICY_PERMISSIONS.get(kind)
            if known is None:
                raise ValueError(f"permission type {kind!r} is not keys, secrets or certificates")
            unknown = set(granted) - known
            if unknown:
                raise ValueError(f"unknown {kind} permissions: {', '.join(sorted(unknown))}")
        policy = AccessPolicy(object_id, *(set(permissions.get(k, [])) for k in ("keys", "secrets", "certificates")))
        self.vault(vault).access_policies[object_id] = policy
        return policy

    def set_limits(
        self,
        vault: str,
        *,
        scale: float | None = None,
        retry_after: bool | None = None,
        denied_consumes: bool | None = None,
        window: float | None = None,
    ) -> None:
        """Scale a vault's throttling budgets (and window), switch `Retry-After` and whether denials cost quota."""
        target = self.vault(vault)
        if scale is not None or window is not None:
            new_scale = scale if scale is not None else target.throttle.scale
            new_window = timedelta(seconds=window) if window is not None else target.throttle.window
            if new_scale <= 0 or new_window <= timedelta(0):
                raise ValueError("scale and window must be more than 0")
            target.throttle = Throttle(new_scale, new_window)
        if retry_after is not None:
            target.retry_after = retry_after
        if denied_consumes is not None:
            target.denied_consumes = denied_consumes

    def set_settings(self, vault: str, **settings: Any) -> VaultSettings:
        """Change a vault's behaviour switches (see VaultSettings)."""
        target = self.vault(vault).objects.settings
        for key, value in settings.items():
            if not hasattr(target, key):
                raise ValueError(f"unknown vault setting {key!r}")
            setattr(target, key, value)
        return target

    def renew(self, vault: str, certificate: str) -> dict[str, Any]:
        """Make a new version the way Key Vault's AutoRenew lifetime action does (Self/Sandbox issuers)."""
        objects = self.vault(vault).objects
        objects.create_certificate(certificate, {})
        return objects.get_operation(certificate)

    # -- control API -----------------------------------------------------------------------------

    def _admin_app(self) -> web.Application:
        app = web.Application(middlewares=[admin_auth(self.admin_token)])
        app.router.add_post("/_sandbox/principals", self._principals)
        app.router.add_post("/_sandbox/groups", self._groups)
        app.router.add_put("/_sandbox/vaults/{vault}", self._vaults)
        app.router.add_post("/_sandbox/vaults/{vault}/roleAssignments", self._role_assignments)
        app.router.add_post("/_sandbox/vaults/{vault}/accessPolicies", self._access_policies)
        app.router.add_put("/_sandbox/vaults/{vault}/limits", self._limits)
        app.router.add_post("/_sandbox/vaults/{vault}/certificates/{name}/renew", self._renew)
        app.router.add_post("/_sandbox/faults", self._add_faults)
        app.router.add_delete("/_sandbox/faults", self._clear_faults)
        app.router.add_get("/_sandbox/requests", self._requests)
        app.router.add_get("/_sandbox/issuers/sandbox", self._issuer)
        return app

    async def _principals(self, request: web.Request) -> web.Response:
        body = await _json(request)
        principal = self.add_principal(str(body.get("name", "principal")), assigned=bool(body.get("assigned", True)))
        return web.json_response(
            {"objectId": principal.object_id, "clientId": principal.client_id, "imdsUrl": self.imds_url(principal)}
        )

    async def _groups(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            group = self.add_group(str(body.get("name", "group")), list(body.get("members", [])))
        except KeyError as exc:
            return json_error(400, "BadRequest", str(exc))
        return web.json_response({"objectId": group.object_id})

    async def _vaults(self, request: web.Request) -> web.Response:
        body = await _json(request)
        name = request.match_info["vault"]
        try:
            url = await self._create_vault(
                name, permission_model=str(body.get("permissionModel", "rbac")), sku=str(body.get("sku", "standard"))
            )
        except ValueError as exc:
            return json_error(400, "BadRequest", str(exc))
        target = self.vault(name)
        if "firewall" in body:
            target.firewall = bool(body["firewall"])
        if "accessDeniedCode" in body:
            target.access_denied_code = str(body["accessDeniedCode"])
        return web.json_response({"vaultUrl": url, "vaultName": target.name})

    async def _role_assignments(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            assignment = self.assign_role(
                request.match_info["vault"], str(body["principalId"]), str(body["role"]), str(body.get("scope", "/"))
            )
        except (KeyError, ValueError) as exc:
            return json_error(400, "BadRequest", str(exc))
        except OverflowError as exc:
            return json_error(400, "RoleAssignmentLimitExceeded", str(exc))
        return web.json_response({"id": assignment.assignment_id, "count": len(self.assignments)})

    async def _access_policies(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            self.set_access_policy(request.match_info["vault"], str(body["objectId"]), dict(body["permissions"]))
        except (KeyError, ValueError, TypeError) as exc:
            return json_error(400, "BadRequest", str(exc))
        return web.json_response({"objectId": body["objectId"]})

    async def _limits(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            self.set_limits(
                request.match_info["vault"],
                scale=float(body["scale"]) if "scale" in body else None,
                retry_after=bool(body["retryAfter"]) if "retryAfter" in body else None,
                denied_consumes=bool(body["deniedConsumes"]) if "deniedConsumes" in body else None,
                window=float(body["windowSeconds"]) if "windowSeconds" in body else None,
            )
        except (KeyError, ValueError) as exc:
            return json_error(400, "BadRequest", str(exc))
        return web.json_response({"scale": self.vault(request.match_info["vault"]).throttle.scale})

    async def _renew(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.renew(request.match_info["vault"], request.match_info["name"]))
        except KeyError as exc:
            return json_error(404, "NotFound", str(exc))

    async def _add_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            items = body if isinstance(body, list) else [body]
            for item in items:
                self.faults.add(_fault(item))
        except (TypeError, ValueError) as exc:
            return json_error(400, "BadRequest", str(exc))
        return web.json_response({"queued": len(items)})

    async def _clear_faults(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"queued": 0})

    async def _requests(self, _request: web.Request) -> web.Response:
        return web.json_response(self.log.snapshot())

    async def _issuer(self, _request: web.Request) -> web.Response:
        return web.json_response({"name": "Sandbox", "pem": self.issuing_ca.pem.decode()})


_FAULT_FIELDS = {
    "operation": "operation",
    "vault": "vault",
    "status": "status",
    "code": "code",
    "message": "message",
    "retryAfter": "retry_after",
    "delay": "delay",
    "drop": "drop",
    "malformed": "malformed",
    "failIssuance": "fail_issuance",
    "times": "times",
}


def _fault(item: object) -> Fault:
    if not isinstance(item, dict):
        raise TypeError("a fault is a JSON object")
    unknown = set(item) - set(_FAULT_FIELDS)
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}; known: {', '.join(_FAULT_FIELDS)}")
    return Fault(**{_FAULT_FIELDS[k]: v for k, v in item.items()})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
