"""Reading FHIR sources as a stream of resources: Bundles (.json/.json.gz) and bulk NDJSON (.ndjson/.ndjson.gz)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import orjson

from biomm.ingest.base import IngestError
from biomm.ingest.ehr.fast import BUNDLE_DECODER, RESOURCE_DECODER

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


def _lazy(fn: Callable[[], bytes]) -> Callable[[], bytes]:
    cache: list[bytes] = []

    def get() -> bytes:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def iter_resources(path: Path, fast: bool = True) -> Iterator[tuple[str, object, Callable[[], bytes]]]:
    """Yield (locator, resource or per-record IngestError, a function giving the record's raw bytes).

    With `fast`, resources are msgspec views holding only the fields the events need (see
    fhir_fast); without it, plain dicts of the whole resource (for strict validation). Anything
    the fast decoder cannot take falls back to the orjson path, which reports per-record errors.
    File-level problems (not JSON, not a Bundle) raise IngestError."""
    name = path.name.lower()
    if name.endswith((".ndjson", ".ndjson.gz")):
        for lineno, line in _ndjson_lines(path):
            loc = f"line {lineno}"
            raw = (lambda b=line: bytes(b))
            if fast:
                try:
                    yield loc, RESOURCE_DECODER.decode(line), raw
                    continue
                except msgspec.MsgspecError:
                    pass
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield loc, IngestError(path, f"not JSON ({exc})", record=loc), raw
                continue
            if not isinstance(res, dict):
                yield loc, IngestError(path, "a line is not a JSON object", record=loc), raw
                continue
            yield loc, res, raw
        return
    data = _read_bytes(path)
    if fast:
        try:
            bundle = BUNDLE_DECODER.decode(data)
        except msgspec.MsgspecError:
            bundle = None
        if bundle is not None and bundle.resourceType == "Bundle" and bundle.type in BUNDLE_TYPES and all(
                e.resource is not None for e in bundle.entry or ()):
            full = _lazy(lambda: orjson.loads(data))
            for i, entry in enumerate(bundle.entry or ()):
                yield f"entry {i}", entry.resource, (lambda i=i: orjson.dumps(full()["entry"][i]))
            return
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IngestError(path, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise IngestError(path, "top level is not a JSON object")
    if doc.get("resourceType") != "Bundle":
        yield "resource 0", doc, (lambda: data)  # a single resource file
        return
    if doc.get("type") not in BUNDLE_TYPES:
        raise IngestError(path, f"unsupported Bundle.type {doc.get('type')!r}", field="type")
    for i, entry in enumerate(doc.get("entry") or []):
        loc = f"entry {i}"
        raw = (lambda e=entry: orjson.dumps(e))
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            yield loc, IngestError(path, "Bundle entry without a resource", record=loc, field="entry.resource"), raw
            continue
        yield loc, res, raw
