"""The certificate store: atomic swaps, crash recovery at every step, key file modes, rollback."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgecert.adapters.filestore import FileCertStore, FileOps, write_new_file
from edgecert.core.certinfo import KeyAndChain, key_matches_certificate, load_certificates
from edgecert.core.validate import Expectations
from edgecert.errors import (
    ChainError,
    KeyMismatchError,
    OwnershipError,
    RecoveryError,
    ShapeError,
    StoreError,
    ValidityError,
)
from edgecert.ports import CertPaths
from tests.pki import Issued, bundle, make_ca, make_leaf

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DER = serialization.Encoding.DER


class Crash(Exception):  # noqa: N818 - it is the simulated power cut, not an error of ours
    """Raised by CrashingOps to stop a swap dead after a chosen step."""


class CrashingOps(FileOps):
    """FileOps that crashes after the `crash_at`-th step, tearing any file written but not yet fsynced.

    At every step it also checks that no key file is readable by group or others.
    """

    def __init__(self, crash_at: int, watch: list[Path]) -> None:
        self.crash_at = crash_at
        self.steps: list[tuple[str, str]] = []
        self.unsynced: set[Path] = set()
        self.watch = watch

    def checkpoint(self, op: str, path: Path) -> None:
        self.steps.append((op, path.name))
        if op == "write":
            self.unsynced.add(path)
        elif op == "fsync":
            self.unsynced.discard(path)
        assert_keys_private(self.watch)
        if len(self.steps) == self.crash_at:
            for torn in self.unsynced:  # a power cut loses data that was never fsynced
                if torn.exists():
                    data = torn.read_bytes()
                    torn.write_bytes(data[: len(data) // 2])
            raise Crash(f"crash after step {self.crash_at}: {op} {path.name}")


def assert_keys_private(folders: list[Path]) -> None:
    for folder in folders:
        for entry in folder.iterdir():
            if "key" in entry.name or entry.name.endswith(".swap"):
                mode = stat.S_IMODE(entry.stat().st_mode)
                assert mode & 0o077 == 0, f"{entry.name} is readable by others (mode {mode:o})"


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """Run every store test with umask 0, so key modes never depend on the umask being kind."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("Test Issuing CA", not_before=NOW - timedelta(days=365))


@pytest.fixture(scope="module")
def pairs(ca: Issued) -> dict[str, Issued]:
    """Three generations of the same device's certificate: p0 (oldest), a (live), b (new)."""
    return {
        gen: make_leaf(ca, "device-1", not_before=NOW - timedelta(days=days))
        for gen, days in (("p0", 80), ("a", 40), ("b", 1))
    }


def paths_in(tmp_path: Path, *, chain: bool = True) -> CertPaths:
    return CertPaths(
        tmp_path / "certs" / "device-id.pem",
        tmp_path / "secrets" / "device-id.key.pem",
        tmp_path / "certs" / "device-id.chain.pem" if chain else None,
    )


def expect(ca: Issued) -> Expectations:
    return Expectations(anchors=(ca.cert,), subject="CN=device-1", key_type="ec-p256", is_ca=False)


def store(ops: FileOps | None = None) -> FileCertStore:
    return FileCertStore(now=lambda: NOW, fs=ops)


def which(pair: KeyAndChain | None, pairs: dict[str, Issued]) -> str | None:
    if pair is None:
        return None
    assert key_matches_certificate(pair.key, pair.leaf), "live certificate and key do not match"
    for gen, issued in pairs.items():
        if issued.cert.public_bytes(DER) == pair.leaf.public_bytes(DER):
            assert key_matches_certificate(issued.key, pair.leaf)
            return gen
    raise AssertionError("the live certificate is none of the generations")


def leftovers(paths: CertPaths) -> list[str]:
    found = []
    for folder in {paths.cert.parent, paths.key.parent}:
        found += [p.name for p in folder.iterdir() if p.name.endswith((".new", ".tmp", ".swap"))]
    return sorted(found)


# -- crash matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chain", [True, False], ids=["with chain file", "cert and key only"])
def test_crash_after_every_step_then_recover_keeps_a_matching_pair(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued], chain: bool, figure: Callable[[str], None]
) -> None:
    """Crash a swap a -> b after each of its steps; recover() always leaves a or b, with previous kept."""
    outcomes: dict[str, int] = {}
    step = 0
    while True:
        step += 1
        root = tmp_path / f"run-{step}"
        paths = paths_in(root, chain=chain)
        store().install(paths, bundle(pairs["p0"], ca), expect(ca))
        store().install(paths, bundle(pairs["a"], ca), expect(ca))
        ops = CrashingOps(step, [paths.cert.parent, paths.key.parent])
        try:
            store(ops).install(paths, bundle(pairs["b"], ca), expect(ca))
        except Crash:
            pass
        else:
            break  # the swap finished before reaching this step: every step has been crashed once
        store().recover(paths)
        live = which(store().load(paths), pairs)
        previous = which(store().load_previous(paths), pairs)
        assert (live, previous) in {("a", "p0"), ("b", "a")}, f"step {step} {ops.steps[-1]}: {live=}, {previous=}"
        assert leftovers(paths) == [], f"step {step}: {leftovers(paths)}"
        assert_keys_private([paths.cert.parent, paths.key.parent])
        outcomes[f"{live}"] = outcomes.get(f"{live}", 0) + 1
    steps = len(ops.steps)
    figure(f"swap of {'3' if chain else '2'} files: {steps} steps, crashed after each; outcomes {outcomes}")
    assert outcomes.get("a", 0) > 0, "no crash point left the old pair (before commit)"
    assert outcomes.get("b", 0) > 0, "no crash point rolled forward to the new pair (after commit)"
    assert {op for op, _ in ops.steps} >= {"write", "fsync", "fsync-dir", "replace", "link", "unlink"}


def test_crash_during_recovery_is_repaired_by_the_next_recovery(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    """A power cut while recover() finishes a swap: the next recover() still ends with a matching pair."""
    # find the last step before the swap completes (inside the roll-forward, after commit)
    probe_root = tmp_path / "probe"
    probe = paths_in(probe_root)
    store().install(probe, bundle(pairs["a"], ca), expect(ca))
    counting = CrashingOps(10_000, [probe.cert.parent, probe.key.parent])
    store(counting).install(probe, bundle(pairs["b"], ca), expect(ca))
    commit = next(i for i, (op, name) in enumerate(counting.steps, 1) if op == "replace" and name.endswith(".swap"))
    total = len(counting.steps)
    for first_crash in range(commit, total):
        for second_crash in range(1, 12):
            root = tmp_path / f"r-{first_crash}-{second_crash}"
            paths = paths_in(root)
            store().install(paths, bundle(pairs["a"], ca), expect(ca))
            with pytest.raises(Crash):
                store(CrashingOps(first_crash, [])).install(paths, bundle(pairs["b"], ca), expect(ca))
            with contextlib.suppress(Crash):
                store(CrashingOps(second_crash, [])).recover(paths)
            store().recover(paths)
            assert which(store().load(paths), pairs) == "b"
            assert which(store().load_previous(paths), pairs) == "a"
            assert leftovers(paths) == []


# -- validation before the swap ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda ca, p, other: KeyAndChain(key=other["a"].key, chain=(p["b"].cert, ca.cert)), KeyMismatchError),
        (
            lambda ca, p, other: bundle(make_leaf(ca, "device-1", not_before=NOW - timedelta(days=100)), ca),
            ValidityError,
        ),
        (
            lambda ca, p, other: bundle(
                make_leaf(make_ca("Rogue CA", not_before=NOW - timedelta(days=1)), "device-1", not_before=NOW)
            ),
            ChainError,
        ),
        (lambda ca, p, other: bundle(make_leaf(ca, "device-2", not_before=NOW - timedelta(days=1)), ca), ShapeError),
        (
            lambda ca, p, other: bundle(
                make_leaf(ca, "device-1", not_before=NOW - timedelta(days=1), key_type="rsa-2048"), ca
            ),
            ShapeError,
        ),
    ],
    ids=[
        "key of another certificate",
        "already expired",
        "issued by a CA that is not the trust anchor",
        "subject of another device",
        "RSA where EC P-256 is configured",
    ],
)
def test_refuses_a_bad_bundle_and_leaves_live_files_alone(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued], make: object, error: type[Exception]
) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    before = {p: p.read_bytes() for _, p in paths.roles()}
    with pytest.raises(error, match="refusing to install"):
        store().install(paths, make(ca, pairs, pairs), expect(ca))  # type: ignore[operator]
    assert {p: p.read_bytes() for _, p in paths.roles()} == before
    assert leftovers(paths) == []
    assert store().load_previous(paths) is None


# -- files, modes, previous, rollback ------------------------------------------------------------


def test_first_install_writes_full_chain_key_and_chain_file(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    paths = paths_in(tmp_path)
    assert store().load(paths) is None  # nothing there yet is a value, not an error
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    certs = load_certificates(paths.cert.read_bytes())
    assert [c.subject.rfc4514_string() for c in certs] == ["CN=device-1", "CN=Test Issuing CA"]
    assert load_certificates(paths.chain.read_bytes()) == [ca.cert]  # type: ignore[union-attr]
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o644
    assert store().load_previous(paths) is None
    assert which(store().load(paths), pairs) == "a"


def test_swap_keeps_previous_and_live_modes(tmp_path: Path, ca: Issued, pairs: dict[str, Issued]) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    paths.cert.chmod(0o640)
    paths.key.chmod(0o400)
    store().install(paths, bundle(pairs["b"], ca), expect(ca))
    assert which(store().load(paths), pairs) == "b"
    assert which(store().load_previous(paths), pairs) == "a"
    assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o640
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o400
    assert stat.S_IMODE(paths.key.with_name(paths.key.name + ".previous").stat().st_mode) == 0o400


def test_a_world_readable_live_key_is_not_copied_wide(tmp_path: Path, ca: Issued, pairs: dict[str, Issued]) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    paths.key.chmod(0o644)  # someone loosened it by hand
    store().install(paths, bundle(pairs["b"], ca), expect(ca))
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_rollback_restores_the_previous_pair(tmp_path: Path, ca: Issued, pairs: dict[str, Issued]) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    store().install(paths, bundle(pairs["b"], ca), expect(ca))
    store().rollback(paths)
    assert which(store().load(paths), pairs) == "a"
    assert which(store().load_previous(paths), pairs) == "b"
    assert leftovers(paths) == []


def test_rollback_without_previous_says_there_is_nothing(tmp_path: Path, ca: Issued, pairs: dict[str, Issued]) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    with pytest.raises(StoreError, match="no previous"):
        store().rollback(paths)
    assert which(store().load(paths), pairs) == "a"


def test_certificate_without_its_key_is_an_error_not_nothing(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    paths.key.unlink()
    with pytest.raises(KeyMismatchError, match="does not"):
        store().load(paths)


def test_recover_refuses_a_journal_naming_foreign_files(tmp_path: Path, ca: Issued, pairs: dict[str, Issued]) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    paths.journal.write_text('{"version": 1, "files": [{"role": "cert", "live": "/etc/passwd", "new": "00"}]}')
    with pytest.raises(RecoveryError, match="/etc/passwd"):
        store().recover(paths)
    assert which(store().load(paths), pairs) == "a"


def test_recover_on_a_clean_store_does_nothing(tmp_path: Path, ca: Issued, pairs: dict[str, Issued]) -> None:
    paths = paths_in(tmp_path)
    assert store().recover(paths).action == "clean"
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    assert store().recover(paths).action == "clean"


def test_write_new_file_never_overwrites_without_force(tmp_path: Path) -> None:
    target = tmp_path / "device.key"
    write_new_file(target, b"first", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(StoreError, match="exists already"):
        write_new_file(target, b"second", mode=0o600)
    assert target.read_bytes() == b"first"
    write_new_file(target, b"third", mode=0o600, overwrite=True)
    assert target.read_bytes() == b"third"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


class DiskFullOps(FileOps):
    """Fails the first write of a key file with ENOSPC, as a full disk would."""

    def create(self, path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
        if path.name.startswith("device-id.key"):
            raise OSError(28, "No space left on device")
        super().create(path, data, mode, owner)


def test_a_full_disk_is_a_retryable_store_error_and_changes_nothing(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    with pytest.raises(StoreError, match="No space left") as caught:
        store(DiskFullOps()).install(paths, bundle(pairs["b"], ca), expect(ca))
    assert caught.value.retryable
    assert which(store().load(paths), pairs) == "a"
    assert leftovers(paths) == []


# -- owners: aziot-keyd must still be able to read a renewed key ----------------------------------

AZIOTKS = (4242, 4243)  # stands in for the aziotks user and group


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs CAP_CHOWN")
def test_swap_gives_new_files_the_owner_of_the_files_they_replace(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    os.chown(paths.key, *AZIOTKS)
    os.chown(paths.cert, 4244, 4245)
    store().install(paths, bundle(pairs["b"], ca), expect(ca))
    assert which(store().load(paths), pairs) == "b"
    assert (paths.key.stat().st_uid, paths.key.stat().st_gid) == AZIOTKS
    assert (paths.cert.stat().st_uid, paths.cert.stat().st_gid) == (4244, 4245)
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


class NoChownOps(FileOps):
    """Refuses every chown, as for a module running as a uid without CAP_CHOWN."""

    def chown(self, fd: int, owner: tuple[int, int]) -> None:
        raise PermissionError(1, "Operation not permitted")


def test_creating_a_key_for_an_owner_it_cannot_be_given_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "device-id.key.pem.new"
    with pytest.raises(OwnershipError, match=r"owner 4242:4243 .* could no longer open it"):
        NoChownOps().create(target, b"key", 0o600, AZIOTKS)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the live key to another uid needs CAP_CHOWN")
def test_a_key_that_would_lose_its_owner_is_refused_and_nothing_changes(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    os.chown(paths.key, *AZIOTKS)
    with pytest.raises(OwnershipError, match=r"owner 4242:4243 .* could no longer open it") as caught:
        store(NoChownOps()).install(paths, bundle(pairs["b"], ca), expect(ca))
    assert not caught.value.retryable
    assert "createOptions" in caught.value.remedy
    assert which(store().load(paths), pairs) == "a"
    assert leftovers(paths) == []


def test_without_chown_a_same_owner_or_world_readable_file_is_still_renewed(
    tmp_path: Path, ca: Issued, pairs: dict[str, Issued]
) -> None:
    paths = paths_in(tmp_path)
    store().install(paths, bundle(pairs["a"], ca), expect(ca))
    if os.geteuid() == 0:
        os.chown(paths.cert, *AZIOTKS)  # a 0644 certificate stays readable by its former owner
    store(NoChownOps()).install(paths, bundle(pairs["b"], ca), expect(ca))
    assert which(store().load(paths), pairs) == "b"
    assert paths.key.stat().st_uid == os.geteuid()
