"""The original network: golden-value check and checkpoint conversion."""
