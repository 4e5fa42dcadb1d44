"""Fixtures shared by the sandbox tests: a Key Vault emulator per test module and a device identity per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgecert.sandbox.identity import Principal
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultEmulator]:
    with KeyVaultEmulator(tmp_path_factory.mktemp("kv")) as running:
        yield running


@pytest.fixture
def identity(emulator: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch) -> Principal:
    """A principal with no roles yet, used by the SDK's ManagedIdentityCredential through the IMDS emulator."""
    principal = emulator.add_principal("device")
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.imds_url(principal))
    return principal
