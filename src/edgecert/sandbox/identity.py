"""The managed-identity emulator: principals, groups, and an IMDS-compatible token endpoint.

azure-identity's `ManagedIdentityCredential` reaches it unmodified through
`AZURE_POD_IDENTITY_AUTHORITY_HOST=<principal's base URL>` (reference keyvault-and-identity.md §6:
the IMDS path, a path prefix allowed, no probe when that variable is set). IMDS is plain HTTP in
Azure too, and the SDK's IMDS path trusts no custom CA, so this endpoint is plain HTTP on loopback.

Each principal has its own base URL, standing for one device's system-assigned identity; a
`client_id` query selects a user-assigned identity instead. Tokens are ES256 JWTs signed with a key
of this process; the Key Vault emulator verifies them (issuer, audience, expiry) and takes the
caller from `oid`.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

__all__ = ["Group", "IdentityDirectory", "Principal", "TokenError", "TokenIssuer", "imds_app"]

TENANT_ID = "72f988bf-0000-4000-8000-00000000ed9e"
ISSUER = f"https://sts.windows.net/{TENANT_ID}/"
TOKEN_LIFETIME = timedelta(seconds=3599)


@dataclass
class Principal:
    """A managed identity (a device's system-assigned identity, or a user-assigned one)."""

    name: str
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    assigned: bool = True


@dataclass
class Group:
    """An Entra ID group: how a fleet of device identities shares one role assignment."""

    name: str
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    members: set[str] = field(default_factory=set)


class IdentityDirectory:
    """The principals and groups of the sandbox's tenant (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.principals: dict[str, Principal] = {}
        self.groups: dict[str, Group] = {}

    def add_principal(self, name: str, *, assigned: bool = True) -> Principal:
        """Create a principal; `assigned=False` stands for a resource with no identity assigned."""
        principal = Principal(name, assigned=assigned)
        with self._lock:
            self.principals[principal.object_id] = principal
        return principal

    def add_group(self, name: str, members: list[str]) -> Group:
        """Create a group of principals (by object id)."""
        unknown = [m for m in members if m not in self.principals]
        if unknown:
            raise KeyError(f"unknown principals: {', '.join(unknown)}")
        group = Group(name, members=set(members))
        with self._lock:
            self.groups[group.object_id] = group
        return group

    def by_client_id(self, client_id: str) -> Principal | None:
        """The principal with this client id, if any."""
        with self._lock:
            return next((p for p in self.principals.values() if p.client_id == client_id), None)

    def memberships(self, object_id: str) -> set[str]:
        """The object id itself and every group it belongs to (what role assignments may name)."""
        with self._lock:
            return {object_id} | {g.object_id for g in self.groups.values() if object_id in g.members}


class TokenError(Exception):
    """A bearer token is not one this sandbox issued for this audience, or it has expired."""


class TokenIssuer:
    """Signs and verifies the sandbox's access tokens (ES256 JWTs)."""

    def __init__(self, *, now: Callable[[], datetime] | None = None, lifetime: timedelta = TOKEN_LIFETIME) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._now = now or (lambda: datetime.now(UTC))
        self.lifetime = lifetime
        self.key_id = uuid.uuid4().hex

    def issue(self, principal: Principal, resource: str) -> tuple[str, datetime]:
        """A token for `principal` with audience `resource`, and its expiry."""
        now = self._now()
        expires = now + self.lifetime
        claims = {
            "aud": resource,
            "iss": ISSUER,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()) - 300,
            "exp": int(expires.timestamp()),
            "oid": principal.object_id,
            "sub": principal.object_id,
            "appid": principal.client_id,
            "tid": TENANT_ID,
            "idtyp": "app",
        }
        header = {"alg": "ES256", "typ": "JWT", "kid": self.key_id}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input.decode()}.{_b64(signature)}", expires

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Return the claims of a valid token; raise TokenError saying why it is not."""
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header = json.loads(_unb64(header_b64))
            claims: dict[str, Any] = json.loads(_unb64(claims_b64))
            signature = _unb64(signature_b64)
        except ValueError:
            raise TokenError("AKV10000: the bearer token is malformed") from None
        if header.get("alg") != "ES256" or len(signature) != 64:
            raise TokenError("AKV10032: the token is not signed by a trusted issuer")
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        try:
            self._key.public_key().verify(
                encode_dss_signature(r, s), f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            raise TokenError("AKV10032: the token signature is invalid") from None
        now = int(self._now().timestamp())
        if claims.get("iss") != ISSUER:
            raise TokenError(f"AKV10032: Invalid issuer. Expected {ISSUER}")
        if claims.get("aud") != audience:
            raise TokenError(f"AKV10022: Invalid audience. Expected {audience}, found: {claims.get('aud')}")
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            raise TokenError("AKV10013: the token has expired")
        if not isinstance(claims.get("nbf"), int) or claims["nbf"] > now:
            raise TokenError("AKV10015: the token is not yet valid")
        return claims


def imds_app(directory: IdentityDirectory, issuer: TokenIssuer) -> web.Application:
    """The IMDS token endpoint under `/principals/{objectId}/metadata/identity/oauth2/token`."""

    async def token(request: web.Request) -> web.Response:
        if request.headers.get("Metadata", "").lower() != "true":
            return _imds_error(400, "invalid_request", "Required metadata header not specified")
        resource = request.query.get("resource", "")
        if not resource:
            return _imds_error(400, "invalid_request", "Required audience parameter not specified")
        client_id = request.query.get("client_id")
        principal = (
            directory.by_client_id(client_id)
            if client_id
            else directory.principals.get(request.match_info["object_id"])
        )
        if principal is None or not principal.assigned:
            return _imds_error(400, "invalid_request", "Identity not found")
        access_token, expires = issuer.issue(principal, resource)
        seconds = str(int(issuer.lifetime.total_seconds()))
        return web.json_response(
            {
                "access_token": access_token,
                "client_id": principal.client_id,
                "expires_in": seconds,
                "expires_on": str(int(expires.timestamp())),
                "ext_expires_in": seconds,
                "not_before": str(int((expires - issuer.lifetime).timestamp())),
                "resource": resource,
                "token_type": "Bearer",
            }
        )

    app = web.Application()
    app.router.add_get("/principals/{object_id}/metadata/identity/oauth2/token", token)
    return app


def _imds_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
