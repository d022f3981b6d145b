"""Files shipped with biomm (demo data, gene table, tokenizer vocabularies, task definitions)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def resource(*parts: str) -> Path:
    """Path of a shipped file or folder: `resource("data", "synthea")`."""
    return ROOT.joinpath(*parts)
