"""Making the IoT Edge runtime take new certificate files, and proving it did.

Modes (DESIGN.md, "Installing and activating"):
- `restart-request`: write a request file into a folder the host mounts; a small host helper
  (contrib/host, run by a systemd path unit) runs `iotedge system restart` and writes a result file
  back, which is read here. The request names the certificate, its files and its new thumbprint, so
  the helper can report which certificate the runtime came back with.
- `command`: run a configured command (an argument list, no shell) with the certificate's name,
  file and thumbprint in its environment; exit status 0 is success.
- `none`: nothing to do (a consumer that re-reads the files, or a certificate of the module's own).

Request: `<id>.request.json` {"id", "action": "restart", "certificate", "role", "thumbprint",
"files": {"cert", "key"}, "requestedAt"}; result: `<id>.result.json` {"id", "status": "ok"|"failed",
"message", "thumbprint"?}. Both are written atomically (temp file and rename).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from edgecert.config import ResolvedCertificate
from edgecert.core.timefmt import iso

__all__ = [
    "ActivationResult",
    "Activator",
    "CommandActivator",
    "NoActivation",
    "RestartRequestActivator",
    "write_json_atomically",
]


@dataclass(frozen=True)
class ActivationResult:
    """Whether the runtime took the new files; `thumbprint` is the certificate it now uses, when known."""

    ok: bool
    message: str
    thumbprint: str | None = None


class Activator(Protocol):
    """Makes the runtime take a certificate's new files and says whether it did, within `timeout`."""

    async def activate(
        self, certificate: ResolvedCertificate, *, thumbprint: str, timeout: timedelta
    ) -> ActivationResult:
        """Activate and verify."""
        ...


class NoActivation:
    """Mode `none`."""

    async def activate(
        self, certificate: ResolvedCertificate, *, thumbprint: str, timeout: timedelta
    ) -> ActivationResult:
        """Nothing to do."""
        del certificate, timeout
        return ActivationResult(ok=True, message="activation mode none", thumbprint=thumbprint)


class CommandActivator:
    """Mode `command`: run an argument list (no shell)."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)

    async def activate(
        self, certificate: ResolvedCertificate, *, thumbprint: str, timeout: timedelta
    ) -> ActivationResult:
        """Run the command with the certificate in its environment; exit status 0 is success."""
        env = {
            **os.environ,
            "EDGECERT_CERTIFICATE": certificate.name,
            "EDGECERT_CERT_FILE": str(certificate.paths.cert),
            "EDGECERT_THUMBPRINT": thumbprint,
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            return ActivationResult(ok=False, message=f"cannot run {self.command[0]}: {exc.strerror}")
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout.total_seconds())
        except TimeoutError:
            process.kill()
            await process.wait()
            return ActivationResult(ok=False, message=f"{self.command[0]} did not finish within {timeout}")
        last = output.decode(errors="replace").strip().splitlines()[-1:] if output else []
        detail = f": {last[0][:200]}" if last else ""
        if process.returncode != 0:
            return ActivationResult(ok=False, message=f"{self.command[0]} exited with {process.returncode}{detail}")
        return ActivationResult(ok=True, message=f"{self.command[0]} succeeded{detail}")


class RestartRequestActivator:
    """Mode `restart-request`: a request file for the host helper, and its result file."""

    def __init__(self, folder: Path, *, poll: timedelta = timedelta(milliseconds=250)) -> None:
        self.folder = folder
        self.poll = poll

    async def activate(
        self, certificate: ResolvedCertificate, *, thumbprint: str, timeout: timedelta
    ) -> ActivationResult:
        """Ask the host to restart the runtime and wait for its result."""
        request_id = uuid.uuid4().hex
        request = {
            "id": request_id,
            "action": "restart",
            "certificate": certificate.name,
            "role": certificate.role,
            "thumbprint": thumbprint,
            "files": {"cert": str(certificate.paths.cert), "key": str(certificate.paths.key)},
            "requestedAt": iso(datetime.now(UTC)),
        }
        request_file = self.folder / f"{request_id}.request.json"
        result_file = self.folder / f"{request_id}.result.json"
        try:
            write_json_atomically(request_file, request)
        except OSError as exc:
            return ActivationResult(
                ok=False,
                message=f"cannot write the restart request to {self.folder}: {exc.strerror} (is the folder "
                "mounted read-write into the module?)",
            )
        try:
            result = await self._wait(result_file, timeout)
        finally:
            for leftover in (request_file, result_file):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if result is None:
            return ActivationResult(
                ok=False,
                message=f"no result from the host helper within {timeout} (is edgecert-activate.path enabled "
                f"on the host and watching {self.folder}?)",
            )
        ok = result.get("status") == "ok"
        return ActivationResult(
            ok=ok,
            message=str(result.get("message") or ("restarted" if ok else "the host helper reported a failure")),
            thumbprint=result.get("thumbprint") if isinstance(result.get("thumbprint"), str) else None,
        )

    async def _wait(self, result_file: Path, timeout: timedelta) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout.total_seconds()
        while loop.time() < deadline:
            try:
                value = json.loads(result_file.read_text())
            except FileNotFoundError:
                await asyncio.sleep(self.poll.total_seconds())
                continue
            except ValueError:
                await asyncio.sleep(self.poll.total_seconds())  # written but not yet renamed? read again
                continue
            return value if isinstance(value, dict) else {"status": "failed", "message": "unreadable result"}
        return None


def write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    """Write JSON next to `path` and rename it into place, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
