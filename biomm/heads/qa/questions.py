"""Questions people ask of a record, generated from each patient's own events, and their answers.

A patient's record is seen as `Fact`s: one per distinct code (with its kind: condition, medication,
observation, procedure, immunization, allergy, encounter, ...), plus the demographics (birth, sex) and
the latest chest X-ray. Every answer is *rendered* from a fact's events by `render`: values, units and
dates are copied from an event, yes/no and counts are derived from the events, and the record entry
it came from is returned as the evidence. The same `render` turns the model's choice (a fact, or none)
into its answer, so a gold answer and a predicted one are made the same way.

Everything is as of the subject's reference time: its last record (event or X-ray)."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import msgspec
import numpy as np

from biomm.data.ehr import day_to_iso, days_since_epoch
from biomm.ingest.ehr.codes import code_of
from biomm.resources import resource
from biomm.store.cohort import Cohort
from biomm.store.events import read_events

SYNTHEA = resource("data", "synthea")
NOT_RECORDED = "not recorded"
XRAY_MODALITIES = ("CR", "DX")
XRAY_LABEL = "xray_pneumonia"  # the cohort label `biomm cohort label-xrays` writes
TREND_WINDOW = 3  # measurements a trend question looks at
TREND_TOLERANCE = 0.03  # relative change under which a trend is "stable"
COUNT_WINDOW_DAYS = 365.0

QTYPES = ("diagnosis", "diagnosis_date", "medication", "latest_value", "trend", "encounter_count", "procedure",
          "immunization", "allergy", "age", "sex", "imaging_finding")
"""The question types, in the order of the model's intent classes."""
VALUE_TYPES = ("latest_value",)
FREE_TEXT_TYPES = ("imaging_finding",)  # answered by the LM's text (the image is not an event with a value)
TYPE_KINDS = {"diagnosis": ("condition",), "diagnosis_date": ("condition",), "medication": ("medication",),
              "latest_value": ("observation",), "trend": ("observation",), "encounter_count": ("encounter",),
              "procedure": ("procedure",), "immunization": ("immunization",), "allergy": ("allergy",),
              "age": ("birth",), "sex": ("sex",), "imaging_finding": ("imaging",)}
"""The kinds of fact each question type is answered from (the decoding constraint on the model's pointer)."""

WORDINGS: dict[str, tuple[str, ...]] = {
    "diagnosis": ("Has the patient been diagnosed with {name}?", "Does the patient have {name}?",
                  "Is there a diagnosis of {name} on record?", "Was the patient ever found to have {name}?"),
    "diagnosis_date": ("When was {name} first diagnosed?", "What is the date of the first {name} diagnosis?",
                       "Since when does the patient have {name}?",
                       "On what date was the patient first diagnosed with {name}?"),
    "medication": ("Is the patient taking {name}?", "What is the status of the patient's {name} prescription?",
                   "Is {name} an active or a past medication?",
                   "Has the patient been prescribed {name}, and is it still active?"),
    "latest_value": ("What was the most recent {name}?", "What is the latest {name} value?",
                     "Give the last recorded {name}.", "What was the patient's {name} at the last measurement?"),
    "trend": ("Is the {name} rising or falling over the last three measurements?",
              "How has the {name} changed over the last three measurements?", "What is the trend of the {name}?",
              "Over the last three readings, is the patient's {name} going up or down?"),
    "encounter_count": ("How many encounters did the patient have in the last year?",
                        "Number of visits in the past 12 months?",
                        "How many times was the patient seen in the last year?",
                        "Count the patient's encounters over the last year."),
    "procedure": ("When did the patient last have {name}?", "What is the date of the most recent {name} procedure?",
                  "Has the patient undergone {name}, and when?", "When was {name} last performed on the patient?"),
    "immunization": ("When was the patient last given the {name} vaccine?",
                     "What is the date of the latest {name} immunization?", "When did the patient last receive {name}?",
                     "On what date was the patient last vaccinated with {name}?"),
    "allergy": ("Is the patient allergic to {name}?", "Does the patient have an allergy to {name}?",
                "Is an allergy to {name} recorded?", "Any known allergy to {name}?"),
    "age": ("How old is the patient?", "What is the patient's age?", "Age of the patient?",
            "How many years old is this patient?"),
    "sex": ("What is the patient's sex?", "Is the patient male or female?", "What gender is recorded for the patient?",
            "Which sex is on the patient's record?"),
    "imaging_finding": ("Does the chest X-ray show pneumonia?", "Is there pneumonia on the latest chest radiograph?",
                        "Is pneumonia visible on the chest X-ray?",
                        "Does the patient's last chest X-ray indicate pneumonia?"),
}
"""Paraphrased wordings per question type; the last `held_out_wordings` of each are never trained on."""

KIND_WORDS = {
    "condition": "diagnosis diagnosed condition disease", "medication": "medication medicine drug prescription",
    "observation": "measurement value result level", "procedure": "procedure performed",
    "immunization": "vaccine immunization", "allergy": "allergy allergic", "encounter": "encounter visit",
    "imaging": "chest x-ray xray radiograph imaging image", "birth": "birth age old", "sex": "sex gender",
    "careplan": "care plan", "other": "",
}
"""Words a kind of fact is also found by (the retrieval document is its name plus these)."""

ENCOUNTER_CLASSES = {"AMB", "EMER", "IMP", "WELLNESS", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR", "HH", "FLD",
                     "unknown"}
MEDICATION_STATUSES = {"active", "stopped", "on-hold", "cancelled", "completed", "entered-in-error", "draft",
                       "unknown"}
ALLERGY_CRITICALITIES = {"low", "high", "unable-to-assess"}
RESOURCE_KINDS = {"Condition": "condition", "Procedure": "procedure", "AllergyIntolerance": "allergy",
                  "Immunization": "immunization", "MedicationRequest": "medication", "Observation": "observation",
                  "Encounter": "encounter", "DiagnosticReport": "observation", "CarePlan": "careplan"}
_KIND_PRIORITY = ("condition", "allergy", "immunization", "medication", "procedure", "observation", "encounter",
                  "careplan")
_SUFFIX = re.compile(r"\s*\((disorder|finding|situation|morphologic abnormality|procedure|regime/therapy|substance|"
                     r"organism|product|qualifier value|observable entity|record artifact)\)\s*$", re.I)


@dataclass
class Event:
    """One recorded event: code, time (days since the epoch), numeric value, text value, unit."""

    code: str
    day: float
    value: float | None = None
    text: str | None = None
    unit: str | None = None

    @property
    def date(self) -> str:
        """YYYY-MM-DD of the event."""
        return day_to_iso(self.day)[:10] if np.isfinite(self.day) else "unknown date"

    def evidence(self, description: str | None) -> dict:
        """The event as an EventEvidence dict (code, ISO time, value, unit, description)."""
        return {"code": self.code, "time": day_to_iso(self.day) if np.isfinite(self.day) else "", "value": self.value,
                "unit": self.unit, "description": description}


@dataclass
class Fact:
    """One code of one patient's record as of the reference time: its kind, name and events (oldest first)."""

    code: str
    kind: str
    name: str
    events: list[Event]
    label: int | None = None  # chest X-ray: 1 pneumonia, 0 normal, None unlabelled

    @property
    def first(self) -> Event:
        """The first event of the code."""
        return self.events[0]

    @property
    def last(self) -> Event:
        """The most recent event of the code."""
        return self.events[-1]

    def numeric(self) -> list[Event]:
        """The events with a numeric value, oldest first."""
        return [e for e in self.events if e.value is not None and np.isfinite(e.value)]


@dataclass
class QAPair:
    """One question about one patient, with the answer and evidence the record gives and the fact behind it."""

    subject_id: str
    time: float  # reference time, days since the epoch
    qtype: str
    question: str
    answer: str
    wording: int  # index into WORDINGS[qtype]
    code: str | None = None  # the code asked about (None: a question without a topic)
    gold_code: str | None = None  # the fact that holds the answer (None: not recorded / no)
    events: list[dict] = field(default_factory=list)  # the record entries behind the answer


@dataclass
class XRay:
    """A chest X-ray series of a patient (study date as a day and as YYYY-MM-DD), labelled or not."""

    day: float
    date: str
    series_uid: str
    study_uid: str
    modality: str
    label: int | None  # 1 pneumonia, 0 normal, None unlabelled


def clean_display(display: str) -> str:
    """A code's display as a question names it: 'Anemia (disorder)' -> 'anemia', 'Allergy to mould' -> 'mould',
    'Body Weight [Mass]' -> 'body weight'."""
    text = _SUFFIX.sub("", display).strip()
    text = re.sub(r"\s*\[[^\]]*\]", "", text)
    text = re.sub(r"^allergy to\s+", "", text, flags=re.I)
    return re.sub(r"\s+", " ", text).strip().lower() or display.lower()


def format_value(value: float) -> str:
    """118.0 -> '118', 27.299999 -> '27.3', 0.1234 -> '0.12' (two decimals at most)."""
    text = f"{round(float(value), 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _bundle_files(sources: list[str]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.name.endswith((".json", ".json.gz")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"FHIR code source not found: {p}")
    return files


class _Coded(msgspec.Struct):
    """The fields of a FHIR resource that carry its codes (everything else is skipped by the decoder)."""

    resourceType: Optional[str] = None
    code: Optional[Any] = None
    vaccineCode: Optional[Any] = None
    medicationCodeableConcept: Optional[Any] = None
    type: Optional[Any] = None
    category: Optional[Any] = None
    component: Optional[Any] = None


class _CodedEntry(msgspec.Struct):
    resource: Optional[_Coded] = None


class _CodedBundle(msgspec.Struct):
    entry: Optional[list[_CodedEntry]] = None


_BUNDLE_CODES = msgspec.json.Decoder(_CodedBundle)


def _concepts(res: _Coded) -> list:
    rtype = res.resourceType
    if rtype == "Immunization":
        return [res.vaccineCode]
    if rtype == "MedicationRequest":
        return [res.medicationCodeableConcept]
    if rtype == "Encounter":
        return list(res.type or [])[:1] if isinstance(res.type, list) else []
    if rtype == "CarePlan":
        return list(res.category or []) if isinstance(res.category, list) else []
    if rtype == "Observation":
        comps = res.component if isinstance(res.component, list) else []
        return [res.code] + [c.get("code") for c in comps if isinstance(c, dict)]
    return [res.code]


def code_kinds(sources: tuple[str, ...] | None = None) -> dict[str, str]:
    """MEDS code -> kind of record (condition, procedure, allergy, ...) from the resource types that carry it in
    FHIR bundles (default: the shipped Synthea ones); a code carried by several takes the first of
    condition > allergy > immunization > medication > procedure > observation > encounter > care plan."""
    seen: dict[str, set[str]] = {}
    for f in _bundle_files(list(sources) if sources else [str(SYNTHEA)]):
        raw = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        try:
            bundle = _BUNDLE_CODES.decode(raw)
        except msgspec.DecodeError as err:
            raise ValueError(f"{f}: not a FHIR bundle ({err})") from None
        for entry in bundle.entry or ():
            res = entry.resource
            kind = RESOURCE_KINDS.get(res.resourceType) if res is not None else None
            if kind is None:
                continue
            for concept in _concepts(res):
                for coding in (concept.get("coding") or ()) if isinstance(concept, dict) else ():
                    code = code_of(coding.get("system"), coding.get("code")) if isinstance(coding, dict) else None
                    if code:
                        seen.setdefault(code, set()).add(kind)
    return {c: next(k for k in _KIND_PRIORITY if k in ks) for c, ks in seen.items()}


def event_kind(code: str, text: str | None, kinds: dict[str, str], display: str | None) -> str:
    """The kind of one event: from its code system and text value (encounter class, medication status,
    allergy criticality, care plan), else the FHIR resource type of its code, else its display's suffix."""
    system = code.split("/", 1)[0]
    if code == "MEDS_BIRTH":
        return "birth"
    if system == "GENDER":
        return "sex"
    if system in ("RACE", "ETHNICITY", "MEDS_DEATH", "DCM"):
        return "demographic" if system != "DCM" else "imaging_event"
    if text == "careplan":
        return "careplan"
    if system == "ENCOUNTER" or (text in ENCOUNTER_CLASSES and system != "LOINC"):
        return "encounter"
    if system in ("RXNORM", "MEDICATION_REF") or (text in MEDICATION_STATUSES and kinds.get(code) == "medication"):
        return "medication"
    if system == "CVX":
        return "immunization"
    if text in ALLERGY_CRITICALITIES and system == "SNOMED":
        return "allergy"
    if code in kinds and kinds[code] != "encounter":
        return kinds[code]
    if system == "LOINC":
        return "observation"
    suffix = _SUFFIX.search(display or "")
    if suffix and suffix.group(1).lower() in ("disorder", "finding", "situation"):
        return "condition"
    if suffix and suffix.group(1).lower() == "procedure":
        return "procedure"
    return "other"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def xray_labels(cohort: Cohort, csv_path: str | Path) -> dict[str, int]:
    """Cohort series uid -> label, from a linkage CSV. A row matches a cohort record by the checksum of its
    DICOM file (next to the CSV, column `file`), else by its study UID remapped with the cohort's key."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FileNotFoundError(f"X-ray label file not found: {csv_path}")
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"study_uid", "label"} <= set(rows[0]):
        raise ValueError(f"{csv_path} needs columns study_uid and label (0 normal / 1 pneumonia)")
    by_checksum, by_study = {}, {}
    for r in rows:
        label = int(r["label"])
        f = csv_path.parent / r["file"] if r.get("file") else None
        if f is not None and f.exists():
            by_checksum[_sha256(f)] = label
        by_study[cohort.deid.uid(r["study_uid"])] = label
    out = {}
    for rec in cohort.records("imaging"):
        prov = json.loads(rec["provenance"]) if isinstance(rec["provenance"], str) else rec["provenance"] or {}
        label = by_checksum.get(rec["source_checksum"], by_study.get(prov.get("study_uid")))
        if label is not None:
            out[prov.get("series_uid") or rec["record_id"]] = label
    return out


def _cohort_xray_labels(cohort: Cohort) -> dict[tuple[str, str], int]:
    """(subject, YYYY-MM-DD) -> label, from the cohort's `xray_pneumonia` labels (`biomm cohort label-xrays`)."""
    out = {}
    for subject, value, when in cohort.labels(XRAY_LABEL):
        if when is not None and str(value).strip() in ("0", "1", "0.0", "1.0"):
            out[(subject, str(when)[:10])] = int(float(value))
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class QAStore:
    """A cohort's events, chest X-rays and code names, per subject, for building, retrieving and checking answers.

    `kinds` (code -> kind of record) defaults to the FHIR resource types of `kind_sources` (default: the
    shipped Synthea bundles); a trained head passes the ones it was trained with. X-ray labels come from
    `xray_label_file` (a linkage CSV) when given, else from the cohort's `xray_pneumonia` labels."""

    def __init__(self, cohort_root: str | Path, kind_sources: list[str] | None = None,
                 xray_label_file: str | Path | None = None, kinds: dict[str, str] | None = None):
        self.root = Path(cohort_root)
        with Cohort(self.root, create=False, read_only=True) as c:
            self.subjects = set(c.subjects())
            self.split_of = c.split_map()
            self.displays = {"MEDS_BIRTH": "Birth", **c.code_displays()}
            labels = xray_labels(c, xray_label_file) if xray_label_file else {}
            dated = {} if xray_label_file else _cohort_xray_labels(c)
            self.xrays = self._xrays(c.records("imaging"), labels, dated)
        t = read_events(self.root, columns=("subject_id", "time", "code", "numeric_value", "text_value", "unit"))
        codes_here = set(t.column("code").unique().to_pylist()) if t is not None else set()
        if kinds is None:
            kinds = code_kinds(tuple(kind_sources) if kind_sources else None)
        self.kinds = {c: k for c, k in kinds.items() if c in codes_here}
        self._load_events(t)
        self.names = self._names()

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _xrays(records: list[dict], labels: dict[str, int], dated: dict[tuple[str, str], int]) -> dict[str, list[XRay]]:
        out: dict[str, list[XRay]] = {}
        for r in records:
            prov = json.loads(r["provenance"]) if isinstance(r["provenance"], str) else r["provenance"] or {}
            date = prov.get("study_date")
            if prov.get("dicom_modality") not in XRAY_MODALITIES or not date:
                continue
            iso = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
            day = float(days_since_epoch(np.array([np.datetime64(iso, "us")]))[0])
            series = prov.get("series_uid") or r["record_id"]
            label = labels.get(series, dated.get((r["subject_id"], iso)))
            out.setdefault(r["subject_id"], []).append(
                XRay(day, iso, series, prov.get("study_uid", ""), prov["dicom_modality"], label))
        for items in out.values():
            items.sort(key=lambda x: (x.day, x.series_uid))
        return out

    def _load_events(self, t) -> None:
        self.events: dict[str, list[Event]] = {}
        self.event_kinds: dict[tuple[str, str | None], str] = {}
        if t is None:
            return
        sid = t.column("subject_id").to_numpy(zero_copy_only=False)
        times = np.nan_to_num(days_since_epoch(t.column("time").to_numpy(zero_copy_only=False)), nan=-np.inf)
        codes = t.column("code").to_pylist()
        values = t.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float64)
        texts, units = t.column("text_value").to_pylist(), t.column("unit").to_pylist()
        for i in range(len(sid)):
            v = values[i]
            self.events.setdefault(str(sid[i]), []).append(
                Event(codes[i], float(times[i]), float(v) if np.isfinite(v) else None, texts[i], units[i]))
            key = (codes[i], texts[i])
            if key not in self.event_kinds:
                self.event_kinds[key] = event_kind(codes[i], texts[i], self.kinds, self.displays.get(codes[i]))

    def _names(self) -> dict[str, str]:
        """Code -> the name questions use; codes whose cleaned names collide keep their full display."""
        names = {c: clean_display(d) for c, d in self.displays.items() if d}
        counts: dict[str, int] = {}
        for n in names.values():
            counts[n] = counts.get(n, 0) + 1
        out = {c: (n if counts[n] == 1 else self.displays[c].lower()) for c, n in names.items()}
        out["MEDS_BIRTH"] = "date of birth"
        return out

    # ------------------------------------------------------------------ a patient's record
    def reference_time(self, subject: str) -> float | None:
        """The subject's last record (timed event or chest X-ray), days since the epoch; None without any."""
        times = [e.day for e in self.events.get(subject, ()) if np.isfinite(e.day)]
        times += [x.day for x in self.xrays.get(subject, ())]
        return max(times) if times else None

    def facts(self, subject: str, when: float | None) -> list[Fact]:
        """The subject's facts at or before `when`: one per (code, kind), then its latest chest X-ray."""
        if when is None:
            return []
        grouped: dict[tuple[str, str], list[Event]] = {}
        for e in self.events.get(subject, ()):
            if e.day <= when or not np.isfinite(e.day):
                kind = self.event_kinds.get((e.code, e.text), "other")
                if kind not in ("demographic", "imaging_event"):
                    grouped.setdefault((e.code, kind), []).append(e)
        out = [Fact(code, kind, self.names.get(code, code.lower()), evs) for (code, kind), evs in grouped.items()]
        xs = [x for x in self.xrays.get(subject, ()) if x.day <= np.floor(when) + 1.0]
        if xs:
            x = xs[-1]
            out.append(Fact(f"DCM/{x.modality}", "imaging", f"chest x-ray ({x.modality})",
                            [Event(f"DCM/{x.modality}", x.day, None, x.series_uid, None)], x.label))
        return out

    def describe(self, code: str) -> str | None:
        """The display name of a code, if known."""
        if code.startswith("DCM/"):
            return f"chest X-ray ({code[4:]})"
        return self.displays.get(code)

    def cohort_topics(self) -> dict[str, list[tuple[str, str]]]:
        """Kind -> (code, name) of every code of that kind in the cohort (the pool for questions about codes a
        patient does not have); observations only when they have numeric values."""
        numeric = {e.code for evs in self.events.values() for e in evs if e.value is not None}
        out: dict[str, set[str]] = {}
        for (code, _), kind in self.event_kinds.items():
            if kind == "observation" and code not in numeric:
                continue
            out.setdefault(kind, set()).add(code)
        return {k: sorted((c, self.names.get(c, c.lower())) for c in cs) for k, cs in out.items()}


# ---------------------------------------------------------------------- rendering answers from facts
def _trend(events: list[Event]) -> str:
    first, last = events[0].value, events[-1].value
    scale = max(abs(first), 1e-6)
    change = (last - first) / scale
    return "rising" if change > TREND_TOLERANCE else "falling" if change < -TREND_TOLERANCE else "stable"


def _age(birth: Event, when: float) -> int:
    b = datetime.fromisoformat(day_to_iso(birth.day))
    w = datetime.fromisoformat(day_to_iso(when))
    return w.year - b.year - ((w.month, w.day) < (b.month, b.day))


def render(store: QAStore, qtype: str, fact: Fact | None, facts: list[Fact], when: float,
           free_text: str | None = None) -> tuple[str, list[dict]]:
    """(answer, evidence events) for a question of `qtype` answered from `fact` (None: nothing on record).
    Values, units and dates are copied from the fact's events; `free_text` is the answer to an imaging finding
    (the LM's reading; the gold answer passes the X-ray's label)."""
    d = store.describe
    if qtype == "encounter_count":
        evs = [e for f in facts if f.kind == "encounter" for e in f.events if when - COUNT_WINDOW_DAYS < e.day <= when]
        evs.sort(key=lambda e: (e.day, e.code))
        return f"{len(evs)} encounter{'s' if len(evs) != 1 else ''}", [e.evidence(d(e.code)) for e in evs]
    yes_no = qtype in ("diagnosis", "allergy")
    if fact is None or (qtype in TYPE_KINDS and fact.kind not in TYPE_KINDS[qtype]):
        return ("no" if yes_no else NOT_RECORDED), []
    if yes_no:
        return "yes", [fact.first.evidence(d(fact.code))]
    if qtype == "diagnosis_date":
        return fact.first.date, [fact.first.evidence(d(fact.code))]
    if qtype == "medication":
        last = fact.last
        status = "active, prescribed" if last.text == "active" else "past, last prescribed"
        return f"{status} {last.date}", [last.evidence(d(fact.code))]
    if qtype in ("procedure", "immunization"):
        return fact.last.date, [fact.last.evidence(d(fact.code))]
    if qtype == "latest_value":
        num = fact.numeric()
        if not num:
            return NOT_RECORDED, []
        e = num[-1]
        unit = f" {e.unit}" if e.unit else ""
        return f"{format_value(e.value)}{unit} on {e.date}", [e.evidence(d(fact.code))]
    if qtype == "trend":
        num = fact.numeric()[-TREND_WINDOW:]
        if len(num) < 2:
            return NOT_RECORDED, []
        return _trend(num), [e.evidence(d(fact.code)) for e in num]
    if qtype == "age":
        return f"{_age(fact.first, when)} years", [fact.first.evidence(d(fact.code))]
    if qtype == "sex":
        return fact.code.split("/", 1)[1].lower(), [fact.first.evidence(d(fact.code))]
    if qtype == "imaging_finding":
        ev = fact.last.evidence(d(fact.code))
        ev["value"] = None
        text = free_text if free_text is not None else (None if fact.label is None else ("yes" if fact.label else "no"))
        return (text if text is not None else NOT_RECORDED), [ev]
    return NOT_RECORDED, []


def gold_fact(qtype: str, facts: list[Fact], code: str | None) -> Fact | None:
    """The fact that holds the answer to a question of `qtype` about `code` (None: not on record)."""
    kinds = TYPE_KINDS.get(qtype, ())
    for f in facts:
        if f.kind in kinds and (code is None or f.code == code):
            return f
    return None


# ---------------------------------------------------------------------- generating questions
@dataclass(frozen=True)
class QuestionPlan:
    """How many questions per type and patient: (about codes the patient has, about codes it lacks)."""

    per_type: dict = field(default_factory=lambda: {
        "diagnosis": (2, 2), "diagnosis_date": (1, 1), "medication": (1, 1), "latest_value": (3, 1),
        "trend": (1, 1), "encounter_count": (1, 0), "procedure": (1, 1), "immunization": (1, 1),
        "allergy": (1, 1), "age": (1, 0), "sex": (1, 0), "imaging_finding": (1, 0)})


def _topics(store: QAStore, qtype: str, facts: list[Fact], pool: dict[str, list[tuple[str, str]]],
            has_n: int, lacks_n: int, rng: np.random.Generator) -> list[str | None]:
    """Codes to ask about: `has_n` the patient has, `lacks_n` of the same kind from the cohort it lacks."""
    if qtype in ("encounter_count", "age", "sex", "imaging_finding"):
        return [None] * has_n
    kinds = TYPE_KINDS[qtype]
    mine = sorted({f.code for f in facts if f.kind in kinds
                   and (qtype != "trend" or len(f.numeric()) >= 2) and (qtype != "latest_value" or f.numeric())})
    others = sorted({c for k in kinds for c, _ in pool.get(k, ())} - {f.code for f in facts})
    chosen = list(rng.choice(mine, min(has_n, len(mine)), replace=False)) if mine else []
    chosen += list(rng.choice(others, min(lacks_n, len(others)), replace=False)) if others else []
    return [str(c) for c in chosen]


def wording_split(held_out: int) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per type, the wording indices trained on and those held out (the last `held_out`)."""
    train = {q: list(range(len(w) - held_out)) for q, w in WORDINGS.items()}
    test = {q: list(range(len(w) - held_out, len(w))) for q, w in WORDINGS.items()}
    return train, test


def generate_pairs(store: QAStore, subjects: list[str], wordings: dict[str, list[int]], seed: int = 0,
                   all_wordings: bool = False, plan: QuestionPlan | None = None) -> list[QAPair]:
    """QA pairs for `subjects` as of their reference time. Each question is asked in every wording of
    `wordings` (`all_wordings`) or in one drawn per question (seeded by subject)."""
    plan = plan or QuestionPlan()
    pool = store.cohort_topics()
    out: list[QAPair] = []
    for subject in sorted(subjects):
        when = store.reference_time(subject)
        if when is None:
            continue
        facts = store.facts(subject, when)
        rng = np.random.default_rng([seed, int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16)])
        for qtype in QTYPES:
            has_n, lacks_n = plan.per_type.get(qtype, (0, 0))
            for code in _topics(store, qtype, facts, pool, has_n, lacks_n, rng):
                fact = gold_fact(qtype, facts, code)
                if qtype == "imaging_finding" and fact is not None and fact.label is None:
                    continue  # an unlabelled X-ray: the record cannot check an answer
                answer, events = render(store, qtype, fact, facts, when)
                gold = None if not events or qtype == "encounter_count" else fact.code
                name = store.names.get(code, "") if code else ""
                choices = wordings[qtype] if all_wordings else [int(rng.choice(wordings[qtype]))]
                for w in choices:
                    out.append(QAPair(subject, when, qtype, WORDINGS[qtype][w].format(name=name), answer, w, code,
                                      gold, events))
    return out
