"""The seams between the agent and the outside world, as Protocols, and the values they trade.

Adapters implement these (`adapters/filestore.py` is the `CertStore`; `issuers/` hold the three
`Issuer`s on the Key Vault adapter); in-memory fakes implement them in tests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509

from edgecert.core.certinfo import KeyAndChain
from edgecert.core.validate import Expectations

if TYPE_CHECKING:
    from edgecert.config import ResolvedCertificate

__all__ = [
    "CertPaths",
    "CertStore",
    "ConnectionLost",
    "DesiredPatch",
    "IssueRequest",
    "Issued",
    "Issuer",
    "MethodCall",
    "Reconnected",
    "TwinChannel",
    "TwinEvent",
]


@dataclass(frozen=True, slots=True)
class CertPaths:
    """The live files of one managed certificate (absolute paths)."""

    cert: Path
    key: Path
    chain: Path | None = None

    def roles(self) -> list[tuple[str, Path]]:
        """(role, live path) for every file of the set, in the order they are swapped."""
        found = [("cert", self.cert), ("key", self.key)]
        if self.chain is not None:
            found.append(("chain", self.chain))
        return found

    @property
    def journal(self) -> Path:
        """Where the commit record of a swap in progress lives."""
        return self.cert.with_name(self.cert.name + ".swap")


class CertStore(Protocol):
    """Reads and atomically replaces the files of managed certificates."""

    def load(self, paths: CertPaths) -> KeyAndChain | None:
        """The live key and chain, or None when nothing is installed yet."""
        ...

    def load_previous(self, paths: CertPaths) -> KeyAndChain | None:
        """The pair kept from before the last swap, or None."""
        ...

    def install(self, paths: CertPaths, bundle: KeyAndChain, expect: Expectations) -> None:
        """Validate and swap in a new pair, keeping the old one as previous."""
        ...

    def rollback(self, paths: CertPaths) -> None:
        """Swap the previous pair back in."""
        ...


@dataclass(frozen=True)
class IssueRequest:
    """What an issuer needs to renew one certificate for one device."""

    certificate: ResolvedCertificate
    device_id: str
    installed: KeyAndChain | None = None
    #: Retries never wait past this instant (the schedule's urgency point).
    deadline: datetime | None = None


@dataclass(frozen=True)
class Issued:
    """A new key and chain from an issuer, with what the chain must build to."""

    bundle: KeyAndChain
    anchors: tuple[x509.Certificate, ...]
    #: The Key Vault version it came from, where there is one.
    version: str | None = None


class Issuer(Protocol):
    """Gets a new certificate for a device: vault-ca, vault-managed or vault-fetch."""

    async def issue(self, request: IssueRequest) -> Issued | None:
        """A new key and chain, or None when there is nothing newer to install (vault-fetch)."""
        ...


@dataclass(frozen=True)
class DesiredPatch:
    """A desired-properties patch (possibly the whole desired section) with its `$version`."""

    patch: dict[str, Any]


@dataclass(frozen=True)
class MethodCall:
    """A direct method request; answer it with `TwinChannel.respond`."""

    request_id: str
    name: str
    payload: Any
    request: Any  # the SDK's own request object, kept for the response


@dataclass(frozen=True)
class Reconnected:
    """The connection came back (or a new client was made): read the twin again and report again."""


@dataclass(frozen=True)
class ConnectionLost:
    """The SDK gave up reconnecting (refused credentials, unreachable proxy, TLS): make a new client."""

    reason: str


TwinEvent = DesiredPatch | MethodCall | Reconnected | ConnectionLost


class TwinChannel(Protocol):
    """The agent's channel to its module twin."""

    events: asyncio.Queue[TwinEvent]

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect, retrying until connected or `stop` is set."""
        ...

    async def restart(self) -> None:
        """Make a new client (stale trust bundle, refused credentials)."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...

    async def desired(self) -> dict[str, Any]:
        """The whole desired section."""
        ...

    async def report(self, patch: dict[str, Any]) -> None:
        """Patch the reported properties."""
        ...

    async def respond(self, call: MethodCall, status: int, payload: Any) -> None:
        """Answer a direct method."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the client is connected now."""
        ...
