"""The certificate store: the only code that writes certificate and key files.

One managed certificate is a set of live files with explicit paths, as IoT Edge's config.toml
names them: the certificate (full chain, leaf first), the private key and, optionally, a chain file
(the issuing CAs). A swap never leaves a certificate paired with the wrong key after `recover()`:

1. write `<live>.new` for every file (keys created 0600 with O_EXCL, so never readable by others),
   fsync each file and its directory;
2. re-read the new files and validate them (key matches certificate, chain builds to the trust
   anchor, validity covers now, subject and key type as configured); on failure delete them and
   raise — the live files are untouched;
3. commit: write the journal `<cert>.swap` (temp file, fsync, `os.replace`, fsync directory);
4. hard-link every live file to `<live>.previous` (through a temp name and `os.replace`);
5. `os.replace` every `<live>.new` over its live file; fsync the directories;
6. delete the journal.

`recover()` runs on start: with a journal it finishes the swap (roll forward, checked against the
SHA-256 of each new file recorded in the journal); without one it deletes half-written `.new` files
(roll back). Either way the live certificate and key match, and `*.previous` holds the pair that was
live before the last committed swap (client-go's FileStore does the same with symlinks; IoT Edge's
separate cert and key paths need the journal instead).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization

from edgecert.core.certinfo import (
    KeyAndChain,
    ParseError,
    load_certificates,
    load_private_key,
    order_chain,
)
from edgecert.core.validate import Expectations, check_bundle
from edgecert.crypto import key_to_pem
from edgecert.errors import (
    CertificateError,
    ChainError,
    KeyMismatchError,
    OwnershipError,
    RecoveryError,
    ShapeError,
    StoreError,
    UnreadableError,
    ValidityError,
)
from edgecert.ports import CertPaths

__all__ = ["FileCertStore", "FileOps", "RecoveryReport", "write_new_file"]

KEY_MODE = 0o600
CERT_MODE = 0o644
_JOURNAL_VERSION = 1
_PROBLEM_ERRORS: dict[str, type[CertificateError]] = {
    "key": KeyMismatchError,
    "chain": ChainError,
    "validity": ValidityError,
    "shape": ShapeError,
}


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `recover()` did: nothing, finished an interrupted swap, or removed a half-written one."""

    action: str  # "clean" | "rolled-forward" | "rolled-back"
    files: tuple[str, ...] = field(default_factory=tuple)


class FileOps:
    """The filesystem primitives the store uses, each followed by `checkpoint(op, path)`.

    Tests subclass this and raise from `checkpoint` to simulate a crash after any step.
    """

    def checkpoint(self, op: str, path: Path) -> None:
        """Called after every primitive; does nothing in production."""

    def create(self, path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
        """Create `path` exclusively with `mode` (never wider), write `data`, fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed a certificate's 0644
            if owner is not None:
                self._give_owner(fd, path, mode, owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self.checkpoint("write", path)
            os.fsync(fd)
            self.checkpoint("fsync", path)
        finally:
            os.close(fd)

    def chown(self, fd: int, owner: tuple[int, int]) -> None:
        """Give the open file `fd` the owner `(uid, gid)`; raises PermissionError without CAP_CHOWN."""
        os.fchown(fd, *owner)

    def _give_owner(self, fd: int, path: Path, mode: int, owner: tuple[int, int]) -> None:
        """Keep the replaced file's owner; refuse when its owner could no longer read the new file."""
        try:
            self.chown(fd, owner)
        except PermissionError:
            info = os.fstat(fd)
            if (info.st_uid, info.st_gid) == owner or mode & stat.S_IROTH:
                return  # same owner anyway, or readable by everyone (a certificate's 0644)
            raise OwnershipError(
                f"cannot give {path} the owner {owner[0]}:{owner[1]} of the file it replaces "
                f"(edgecert runs as uid {os.geteuid()} without CAP_CHOWN); with mode {mode:04o} "
                "its reader, e.g. aziot-keyd, could no longer open it, so nothing was changed"
            ) from None

    def read(self, path: Path) -> bytes:
        """Read a whole file."""
        return path.read_bytes()

    def link(self, source: Path, target: Path) -> None:
        """Hard-link `source` to `target` (copying with the same mode where links are refused)."""
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            info = source.stat()
            self.create(target, source.read_bytes(), stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid))
        self.checkpoint("link", target)

    def replace(self, source: Path, target: Path) -> None:
        """Atomically rename `source` over `target`."""
        source.replace(target)
        self.checkpoint("replace", target)

    def unlink(self, path: Path) -> None:
        """Remove `path` if it exists."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            self.checkpoint("unlink", path)

    def fsync_dir(self, path: Path) -> None:
        """Make a directory's entries durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.checkpoint("fsync-dir", path)


class FileCertStore:
    """Reads, swaps, rolls back and repairs the certificate files of managed certificates."""

    def __init__(self, *, now: Callable[[], datetime], fs: FileOps | None = None) -> None:
        self._now = now
        self._fs = fs or FileOps()

    # -- reading -------------------------------------------------------------------------------

    def load(self, paths: CertPaths) -> KeyAndChain | None:
        """Read the live certificate and key; None when no certificate is installed yet."""
        return self._load(paths.cert, paths.key, paths.chain)

    def load_previous(self, paths: CertPaths) -> KeyAndChain | None:
        """Read the pair kept from before the last swap; None when there is none."""
        chain = _previous(paths.chain) if paths.chain is not None else None
        return self._load(_previous(paths.cert), _previous(paths.key), chain)

    def _load(self, cert: Path, key: Path, chain: Path | None) -> KeyAndChain | None:
        try:
            cert_bytes = self._fs.read(cert)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {cert}: {exc.strerror}") from exc
        try:
            key_bytes = self._fs.read(key)
        except FileNotFoundError:
            raise KeyMismatchError(
                f"{cert} exists but its key {key} does not",
                remedy=f"restore {key} (or its '.previous') or renew with 'edgecert renew --force'",
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot read {key}: {exc.strerror}") from exc
        chain_bytes = b""
        if chain is not None:
            with contextlib.suppress(FileNotFoundError):
                chain_bytes = self._fs.read(chain)
        return _parse(cert_bytes, key_bytes, chain_bytes, where=str(cert))

    # -- swapping ------------------------------------------------------------------------------

    def install(self, paths: CertPaths, bundle: KeyAndChain, expect: Expectations) -> None:
        """Validate `bundle` and make it the live certificate, keeping the old pair as `.previous`."""
        contents = _contents(paths, bundle)
        self._swap(paths, contents, expect)

    def rollback(self, paths: CertPaths) -> None:
        """Make the `.previous` pair live again; the pair it replaces becomes `.previous`.

        Only the parse and key-match checks apply: the previous pair was good when it was live.
        """
        contents: dict[str, bytes] = {}
        for role, live in paths.roles():
            try:
                contents[role] = self._fs.read(_previous(live))
            except FileNotFoundError:
                if role == "chain":
                    continue
                raise StoreError(
                    f"no previous {role} to roll back to ({_previous(live)} is missing)",
                    remedy="there is nothing to roll back to; renew instead",
                ) from None
        self._swap(paths, contents, Expectations())

    def _swap(self, paths: CertPaths, contents: dict[str, bytes], expect: Expectations) -> None:
        self.recover(paths)
        live_files = {role: live for role, live in paths.roles() if role in contents}
        dirs = _dirs(live_files.values(), paths.journal)
        try:
            for directory in dirs:
                # a missing folder is made private if it will hold a key, like /var/aziot/secrets
                directory.mkdir(parents=True, exist_ok=True, mode=0o700 if directory == paths.key.parent else 0o755)
            for role, live in live_files.items():
                new = _new(live)
                self._fs.unlink(new)
                self._fs.create(new, contents[role], *self._mode_and_owner(role, live))
            for directory in dirs:
                self._fs.fsync_dir(directory)
            self._check_written(paths, live_files, expect)
            journal = {
                "version": _JOURNAL_VERSION,
                "files": [
                    {
                        "role": role,
                        "live": str(live),
                        "new": _sha256(contents[role]),
                        "old": self._hash_or_none(live),
                    }
                    for role, live in live_files.items()
                ],
            }
            tmp = paths.journal.with_name(paths.journal.name + ".tmp")
            self._fs.unlink(tmp)
            self._fs.create(tmp, json.dumps(journal).encode(), KEY_MODE, None)
            self._fs.replace(tmp, paths.journal)
            self._fs.fsync_dir(paths.journal.parent)
        except (CertificateError, OwnershipError):
            self._discard(_new(live) for live in live_files.values())
            raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._discard(_new(live) for live in live_files.values())
            raise StoreError(f"could not write the new certificate files: {exc}") from exc
        try:
            self._roll_forward(paths, journal)
        except OSError as exc:
            raise StoreError(
                f"swap interrupted after commit: {exc}; 'recover()' finishes it on the next start"
            ) from exc

    def _check_written(self, paths: CertPaths, live_files: dict[str, Path], expect: Expectations) -> None:
        written = {role: self._fs.read(_new(live)) for role, live in live_files.items()}
        try:
            bundle = _parse(written["cert"], written["key"], written.get("chain", b""), where=str(paths.cert))
        except CertificateError as exc:
            raise type(exc)(f"refusing to install: {exc.message}", remedy=exc.remedy) from None
        problems = check_bundle(bundle, expect, now=self._now())
        if problems:
            first = problems[0]
            raise _PROBLEM_ERRORS[first.kind]("refusing to install: " + "; ".join(p.message for p in problems))

    def _roll_forward(self, paths: CertPaths, journal: dict[str, object]) -> list[str]:
        entries = _journal_entries(journal, paths)
        done: list[str] = []
        for _role, live, new_hash, old_hash in entries:
            current = self._hash_or_none(live)
            if old_hash is not None and current == old_hash:  # not swapped yet (or unchanged content)
                self._keep_previous(live)
            elif current not in (None, new_hash):
                raise RecoveryError(
                    f"{live} changed outside edgecert during a swap; refusing to overwrite it",
                    remedy=f"check {live}; delete {paths.journal} once the files are right",
                )
        for role, live, new_hash, _old in entries:
            new = _new(live)
            if self._hash_or_none(live) == new_hash:
                self._fs.unlink(new)  # already in place, or the content did not change
                continue
            if self._hash_or_none(new) != new_hash:
                raise RecoveryError(
                    f"the new {role} file {new} is missing or altered; cannot finish the swap",
                    remedy=(
                        f"restore the '.previous' files of {paths.cert} and {paths.key} by hand, "
                        f"then delete {paths.journal}"
                    ),
                )
            self._fs.replace(new, live)
            done.append(role)
        for directory in _dirs((live for _r, live, _n, _o in entries), paths.journal):
            self._fs.fsync_dir(directory)
        self._fs.unlink(paths.journal)
        self._fs.fsync_dir(paths.journal.parent)
        return done

    def _keep_previous(self, live: Path) -> None:
        previous = _previous(live)
        with contextlib.suppress(FileNotFoundError):
            if previous.samefile(live):
                return  # rename() between two links of one file does nothing and would leave the temp name
        tmp = previous.with_name(previous.name + ".tmp")
        self._fs.unlink(tmp)
        self._fs.link(live, tmp)
        self._fs.replace(tmp, previous)

    # -- recovery ------------------------------------------------------------------------------

    def recover(self, paths: CertPaths) -> RecoveryReport:
        """Finish a committed swap or remove an uncommitted one; safe to call at any time."""
        try:
            raw = self._fs.read(paths.journal)
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise StoreError(f"cannot read {paths.journal}: {exc.strerror}") from exc
        journal = _decode_journal(raw)
        try:
            if journal is not None:
                done = self._roll_forward(paths, journal)
                return RecoveryReport("rolled-forward", tuple(done))
            leftovers = [p for p in self._leftovers(paths) if p.exists()]
            self._discard(leftovers)
        except OSError as exc:
            raise RecoveryError(f"could not repair an interrupted swap: {exc}") from exc
        if raw is not None:
            self._fs.unlink(paths.journal)  # a journal that never finished writing is no commit
        if leftovers:
            return RecoveryReport("rolled-back", tuple(str(p) for p in leftovers))
        return RecoveryReport("clean")

    def _leftovers(self, paths: CertPaths) -> Iterator[Path]:
        for _role, live in paths.roles():
            yield _new(live)
            yield _previous(live).with_name(_previous(live).name + ".tmp")
        yield paths.journal.with_name(paths.journal.name + ".tmp")

    def _discard(self, files: Iterable[Path]) -> None:
        for path in files:
            self._fs.unlink(path)

    # -- helpers -------------------------------------------------------------------------------

    def _hash_or_none(self, path: Path) -> str | None:
        try:
            return _sha256(self._fs.read(path))
        except FileNotFoundError:
            return None

    @staticmethod
    def _mode_and_owner(role: str, live: Path) -> tuple[int, tuple[int, int] | None]:
        try:
            info = live.stat()
        except FileNotFoundError:
            return (KEY_MODE if role == "key" else CERT_MODE), None
        mode = stat.S_IMODE(info.st_mode)
        # A key is never wider than 0600, whatever the live file had.
        mode = (mode & KEY_MODE) or KEY_MODE if role == "key" else mode
        return mode, (info.st_uid, info.st_gid)


def write_new_file(path: Path, data: bytes, *, mode: int, overwrite: bool = False) -> None:
    """Write a standalone file (e.g. `edgecert csr` output) created with `mode` from the first byte.

    Without `overwrite` an existing file is an error, so a key is never lost by accident; with it,
    the file is written beside the target and renamed over it.
    """
    ops = FileOps()
    target = path if not overwrite else path.with_name(path.name + ".new")
    try:
        if overwrite:
            ops.unlink(target)
        ops.create(target, data, mode, None)
        if overwrite:
            ops.replace(target, path)
        ops.fsync_dir(path.parent if str(path.parent) else Path())
    except FileExistsError:
        raise StoreError(
            f"{path} exists already; refusing to overwrite it",
            remedy="choose another file, or pass --force to replace it",
        ) from None
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror}", remedy="check the folder exists and is writable"
        ) from None


def _contents(paths: CertPaths, bundle: KeyAndChain) -> dict[str, bytes]:
    pem = serialization.Encoding.PEM
    full = b"".join(c.public_bytes(pem) for c in bundle.chain)
    contents = {"cert": full, "key": key_to_pem(bundle.key)}
    if paths.chain is not None:
        issuers = bundle.chain[1:] or bundle.chain[:1]
        contents["chain"] = b"".join(c.public_bytes(pem) for c in issuers)
    return contents


def _parse(cert_bytes: bytes, key_bytes: bytes, chain_bytes: bytes, *, where: str) -> KeyAndChain:
    try:
        key = load_private_key(key_bytes)
        certs = load_certificates(cert_bytes)
        extra = load_certificates(chain_bytes) if chain_bytes.strip() else []
    except ParseError as exc:
        raise UnreadableError(f"{where}: {exc}") from None
    seen = {c.fingerprint(hashes.SHA256()) for c in certs}
    certs += [c for c in extra if c.fingerprint(hashes.SHA256()) not in seen]
    try:
        return KeyAndChain(key=key, chain=tuple(order_chain(key, certs)))
    except ParseError:
        raise KeyMismatchError(f"{where}: the private key does not match the certificate") from None


def _journal_entries(journal: dict[str, object], paths: CertPaths) -> list[tuple[str, Path, str, str | None]]:
    allowed = {str(live): role for role, live in paths.roles()}
    entries = []
    files = journal.get("files")
    if journal.get("version") != _JOURNAL_VERSION or not isinstance(files, list):
        raise RecoveryError(f"{paths.journal} is not a swap journal of this edgecert version")
    for item in files:
        live = item.get("live") if isinstance(item, dict) else None
        if live not in allowed:
            raise RecoveryError(
                f"{paths.journal} names {live!r}, which is not a file of this certificate",
                remedy=f"check the configured paths; delete {paths.journal} once the files are right",
            )
        entries.append((allowed[live], Path(live), str(item["new"]), item.get("old")))
    return entries


def _decode_journal(raw: bytes | None) -> dict[str, object] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _dirs(files: Iterable[Path], *extra: Path) -> list[Path]:
    return list(dict.fromkeys(path.parent for path in [*files, *extra]))


def _new(live: Path) -> Path:
    return live.with_name(live.name + ".new")


def _previous(live: Path) -> Path:
    return live.with_name(live.name + ".previous")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
