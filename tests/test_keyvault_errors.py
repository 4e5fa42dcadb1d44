"""Every exception the Azure SDK can raise from our calls maps to a specific edgecert error with a remedy."""

from __future__ import annotations

import inspect
import json
import ssl
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import azure.core.exceptions as core_exceptions
import azure.identity
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    ODataV4Error,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    SerializationError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
    TooManyRedirectsError,
)
from azure.identity import AuthenticationRequiredError, CredentialUnavailableError

from edgecert.adapters.keyvault_errors import Call, retry_after_of, translate
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

CALL = Call("get", "secrets", "device-id", "https://contoso.vault.azure.net", recent_requests=37)
OID = "8ee88300-6bd8-40cb-8828-68ee68bc2981"
RBAC_MESSAGE = (
    "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role "
    f"definitions were changed recently, please observe propagation time.\r\nCaller: appid=x;oid={OID};"
    "iss=https://sts.windows.net/t/\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
    "Resource: '/subscriptions/s/resourcegroups/rg/providers/microsoft.keyvault/vaults/contoso/secrets/device-id'"
    "\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n"
    "Vault: contoso;location=westeurope\r\n"
)
POLICY_MESSAGE = (
    f"The user, group or application 'appid=x;oid={OID};iss=https://sts.windows.net/t/' does not have secrets get "
    "permission on key vault 'contoso;location=westeurope'. For help resolving this issue, please see "
    "https://go.microsoft.com/fwlink/?linkid=2125287"
)


class Response:
    """Just what HttpResponseError reads from a response (status, reason, headers, body)."""

    def __init__(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = headers or {}
        self._body = json.dumps(body or {})
        self.content_type = "application/json"
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        del encoding
        return self._body

    def body(self) -> bytes:
        return self._body.encode()


def error_body(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def http(
    cls: type[HttpResponseError], status: int, body: dict[str, Any] | None = None, **headers: str
) -> Callable[[], BaseException]:
    return lambda: cls(response=Response(status, body, headers))


def denied(inner: str, message: str = "denied") -> Callable[[], BaseException]:
    return http(HttpResponseError, 403, error_body("Forbidden", message, inner))


def network(cls: type[Exception], cause: BaseException) -> Callable[[], BaseException]:
    def make() -> BaseException:
        error = cls(str(cause), error=cause)
        error.__cause__ = cause
        return error

    return make


CASES: dict[str, tuple[Callable[[], BaseException], type[IssuanceError]]] = {
    "no managed identity (IMDS 400)": (lambda: CredentialUnavailableError("No identity assigned"), IdentityError),
    "interactive authentication required": (lambda: AuthenticationRequiredError(["scope"]), IdentityError),
    "credential failed": (lambda: ClientAuthenticationError("token request failed"), IdentityError),
    "vault refused the token (401)": (http(ClientAuthenticationError, 401), AuthenticationError),
    "RBAC denial": (denied("ForbiddenByRbac", RBAC_MESSAGE), RbacDeniedError),
    "access-policy denial": (denied("AccessDenied", POLICY_MESSAGE), AccessPolicyDeniedError),
    "access-policy denial, newer code": (denied("ForbiddenByPolicy", POLICY_MESSAGE), AccessPolicyDeniedError),
    "firewall": (denied("ForbiddenByFirewall", "Client address: 203.0.113.7\r\nVault: contoso;l"), FirewallDeniedError),
    "disabled secret": (denied("SecretDisabled"), PermissionDeniedError),
    "not found": (http(ResourceNotFoundError, 404, error_body("SecretNotFound", "A secret ...")), ObjectNotFoundError),
    "conflict": (http(ResourceExistsError, 409, error_body("Conflict", "deleted but recoverable")), VaultRequestError),
    "precondition failed": (http(ResourceModifiedError, 412), VaultRequestError),
    "not modified": (http(ResourceNotModifiedError, 304), VaultRequestError),
    "bad request": (http(HttpResponseError, 400, error_body("BadParameter", "bad")), VaultRequestError),
    "OData error": (http(ODataV4Error, 400, error_body("BadParameter", "bad")), VaultRequestError),
    "throttled": (http(HttpResponseError, 429, error_body("Throttled", "too many")), ThrottledError),
    "server error": (http(HttpResponseError, 500, error_body("InternalError", "x")), TransientError),
    "service unavailable": (http(HttpResponseError, 503), TransientError),
    "malformed answer": (http(DecodeError, 200), TransientError),
    "answer cut short": (http(IncompleteReadError, 200), TransientError),
    "answer not deserializable": (lambda: DeserializationError("bad"), TransientError),
    "request not serializable": (lambda: SerializationError("bad"), VaultRequestError),
    "redirect loop": (lambda: TooManyRedirectsError([]), VaultUnreachableError),
    "DNS": (network(ServiceRequestError, OSError("Name or service not known")), VaultUnreachableError),
    "refused": (network(ServiceRequestError, ConnectionRefusedError("Connect failed")), VaultUnreachableError),
    "TLS verification": (network(ServiceRequestError, ssl.SSLCertVerificationError("failed")), TlsVerificationError),
    "connect timeout": (network(ServiceRequestTimeoutError, TimeoutError("timed out")), TransientError),
    "dropped connection": (network(ServiceResponseError, ConnectionResetError("reset")), TransientError),
    "read timeout": (network(ServiceResponseTimeoutError, TimeoutError("timed out")), TransientError),
    "our own timeout": (TimeoutError, TransientError),
}  # fmt: skip

#: SDK exception types our calls cannot raise, and why.
NOT_REACHABLE = {
    "AzureError": "the base class; every concrete type is covered",
    "StreamClosedError": "streaming responses only; we read whole bodies",
    "StreamConsumedError": "streaming responses only; we read whole bodies",
    "ResponseNotReadError": "streaming responses only; we read whole bodies",
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_sdk_exception_maps_to_a_specific_error_with_a_remedy(case: str) -> None:
    make, expected = CASES[case]
    error = translate(make(), CALL)
    assert type(error) is expected
    assert error.remedy
    assert error.vault == CALL.vault_url or isinstance(error, PermissionDeniedError)


def test_every_sdk_exception_is_mapped() -> None:
    """A new exception type in azure-core or azure-identity fails here until it has a case or a reason."""
    covered = {type(make()).__name__ for make, _ in CASES.values()}
    for module in (core_exceptions, azure.identity):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith(("azure.core", "azure.identity")):
                assert name in covered or name in NOT_REACHABLE, f"{module.__name__}.{name} is not mapped"


def test_rbac_remedy_names_role_scope_and_command() -> None:
    error = translate(http(HttpResponseError, 403, error_body("Forbidden", RBAC_MESSAGE, "ForbiddenByRbac"))(), CALL)
    assert "access policies are ignored" in error.message
    assert error.remedy.startswith("assign 'Key Vault Secrets User'")
    assert (
        f'az role assignment create --role "Key Vault Secrets User" --assignee-object-id {OID} '
        "--assignee-principal-type ServicePrincipal --scope "
        '"/subscriptions/s/resourcegroups/rg/providers/microsoft.keyvault/vaults/contoso/secrets/device-id"'
    ) in error.remedy


def test_role_hint_asks_for_the_role_the_mode_needs() -> None:
    message = RBAC_MESSAGE.replace("secrets/getSecret/action", "certificates/read").replace(
        "/secrets/", "/certificates/"
    )
    hint = {"Microsoft.KeyVault/vaults/certificates/read": "Key Vault Certificates Officer"}
    call = Call("get", "certificates", "device-id", CALL.vault_url, role_hint=hint)
    error = translate(http(HttpResponseError, 403, error_body("Forbidden", message, "ForbiddenByRbac"))(), call)
    assert '--role "Key Vault Certificates Officer"' in error.remedy
    plain = translate(http(HttpResponseError, 403, error_body("Forbidden", message, "ForbiddenByRbac"))(), CALL)
    assert '--role "Key Vault Certificate User"' in plain.remedy


def test_access_policy_remedy_is_set_policy() -> None:
    error = translate(http(HttpResponseError, 403, error_body("Forbidden", POLICY_MESSAGE, "AccessDenied"))(), CALL)
    assert f"az keyvault set-policy --name contoso --object-id {OID} --secret-permissions get" in error.remedy


def test_throttling_says_the_request_rate_and_carries_retry_after() -> None:
    error = translate(http(HttpResponseError, 429, error_body("Throttled", "x"), **{"Retry-After": "7"})(), CALL)
    assert isinstance(error, ThrottledError)
    assert error.retryable
    assert error.retry_after == timedelta(seconds=7)
    assert "37 requests to the vault in the last 10 s" in error.message


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, timedelta(seconds=3)),
        ({"retry-after-ms": "1500"}, timedelta(milliseconds=1500)),
        ({"x-ms-retry-after-ms": "250"}, timedelta(milliseconds=250)),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, timedelta(0)),
        ({}, None),
    ],
    ids=["seconds", "retry-after-ms", "x-ms-retry-after-ms", "a date in the past", "none"],
)
def test_retry_after_forms(headers: dict[str, str], expected: timedelta | None) -> None:
    assert retry_after_of(HttpResponseError(response=Response(429, None, headers))) == expected


def test_our_errors_pass_through_and_no_message_carries_a_token() -> None:
    ours = ThrottledError("already ours")
    assert translate(ours, CALL) is ours
    secret = "eyJhbGciOiJFUzI1NiJ9.secret-token-material"  # noqa: S105 - a token-like string that must not leak
    error = translate(CredentialUnavailableError("failed"), CALL)
    assert secret not in error.message
