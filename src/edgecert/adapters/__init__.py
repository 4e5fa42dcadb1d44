"""Adapters: one module per external system (files, clock; Key Vault and the twin come later)."""
