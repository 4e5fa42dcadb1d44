"""The seams between the agent and the outside world, as Protocols, and the values they trade.

Adapters implement these (`adapters/filestore.py` is the `CertStore`); in-memory fakes implement
them in tests. Key Vault issuance, the twin and activation join in F3 and F4.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from edgecert.core.certinfo import KeyAndChain
from edgecert.core.validate import Expectations

__all__ = ["CertPaths", "CertStore", "Clock"]


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


class Clock(Protocol):
    """The source of `now` (timezone-aware UTC)."""

    def __call__(self) -> datetime:
        """Return the current instant."""
        ...


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
