"""CLI commands and pipeline steps, one module per feature; each registers itself on import."""
