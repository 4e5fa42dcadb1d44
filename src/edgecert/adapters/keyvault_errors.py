"""Translate what the Azure SDK raises into edgecert's error tree, with a remedy a person can act on.

The seed's pain was `Access denied, Operation: GetSecret` with nothing more: here a 403 says which
permission model the vault uses, which data action was refused, which built-in role grants it, on
which object, and the `az` command that fixes it with the caller's object id (all read from the
real 403 body, reference keyvault-and-identity.md §3). Every SDK exception type reachable from our
calls maps to a specific error; the test `test_every_sdk_exception_is_mapped` keeps it that way.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    SerializationError,
    ServiceRequestError,
    ServiceResponseError,
    TooManyRedirectsError,
)
from azure.identity import AuthenticationRequiredError, CredentialUnavailableError

from edgecert.errors import (
    AccessPolicyDeniedError,
    AuthenticationError,
    FirewallDeniedError,
    IdentityError,
    IssuanceError,
    ObjectNotFoundError,
    PermissionDeniedError,
    RbacDeniedError,
    ThrottledError,
    TlsVerificationError,
    TransientError,
    VaultRequestError,
    VaultUnreachableError,
)

__all__ = ["LEAST_PRIVILEGE_ROLES", "Call", "retry_after_of", "translate"]

#: The built-in role with the fewest rights that grants each data action edgecert uses.
LEAST_PRIVILEGE_ROLES: dict[str, str] = {
    "Microsoft.KeyVault/vaults/secrets/getSecret/action": "Key Vault Secrets User",
    "Microsoft.KeyVault/vaults/secrets/readMetadata/action": "Key Vault Secrets User",
    "Microsoft.KeyVault/vaults/secrets/setSecret/action": "Key Vault Secrets Officer",
    "Microsoft.KeyVault/vaults/certificates/read": "Key Vault Certificate User",
    "Microsoft.KeyVault/vaults/certificates/create/action": "Key Vault Certificates Officer",
    "Microsoft.KeyVault/vaults/certificates/import/action": "Key Vault Certificates Officer",
    "Microsoft.KeyVault/vaults/certificates/update/action": "Key Vault Certificates Officer",
    "Microsoft.KeyVault/vaults/keys/read": "Key Vault Crypto User",
    "Microsoft.KeyVault/vaults/keys/sign/action": "Key Vault Crypto User",
    "Microsoft.KeyVault/vaults/keys/verify/action": "Key Vault Crypto User",
}
_POLICY_FLAGS = {
    "secrets": "--secret-permissions",
    "certificates": "--certificate-permissions",
    "keys": "--key-permissions",
}


@dataclass(frozen=True)
class Call:
    """What was being done when an error happened, for the message and the remedy."""

    operation: str
    kind: str  # certificates | secrets | keys
    name: str
    vault_url: str
    #: The role the configured mode needs for this object, when it is more than the least privilege.
    role_hint: Mapping[str, str] | None = None
    #: Requests this device sent to the vault in the last 10 s (for throttling messages).
    recent_requests: int = 0


def translate(exc: BaseException, call: Call) -> IssuanceError:
    """The edgecert error for an exception raised by an SDK call (already ours: returned as is)."""
    if isinstance(exc, IssuanceError):
        return exc
    where = f"{call.operation} of {call.kind[:-1]} '{call.name}' in {call.vault_url}"
    found = _from_own_types(exc, call, where)
    if found is not None:
        return found
    if isinstance(exc, DecodeError | DeserializationError):  # DecodeError is an HttpResponseError: first
        return TransientError(
            f"{where}: the vault's answer could not be read ({_first_line(exc)})", vault=call.vault_url
        )
    if isinstance(exc, TooManyRedirectsError):
        return VaultUnreachableError(f"{where}: redirected in a loop ({_first_line(exc)})", vault=call.vault_url)
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        return _from_status(exc, call, where)
    if isinstance(exc, SerializationError):
        return VaultRequestError(
            f"{where}: the request could not be encoded ({_first_line(exc)})", vault=call.vault_url
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return _from_network(exc, call, where)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return TransientError(f"{where}: timed out", vault=call.vault_url)
    kind = "" if isinstance(exc, AzureError) else "unexpected "
    return IssuanceError(f"{where}: {kind}{type(exc).__name__}: {_first_line(exc)}", vault=call.vault_url)


def _from_own_types(exc: BaseException, call: Call, where: str) -> IssuanceError | None:
    """Errors the SDK raises as types of their own: the credential's, 401, 404 and 409."""
    if isinstance(exc, CredentialUnavailableError | AuthenticationRequiredError):
        return IdentityError(f"{where}: no managed identity token ({_first_line(exc)})", vault=call.vault_url)
    if isinstance(exc, ClientAuthenticationError):
        if exc.response is None:  # raised by the credential, not by the vault
            return IdentityError(f"{where}: the managed identity failed ({_first_line(exc)})", vault=call.vault_url)
        return AuthenticationError(f"{where}: the vault refused the token ({_first_line(exc)})", vault=call.vault_url)
    if isinstance(exc, ResourceNotFoundError):
        return ObjectNotFoundError(
            f"{where}: not found ({_code(exc) or 404})",
            remedy=f"create {call.kind[:-1]} '{call.name}' in the vault, or correct its name in the configuration",
            vault=call.vault_url,
        )
    if isinstance(exc, ResourceExistsError):
        return VaultRequestError(f"{where}: conflict ({_first_line(exc)})", vault=call.vault_url)
    return None


def _from_status(exc: HttpResponseError, call: Call, where: str) -> IssuanceError:
    status = int(exc.status_code or 0)
    code, inner, message = _fields(exc)
    retry_after = retry_after_of(exc)
    if status == 429:
        return ThrottledError(
            f"{where}: throttled by Key Vault (429 {code or 'Throttled'}); this device sent {call.recent_requests} "
            f"requests to the vault in the last 10 s, and the vault's limit is shared by every caller",
            retry_after=retry_after,
            vault=call.vault_url,
        )
    if status == 403:
        return _forbidden(call, where, inner, message)
    if status == 401:
        return AuthenticationError(f"{where}: 401 {code}: {message}", vault=call.vault_url)
    if status == 408 or status >= 500:
        return TransientError(f"{where}: {status} {code}", retry_after=retry_after, vault=call.vault_url)
    if status == 404:
        return ObjectNotFoundError(f"{where}: not found ({code})", vault=call.vault_url)
    return VaultRequestError(f"{where}: {status} {code}: {message}", vault=call.vault_url)


def _forbidden(call: Call, where: str, inner: str, message: str) -> IssuanceError:
    caller = _match(r"oid=([0-9a-fA-F-]{36})", message) or "<object id of the device's identity>"
    if inner == "ForbiddenByRbac":
        action = _match(r"Action: '([^']+)'", message) or "the action"
        resource = _match(r"Resource: '([^']+)'", message) or f"<vault resource id>/{call.kind}/{call.name}"
        role = (call.role_hint or {}).get(action) or LEAST_PRIVILEGE_ROLES.get(action, "a role that grants it")
        scope = "/".join(resource.split("/")[-2:]) if "/vaults/" in resource else f"{call.kind}/{call.name}"
        return RbacDeniedError(
            f"{where}: the identity (object id {caller}) lacks {action} on {scope}. The vault uses Azure RBAC, "
            "so its access policies are ignored",
            remedy=(
                f"assign '{role}' at the scope of that object: az role assignment create --role \"{role}\" "
                f'--assignee-object-id {caller} --assignee-principal-type ServicePrincipal --scope "{resource}" '
                "(a role on the certificate does not reach the secret or key of the same name; access policies "
                "do not apply on an RBAC vault)"
            ),
            vault=call.vault_url,
        )
    if inner in ("AccessDenied", "ForbiddenByPolicy"):
        found = re.search(r"does not have (\w+) (\w+) permission on key vault '([^;']+)", message)
        kind, permission, vault = found.groups() if found else (call.kind, "get", "<vault name>")
        flag = _POLICY_FLAGS.get(kind, "--secret-permissions")
        return AccessPolicyDeniedError(
            f"{where}: the vault uses access policies and the identity (object id {caller}) lacks {kind} {permission}",
            remedy=(
                f"az keyvault set-policy --name {vault} --object-id {caller} {flag} {permission} "
                "(set-policy replaces the list for that type: name every permission the identity needs, "
                "e.g. 'get list')"
            ),
            vault=call.vault_url,
        )
    if inner == "ForbiddenByFirewall":
        address = _match(r"Client address: ([^\r\n]+)", message) or "<the device's public address>"
        vault = _match(r"Vault: ([^;\r\n]+)", message) or "<vault name>"
        return FirewallDeniedError(
            f"{where}: the vault's firewall refused client address {address}",
            remedy=(
                f"allow the device's address (az keyvault network-rule add --name {vault} --ip-address {address}) "
                "or reach the vault through a private endpoint"
            ),
            vault=call.vault_url,
        )
    return PermissionDeniedError(f"{where}: 403 {inner or 'Forbidden'}: {message.splitlines()[0] if message else ''}")


def _from_network(exc: AzureError, call: Call, where: str) -> IssuanceError:
    cause = _root_cause(exc)
    text = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(exc)
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return TlsVerificationError(f"{where}: TLS verification failed ({text})", vault=call.vault_url)
    if isinstance(exc, ServiceRequestError) and _looks_like_dns(text):
        return VaultUnreachableError(f"{where}: the vault's name does not resolve ({text})", vault=call.vault_url)
    if isinstance(exc, ServiceRequestError) and "Connect" in text:
        return VaultUnreachableError(f"{where}: cannot connect ({text})", vault=call.vault_url)
    return TransientError(f"{where}: the connection failed ({text})", vault=call.vault_url)


def retry_after_of(exc: HttpResponseError) -> timedelta | None:
    """The server's Retry-After (seconds or HTTP date) or retry-after-ms, if the response had one."""
    headers = getattr(exc.response, "headers", None) or {}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None:
            try:
                return timedelta(milliseconds=max(0.0, float(value)))
            except ValueError:
                continue
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(timedelta(0), when.astimezone(UTC) - datetime.now(UTC))


def _fields(exc: HttpResponseError) -> tuple[str, str, str]:
    """Error code, inner error code and message, from the SDK's error model or the raw body."""
    model: Any = getattr(exc, "error", None)
    if model is not None and getattr(model, "code", None):
        inner = getattr(model, "innererror", None) or {}
        inner_code = inner.get("code", "") if isinstance(inner, dict) else getattr(inner, "code", "") or ""
        return str(model.code), str(inner_code), str(getattr(model, "message", "") or "")
    try:
        body = json.loads(exc.response.text()) if exc.response is not None else {}
    except (ValueError, AttributeError, TypeError):
        body = {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    inner = error.get("innererror") or {}
    return (
        str(error.get("code", "")),
        str(inner.get("code", "") if isinstance(inner, dict) else ""),
        str(error.get("message", "")),
    )


def _code(exc: HttpResponseError) -> str:
    return _fields(exc)[0]


def _match(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(1).strip() if found else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    last = current
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        last = current
        current = current.__cause__ or current.__context__
    return last


def _looks_like_dns(text: str) -> bool:
    return any(
        marker in text
        for marker in ("Name or service not known", "nodename nor servname", "getaddrinfo failed", "gaierror",
                       "Temporary failure in name resolution", "No address associated")
    )  # fmt: skip
