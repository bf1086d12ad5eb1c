"""Privacy verification and attack suite (docs/privacy-verification.md)."""
