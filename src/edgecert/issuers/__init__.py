"""The three ways edgecert gets a certificate through Key Vault (DESIGN.md, "Issuance modes")."""
