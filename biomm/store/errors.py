"""Errors of the store, importable without DuckDB (the CLI maps them to one line and exit code 2)."""
from __future__ import annotations


class CohortError(RuntimeError):
    """A cohort that cannot be opened or written as asked."""
