"""The agent's small state file: what must survive a restart.

The last good desired document (so a restart applies it before the twin answers), and per
certificate the consecutive failures, the failures in the current window and its start, the last
error, the last renewal and a pending activation (a swap whose activation was not yet verified).
Written atomically (temp file, fsync, `os.replace`, fsync of the folder) and mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AgentState", "CertificateState", "StateFile"]

_VERSION = 1


@dataclass
class CertificateState:
    """What the agent remembers of one certificate between runs (times ISO-8601 UTC)."""

    failures: int = 0
    failures_in_window: int = 0
    window_start: str | None = None
    last_error: dict[str, str] | None = None
    last_error_retryable: bool = False
    last_renewal: str | None = None
    #: Set between a swap and its verified activation: {"thumbprint", "previousThumbprint", "since"}.
    pending_activation: dict[str, str] | None = None
    rolled_back: dict[str, str] | None = None
    force_token: str | None = None


@dataclass
class AgentState:
    """Everything in the state file."""

    desired: dict[str, Any] | None = None
    desired_version: int | None = None
    certificates: dict[str, CertificateState] = field(default_factory=dict)

    def certificate(self, name: str) -> CertificateState:
        """The state of a certificate (created empty on first use)."""
        return self.certificates.setdefault(name, CertificateState())


class StateFile:
    """Reads and atomically rewrites the state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        """The saved state; an empty state when there is no file or it cannot be read."""
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return AgentState()
        if not isinstance(raw, dict) or raw.get("version") != _VERSION:
            return AgentState()
        known = set(CertificateState.__dataclass_fields__)
        certificates = {
            str(name): CertificateState(**{k: v for k, v in value.items() if k in known})
            for name, value in (raw.get("certificates") or {}).items()
            if isinstance(value, dict)
        }
        desired = raw.get("desired")
        return AgentState(
            desired=desired if isinstance(desired, dict) else None,
            desired_version=raw.get("desiredVersion") if isinstance(raw.get("desiredVersion"), int) else None,
            certificates=certificates,
        )

    def save(self, state: AgentState) -> None:
        """Replace the file with `state` (never half-written)."""
        document = {
            "version": _VERSION,
            "desired": state.desired,
            "desiredVersion": state.desired_version,
            "certificates": {name: asdict(value) for name, value in state.certificates.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = memoryview(json.dumps(document, indent=1).encode())
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
