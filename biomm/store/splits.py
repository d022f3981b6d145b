"""Deterministic subject splits by a hash of the subject id: stable as the cohort grows."""
from __future__ import annotations

import hashlib

DEFAULT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def split_of(subject_id: str, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """The split (`train` / `val` / `test`) of a subject, from a hash of its id: stable as the cohort grows."""
    h = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    acc = 0.0
    for name, frac in fractions:
        acc += frac
        if u < acc:
            return name
    return fractions[-1][0]
