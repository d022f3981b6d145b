"""Reading FHIR sources as a stream of resources: Bundles (.json/.json.gz) and bulk NDJSON (.ndjson/.ndjson.gz)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

import orjson

from biomm.ingest.base import IngestError

FHIR_SUFFIXES = (".json", ".json.gz", ".ndjson", ".ndjson.gz")
BUNDLE_TYPES = {"transaction", "collection", "batch", "searchset", "document", "message", "history"}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise IngestError(path, f"truncated or corrupt gzip ({exc})") from None
    return raw


def _ndjson_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Lines of an NDJSON file, streamed (gzip too); a truncated gzip raises after the good lines."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, line
    except (EOFError, OSError, zlib.error) as exc:
        raise IngestError(path, f"truncated or corrupt gzip after line {lineno} ({exc})") from None


def iter_resources(path: Path) -> Iterator[tuple[str, dict | IngestError, bytes | None]]:
    """Yield (locator, resource or per-record IngestError, raw bytes of a bad record).

    File-level problems (not JSON, not a Bundle) raise IngestError; per-record problems are yielded
    so the caller quarantines that record and goes on with the rest."""
    name = path.name.lower()
    if name.endswith((".ndjson", ".ndjson.gz")):
        for lineno, line in _ndjson_lines(path):
            loc = f"line {lineno}"
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield loc, IngestError(path, f"not JSON ({exc})", record=loc), line
                continue
            if not isinstance(res, dict):
                yield loc, IngestError(path, "a line is not a JSON object", record=loc), line
                continue
            yield loc, res, None
        return
    data = _read_bytes(path)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IngestError(path, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise IngestError(path, "top level is not a JSON object")
    rtype = doc.get("resourceType")
    if rtype != "Bundle":
        yield "resource 0", doc, None  # a single resource file
        return
    if doc.get("type") not in BUNDLE_TYPES:
        raise IngestError(path, f"unsupported Bundle.type {doc.get('type')!r}", field="type")
    for i, entry in enumerate(doc.get("entry") or []):
        loc = f"entry {i}"
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            yield loc, IngestError(path, "Bundle entry without a resource", record=loc, field="entry.resource"), orjson.dumps(entry)
            continue
        yield loc, res, None
