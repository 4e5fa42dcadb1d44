"""The Key Vault emulator: vaults on loopback HTTPS with the real REST shapes, auth, limits and faults."""
