"""The per-file half of FHIR ingest: decode, classify, validate and extract one source file, with no
access to the store. It runs in worker processes (or in-process for small ingests); the parent
keeps everything that needs the cohort: pseudonyms, duplicate checks, quarantine and writing."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


from biomm.ingest.base import IngestError
from biomm.ingest.ehr.extract import Extracted, Extractor, ResourceContext, classify_type
from biomm.ingest.ehr.fast import content_bytes
from biomm.ingest.ehr.source import iter_resources


@dataclass
class ParsedFile:
    """The worker's result for (a piece of) one file: bad records, good ones extracted, counts and code displays."""

    path: Path
    checksum: str
    bad: list[tuple[str, str | None, str | None, bytes]] = field(default_factory=list)  # reason, record, field, raw
    good: list[tuple[str, str, Extracted, str, str]] = field(default_factory=list)  # key, content, extracted, record, locator
    ignored: int = 0
    file_error: tuple[str, str | None, str | None] | None = None
    displays: dict[str, str] = field(default_factory=dict)
    people: set[str] = field(default_factory=set)  # names of practitioners and other people, to scrub from notes


PEOPLE_TYPES = ("Practitioner", "RelatedPerson", "Person")
_REFERENCE_KEYS = ("participant", "requester", "performer", "recorder", "asserter", "author", "practitioner",
                   "individual", "generalPractitioner", "provider", "encounter")


_NAME_SPLIT = re.compile(r"[\s.,]+")


def people_names(res: dict, seen: set[str] | None = None) -> set[str]:
    """Name parts (2+ characters) of the people a resource names: the HumanNames of a Practitioner,
    RelatedPerson or Person, and the `display` of its references to people (`participant.individual`,
    `requester`, `performer`, ...). Narratives mention them, so notes are scrubbed of them too.
    `seen`: displays already split (the same practitioner is named on most resources of a file)."""
    out: set[str] = set()
    seen = set() if seen is None else seen
    if res.get("resourceType") in PEOPLE_TYPES:
        for name in res.get("name") or ():
            if isinstance(name, dict):
                parts = [name.get("family"), *(name.get("given") or ()), *(name.get("prefix") or ())]
                out.update(p for p in parts if isinstance(p, str) and len(p) > 1)
    stack = [res.get(k) for k in _REFERENCE_KEYS]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            display = node.get("display")
            if isinstance(display, str) and "reference" in node and display not in seen:
                seen.add(display)
                out.update(w for w in _NAME_SPLIT.split(display) if len(w) > 1)
            stack.extend(node.get(k) for k in ("individual", "actor", "who") if k in node)
    return out


def strict_validator():
    """Full R4 validation with fhir.resources.R4B (the slow, thorough path)."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    def validate(res: dict, ctx: ResourceContext) -> None:
        try:
            get_fhir_model_class(ctx.rtype).model_validate(res)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ctx.error(f"invalid under FHIR R4 ({first['msg']})", loc) from None
        except KeyError:
            raise ctx.error("unknown resource type under FHIR R4", "resourceType") from None

    return validate


def parse_file(path: Path, checksum: str, strict: bool, latest: datetime) -> ParsedFile:
    """The whole file at once (worker processes: one file per task)."""
    pieces = list(parse_pieces(path, checksum, strict, latest, piece=None))
    return pieces[0]


def parse_pieces(path: Path, checksum: str, strict: bool, latest: datetime, piece: int | None = 20_000):
    """The file as ParsedFile pieces of at most `piece` records (None: one piece), so that a very large
    NDJSON file streams through the parent with bounded memory."""
    extract = Extractor(latest)
    validate = strict_validator() if strict else None
    out = ParsedFile(path, checksum)
    displays_seen: set[str] = set()

    def bad(err: IngestError, raw) -> None:
        out.bad.append((err.reason, err.record, err.field, raw()))

    try:
        for locator, res, raw in iter_resources(path, fast=not strict):
            if isinstance(res, IngestError):
                bad(res, raw)
                continue
            rtype = res.get("resourceType")
            kind = classify_type(rtype, extract)
            rid = res.get("id")
            ctx = ResourceContext(path, str(rtype), str(rid) if rid else None, locator)
            if kind == "unknown":
                bad(ctx.error(f"unknown resourceType {rtype!r} (not a FHIR R4 resource)", "resourceType"), raw)
                continue
            if kind == "r5":
                bad(ctx.error(f"R5-only resourceType {rtype!r} under R4", "resourceType"), raw)
                continue
            out.people |= people_names(res, displays_seen)
            if kind == "ignore":
                out.ignored += 1
                continue
            try:
                if validate is not None:
                    validate(res, ctx)
                extracted = extract(res, ctx)
            except IngestError as err:
                bad(err, raw)
                continue
            content = hashlib.sha256(content_bytes(res)).hexdigest()[:32]
            out.good.append((f"{rtype}/{rid or content}", content, extracted, ctx.record, locator))
            if piece is not None and len(out.good) + len(out.bad) >= piece:
                out.displays, extract.displays = extract.displays, {}
                yield out
                out = ParsedFile(path, checksum)
    except IngestError as err:  # file-level: what was read before it is kept
        out.file_error = (err.reason, err.record, err.field)
    out.displays = extract.displays
    yield out


def raw_record(path: Path, locator: str) -> bytes:
    """The raw bytes of one record (for quarantine), found again by its locator."""
    for loc, res, raw in iter_resources(path, fast=False):
        if loc == locator:
            return raw()
    return b""
