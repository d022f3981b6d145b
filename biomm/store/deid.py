"""Keyed pseudonymisation shared by every reader: subject ids, UIDs and per-patient date shifts.

One secret key per cohort (`deid.key` in the cohort folder, or given by the user) makes the same
source identifier map to the same pseudonym in FHIR and DICOM ingest, so links survive
de-identification while the source ids never reach the store."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from pathlib import Path

KEY_FILE = "deid.key"


def load_or_create_key(folder: Path, given: str | None = None) -> bytes:
    """The cohort's key: `given` (hex or any passphrase) wins; else read `deid.key`, else create it (mode 600)."""
    if given:
        try:
            return bytes.fromhex(given)
        except ValueError:
            return hashlib.sha256(given.encode()).digest()
    path = folder / KEY_FILE
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


@dataclass(frozen=True)
class Deidentifier:
    """Maps source identifiers to pseudonyms. With `enabled=False`, identity (for already de-identified data)."""

    key: bytes
    enabled: bool = True
    max_shift_days: int = 365

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def subject_id(self, source_id: str) -> str:
        """The pseudonymous subject id of a source patient id (`P` + 16 hex digits; the id itself when off)."""
        if not self.enabled:
            return source_id
        return "P" + self._digest("subject", source_id).hex()[:16]

    def date_shift_days(self, source_subject_id: str) -> int:
        """Per-patient offset in [-max, +max] days (never 0 when enabled); intervals are kept."""
        if not self.enabled or self.max_shift_days == 0:
            return 0
        n = int.from_bytes(self._digest("shift", source_subject_id)[:8], "big")
        shift = n % (2 * self.max_shift_days + 1) - self.max_shift_days
        return shift if shift != 0 else self.max_shift_days

    def uid(self, source_uid: str) -> str:
        """DICOM-conformant remapped UID under the 2.25 (UUID-derived) root; consistent within a cohort."""
        if not self.enabled:
            return source_uid
        return "2.25." + str(int.from_bytes(self._digest("uid", source_uid)[:16], "big"))

    def token(self, purpose: str, value: str) -> str:
        """A short pseudonymous token for any other identifier (e.g. a resource id)."""
        if not self.enabled:
            return value
        return self._digest(purpose, value).hex()[:24]

