"""FHIR R4 resources -> MEDS events, by resource type, on plain dicts (the fast path).

Each extractor returns the patient reference and a list of events `(time, code, numeric_value,
text_value, unit)`; it raises IngestError naming the resource and field when the resource is bad.
Names, addresses, telecom and identifiers are never read, so they cannot reach the store."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Callable

from biomm.ingest.base import IngestError
from biomm.ingest.ehr.codes import code_of, first_code

Event = tuple  # (time: datetime | None, code: str, numeric_value: float | None, text_value: str | None, unit: str | None)


def _resource_types(name: str) -> frozenset[str]:
    text = importlib_resources.files("biomm.resources").joinpath(f"fhir/{name}").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


R4_TYPES = _resource_types("r4b_resource_types.txt")
R5_ONLY_TYPES = _resource_types("r5_only_resource_types.txt")
_EARLIEST = datetime(1850, 1, 1)
_PARTIAL = re.compile(r"^\d{4}(-\d{2})?$")


@dataclass
class Extracted:
    """What one resource yields: its source patient, events, imaging rows, notes and the patient's names."""

    patient: str  # the source Patient id (not yet pseudonymised)
    events: list[Event] = field(default_factory=list)
    imaging: list[dict] = field(default_factory=list)
    notes: list[tuple] = field(default_factory=list)  # (time, kind, text)
    names: list[str] = field(default_factory=list)  # the patient's own names, to scrub from notes
    is_patient: bool = False


class ResourceContext:
    """What an extractor needs to raise a precise error: the file and the resource's locator."""

    def __init__(self, source: Path, rtype: str, rid: str | None, locator: str):
        self.source, self.rtype, self.rid, self.locator = source, rtype, rid, locator

    @property
    def record(self) -> str:
        """How errors name the resource: `Type/id`, else its type and locator."""
        return f"{self.rtype}/{self.rid}" if self.rid else f"{self.rtype} at {self.locator}"

    def error(self, reason: str, fieldname: str | None = None) -> IngestError:
        """An IngestError naming this resource and `fieldname`."""
        return IngestError(self.source, reason, record=self.record, field=fieldname)


def parse_time(value, ctx: ResourceContext, fieldname: str, latest: datetime) -> datetime:
    """FHIR date/dateTime/instant -> naive UTC datetime; impossible or out-of-range dates are errors."""
    if not isinstance(value, str) or not value:
        raise ctx.error(f"expected a FHIR date, got {value!r}", fieldname)
    text = value
    if _PARTIAL.match(text):  # YYYY or YYYY-MM: the first day of the period
        text = text + ("-01-01" if len(text) == 4 else "-01")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ctx.error(f"impossible date {value!r}", fieldname) from None
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    if t < _EARLIEST or t > latest:
        raise ctx.error(f"impossible date {value!r} (outside {_EARLIEST.year} .. {latest.date()})", fieldname)
    return t


def patient_ref(res: dict, ctx: ResourceContext, keys=("subject", "patient")) -> str:
    """The source Patient id a resource refers to (subject or patient reference); IngestError when missing."""
    for key in keys:
        ref = res.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            text = ref["reference"]
            if text.startswith("urn:uuid:"):
                return text[9:]
            kind, _, rid = text.rpartition("/")
            if rid and (not kind or kind.endswith("Patient")):
                return rid
            raise ctx.error(f"reference {text!r} does not point to a Patient", key)
    raise ctx.error("no subject reference (expected a Patient reference)", "/".join(keys))


class Extractor:
    """Dispatch by resourceType. `latest` bounds plausible dates (default: now + 1 year)."""

    def __init__(self, latest: datetime | None = None):
        self.displays: dict[str, str] = {}
        self.latest = latest or (datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=366))
        # valid timestamps already parsed: resources of one encounter share them (observations of a
        # panel, the encounter's period), so most are looked up rather than parsed again
        self._times: dict[str, datetime] = {}
        self.by_type: dict[str, Callable[[dict, ResourceContext], Extracted]] = {
            "Patient": self.patient,
            "Encounter": self.encounter,
            "Condition": self.condition,
            "Observation": self.observation,
            "MedicationRequest": self.medication_request,
            "Procedure": self.procedure,
            "Immunization": self.immunization,
            "DiagnosticReport": self.diagnostic_report,
            "ImagingStudy": self.imaging_study,
            "AllergyIntolerance": self.allergy,
            "CarePlan": self.care_plan,
        }

    def _first(self, concept) -> tuple[str | None, str | None]:
        """first_code, remembering each code's display text (for readable evidence and questions)."""
        code, display = first_code(concept)
        if code is not None and display and code not in self.displays:
            self.displays[code] = display
        return code, display

    def handles(self, rtype: str) -> bool:
        """Whether this extractor turns resources of `rtype` into events."""
        return rtype in self.by_type

    def __call__(self, res: dict, ctx: ResourceContext) -> Extracted:
        return self.by_type[ctx.rtype](res, ctx)

    # ------------------------------------------------------------------ helpers
    def _parse(self, value, ctx: ResourceContext, fieldname: str) -> datetime:
        """`parse_time`, remembering valid values (errors are raised afresh, naming this resource's field)."""
        if isinstance(value, str):
            hit = self._times.get(value)
            if hit is not None:
                return hit
        t = parse_time(value, ctx, fieldname, self.latest)
        if len(self._times) >= 200_000:
            self._times.clear()
        self._times[value] = t
        return t

    def _time(self, res: dict, ctx: ResourceContext, choices: tuple[str, ...], required: bool = True) -> datetime | None:
        """The first present of several choice-type fields (`onset[x]`, `effective[x]`, ...)."""
        for name in choices:
            value = res.get(name)
            if value is None:
                continue
            if isinstance(value, dict):  # Period / Age-less choice: use its start
                if "start" in value:
                    return self._parse(value["start"], ctx, f"{name}.start")
                continue
            return self._parse(value, ctx, name)
        if required:
            raise ctx.error(f"no time: none of {', '.join(choices)} is present", choices[0])
        return None

    def _coded(self, res: dict, ctx: ResourceContext, key: str) -> str:
        code, _ = self._first(res.get(key))
        if code is None:
            raise ctx.error("no code", key)
        return code

    @staticmethod
    def _value(obj: dict) -> tuple[float | None, str | None, str | None]:
        """value[x] -> (numeric_value, text_value, unit)."""
        if "valueQuantity" in obj:
            q = obj.get("valueQuantity") or {}
            v = q.get("value")
            return (float(v) if isinstance(v, (int, float)) else None), None, q.get("unit") or q.get("code")
        if "valueCodeableConcept" in obj:
            code, display = first_code(obj.get("valueCodeableConcept"))
            return None, code or display, None
        for key in ("valueInteger", "valueDecimal"):
            if key in obj and isinstance(obj.get(key), (int, float)):
                return float(obj.get(key)), None, None
        if "valueBoolean" in obj:
            return float(bool(obj.get("valueBoolean"))), None, None
        if "valueString" in obj:
            return None, str(obj.get("valueString")), None
        return None, None, None

    # ------------------------------------------------------------------ resource types
    def patient(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Patient: birth, gender, race, ethnicity and death events; the names kept only to scrub notes."""
        if not res.get("id"):
            raise ctx.error("Patient without id", "id")
        out = Extracted(patient=str(res.get("id")), is_patient=True)
        for name in res.get("name") or ():
            if isinstance(name, dict):
                parts = [name.get("family"), *(name.get("given") or ()), *(name.get("prefix") or ())]
                out.names.extend(p for p in parts if isinstance(p, str) and len(p) > 1)
        birth = parse_time(res.get("birthDate"), ctx, "birthDate", self.latest) if res.get("birthDate") else None
        if birth is not None:
            out.events.append((birth, "MEDS_BIRTH", None, None, None))
        if res.get("gender"):
            out.events.append((birth, f"GENDER/{res.get('gender')}", None, None, None))
        for ext in res.get("extension") or ():
            url = ext.get("url", "") if isinstance(ext, dict) else ""
            if url.endswith(("us-core-race", "us-core-ethnicity")):
                kind = "RACE" if url.endswith("race") else "ETHNICITY"
                for sub in ext.get("extension") or ():
                    coding = sub.get("valueCoding") if isinstance(sub, dict) else None
                    if coding and coding.get("code"):
                        out.events.append((birth, f"{kind}/{coding['code']}", None, None, None))
        if res.get("deceasedDateTime"):
            out.events.append((parse_time(res.get("deceasedDateTime"), ctx, "deceasedDateTime", self.latest), "MEDS_DEATH", None, None, None))
        if birth is not None and out.events[-1][1] == "MEDS_DEATH" and out.events[-1][0] < birth:
            raise ctx.error("impossible date: death before birth", "deceasedDateTime")
        return out

    def encounter(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Encounter: its type (else its class) as an event at its start, the class as text value."""
        cls = res.get("class")
        if isinstance(cls, list) or "actualPeriod" in res:
            raise ctx.error("R5-only shape under R4 (Encounter.class as a list / actualPeriod)", "class")
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("period",))
        types = res.get("type") or [{}]
        code, _ = self._first(types[0] if isinstance(types, list) and types else None)
        cls_code = cls.get("code") if isinstance(cls, dict) else None
        out.events.append((t, code or f"ENCOUNTER/{cls_code or 'unknown'}", None, cls_code, None))
        return out

    def condition(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Condition: its code at onset (or recorded date)."""
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("onsetDateTime", "onsetPeriod", "recordedDate", "onsetString"))
        out.events.append((t, self._coded(res, ctx, "code"), None, None, None))
        return out

    def observation(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Observation: its value (or each component's) at its effective time."""
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"))
        num, text, unit = self._value(res)
        out.events.append((t, self._coded(res, ctx, "code"), num, text, unit))
        for i, comp in enumerate(res.get("component") or ()):
            code, _ = self._first(comp.get("code"))
            if code is None:
                raise ctx.error("component without a code", f"component[{i}].code")
            num, text, unit = self._value(comp)
            out.events.append((t, code, num, text, unit))
        return out

    def medication_request(self, res: dict, ctx: ResourceContext) -> Extracted:
        """MedicationRequest: the medication code when authored, the status as text value."""
        if "medication" in res:
            raise ctx.error("R5-only shape under R4 (MedicationRequest.medication as CodeableReference)", "medication")
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("authoredOn",))
        if "medicationCodeableConcept" in res:
            code = self._coded(res, ctx, "medicationCodeableConcept")
        elif isinstance(res.get("medicationReference"), dict):
            code = f"MEDICATION_REF/{res.get('medicationReference').get('display') or 'unknown'}"
        else:
            raise ctx.error("no medication[x]", "medication[x]")
        out.events.append((t, code, None, res.get("status"), None))
        return out

    def procedure(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Procedure: its code when performed."""
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("performedDateTime", "performedPeriod", "performedString"))
        out.events.append((t, self._coded(res, ctx, "code"), None, None, None))
        return out

    def immunization(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Immunization: the vaccine code at its occurrence."""
        out = Extracted(patient_ref(res, ctx, keys=("patient",)))
        t = self._time(res, ctx, ("occurrenceDateTime", "occurrenceString", "recorded"))
        out.events.append((t, self._coded(res, ctx, "vaccineCode"), None, None, None))
        return out

    def diagnostic_report(self, res: dict, ctx: ResourceContext) -> Extracted:
        """DiagnosticReport: its code as an event; the conclusion and text forms as notes."""
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("effectiveDateTime", "effectivePeriod", "issued"))
        code = self._coded(res, ctx, "code")
        out.events.append((t, code, None, None, None))
        texts = [res.get("conclusion")] if res.get("conclusion") else []
        for i, form in enumerate(res.get("presentedForm") or ()):
            if isinstance(form, dict) and form.get("data") and str(form.get("contentType", "")).startswith("text"):
                try:
                    texts.append(base64.b64decode(form["data"]).decode("utf-8", "replace"))
                except (ValueError, TypeError):
                    raise ctx.error("presentedForm data is not base64", f"presentedForm[{i}].data") from None
        for text in texts:
            out.notes.append((t, "report", text))
        return out

    def care_plan(self, res: dict, ctx: ResourceContext) -> Extracted:
        """Category codes as events, and the plan's narrative (`text.div`) as a note."""
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("period",))
        for concept in res.get("category") or ():
            code, _ = self._first(concept)
            if code:
                out.events.append((t, code, None, "careplan", None))
        div = (res.get("text") or {}).get("div") if isinstance(res.get("text"), dict) else None
        if div:
            out.notes.append((t, "careplan", html_to_text(div)))
        return out

    def allergy(self, res: dict, ctx: ResourceContext) -> Extracted:
        """AllergyIntolerance: its code and criticality when recorded."""
        out = Extracted(patient_ref(res, ctx, keys=("patient",)))
        t = self._time(res, ctx, ("onsetDateTime", "onsetPeriod", "recordedDate"))
        out.events.append((t, self._coded(res, ctx, "code"), None, res.get("criticality"), None))
        return out

    def imaging_study(self, res: dict, ctx: ResourceContext) -> Extracted:
        """One event per series (`DCM/<modality>`, body site as text) plus the UIDs for the imaging link."""
        out = Extracted(patient_ref(res, ctx))
        t = self._time(res, ctx, ("started",))
        study_uid = None
        for ident in res.get("identifier") or ():
            value = ident.get("value", "") if isinstance(ident, dict) else ""
            if value.startswith("urn:oid:"):
                study_uid = value[8:]
                break
        if not study_uid:
            raise ctx.error("no StudyInstanceUID (identifier urn:oid:...)", "identifier")
        for i, series in enumerate(res.get("series") or ()):
            uid = series.get("uid")
            if not uid:
                raise ctx.error("series without uid", f"series[{i}].uid")
            modality = (series.get("modality") or {}).get("code") or "OT"
            site = series.get("bodySite") or {}
            site_code = code_of(site.get("system"), site.get("code"))
            st = parse_time(series["started"], ctx, f"series[{i}].started", self.latest) if series.get("started") else t
            out.events.append((st, f"DCM/{modality}", None, site_code, None))
            out.imaging.append({"study_uid": study_uid, "series_uid": uid, "time": st, "modality": modality,
                                "body_site": site.get("display") or site_code})
        return out


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def html_to_text(div: str) -> str:
    """XHTML narrative -> plain text (tags become spaces, entities unescaped)."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", div))).strip()


def scrub_names(text: str, names: list[str]) -> str:
    """Replace a patient's own names in free text with [NAME] (names come from the Patient resource)."""
    for name in sorted(set(names), key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(name)}\b", "[NAME]", text, flags=re.IGNORECASE)
    return text


def classify_type(rtype, extractor: Extractor) -> str:
    """'extract', 'ignore' (valid R4 type this reader does not use), 'r5' or 'unknown'."""
    if not isinstance(rtype, str) or not rtype:
        return "unknown"
    if extractor.handles(rtype):
        return "extract"
    if rtype in R4_TYPES:
        return "ignore"
    if rtype in R5_ONLY_TYPES:
        return "r5"
    return "unknown"


def source_kind(path: Path) -> str:
    """'ndjson' or 'bundle', by the file name."""
    return "ndjson" if path.name.lower().endswith((".ndjson", ".ndjson.gz")) else "bundle"
