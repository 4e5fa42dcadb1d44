"""Key Vault authorization: RBAC role assignments or access policies, and the real 403 bodies.

A vault uses one permission model (reference keyvault-and-identity.md §4): with `rbac`, access
policies are ignored; with `access-policy`, role assignments are ignored. RBAC assignments name a
principal or a group, at vault scope (`/`) or object scope (`/certificates/<n>`, `/secrets/<n>`,
`/keys/<n>`); a role at a certificate's scope covers that certificate object only, not the secret
or key of the same name (Azure/azure-sdk-for-python#19919). Role assignments are counted per
subscription and refused past 4,000, the Azure limit that cannot be raised.
"""

from __future__ import annotations

import fnmatch
import threading
import uuid
from dataclasses import dataclass, field

__all__ = [
    "ACCESS_POLICY_PERMISSIONS",
    "BUILT_IN_ROLES",
    "ROLE_ASSIGNMENT_LIMIT",
    "AccessPolicy",
    "Denial",
    "RoleAssignment",
    "RoleAssignments",
]

PREFIX = "Microsoft.KeyVault/vaults/"
ROLE_ASSIGNMENT_LIMIT = 4000

#: Built-in roles and their data actions, relative to `Microsoft.KeyVault/vaults/` (§4).
BUILT_IN_ROLES: dict[str, tuple[str, ...]] = {
    "Key Vault Administrator": ("*",),
    "Key Vault Certificates Officer": ("certificatecas/*", "certificates/*", "certificatecontacts/write"),
    "Key Vault Certificate User": (
        "certificates/read",
        "secrets/getSecret/action",
        "secrets/readMetadata/action",
        "keys/read",
    ),
    "Key Vault Secrets Officer": ("secrets/*",),
    "Key Vault Secrets User": ("secrets/getSecret/action", "secrets/readMetadata/action"),
    "Key Vault Crypto Officer": ("keys/*", "keyrotationpolicies/*"),
    "Key Vault Crypto User": (
        "keys/read",
        "keys/update/action",
        "keys/backup/action",
        "keys/encrypt/action",
        "keys/decrypt/action",
        "keys/wrap/action",
        "keys/unwrap/action",
        "keys/sign/action",
        "keys/verify/action",
    ),
    "Key Vault Reader": ("*/read", "secrets/readMetadata/action"),
}

#: Legacy access-policy permission names per object type (ARM `Permissions`, §4).
ACCESS_POLICY_PERMISSIONS: dict[str, frozenset[str]] = {
    "keys": frozenset(
        (
            "all encrypt decrypt wrapKey unwrapKey sign verify get list create update import delete backup "
            "restore recover purge release rotate getrotationpolicy setrotationpolicy"
        ).split()
    ),
    "secrets": frozenset("all get list set delete backup restore recover purge".split()),
    "certificates": frozenset(
        (
            "all get list delete create import update managecontacts getissuers listissuers setissuers "
            "deleteissuers manageissuers recover purge backup restore"
        ).split()
    ),
}


@dataclass(frozen=True)
class RoleAssignment:
    """A built-in role given to a principal or group at a scope of one vault."""

    vault: str
    principal_id: str
    role: str
    scope: str
    assignment_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class AccessPolicy:
    """One identity's permission lists in an access-policy vault."""

    object_id: str
    keys: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)
    certificates: set[str] = field(default_factory=set)

    def allows(self, kind: str, permission: str) -> bool:
        """True when the list for `kind` holds `permission` or `all`."""
        granted: set[str] = getattr(self, kind)
        return permission in granted or "all" in granted


@dataclass(frozen=True)
class Denial:
    """Why a request is refused: the 403 body's inner code and message."""

    inner_code: str
    message: str


class RoleAssignments:
    """Every role assignment of the sandbox's subscription (all vaults share the 4,000 limit)."""

    def __init__(self, limit: int = ROLE_ASSIGNMENT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._items: list[RoleAssignment] = []
        self.limit = limit

    def add(self, vault: str, principal_id: str, role: str, scope: str) -> RoleAssignment:
        """Record an assignment; ValueError for an unknown role or scope, OverflowError past the limit."""
        if role not in BUILT_IN_ROLES:
            raise ValueError(f"unknown role {role!r}; built-in roles: {', '.join(BUILT_IN_ROLES)}")
        normalized = normalize_scope(scope)
        with self._lock:
            if len(self._items) >= self.limit:
                raise OverflowError(
                    f"No more role assignments can be created: the subscription has {len(self._items)}, "
                    f"the limit of {self.limit} (RoleAssignmentLimitExceeded)"
                )
            assignment = RoleAssignment(vault, principal_id, role, normalized)
            self._items.append(assignment)
        return assignment

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def covering(self, vault: str, identities: set[str], action: str, object_scope: str) -> RoleAssignment | None:
        """The first assignment that grants `action` on `object_scope` to one of `identities`."""
        with self._lock:
            candidates = [a for a in self._items if a.vault == vault and a.principal_id in identities]
        for assignment in candidates:
            if assignment.scope not in ("/", object_scope):
                continue
            if any(fnmatch.fnmatchcase(action, pattern) for pattern in BUILT_IN_ROLES[assignment.role]):
                return assignment
        return None


def normalize_scope(scope: str) -> str:
    """`/`, or `/certificates/<n>`, `/secrets/<n>`, `/keys/<n>` (relative to the vault)."""
    text = "/" + scope.strip().strip("/")
    if text == "/":
        return text
    parts = text.split("/")[1:]
    if len(parts) != 2 or parts[0] not in ("certificates", "secrets", "keys") or not parts[1]:
        raise ValueError(f"scope {scope!r} is not '/', '/certificates/<n>', '/secrets/<n>' or '/keys/<n>'")
    return text
