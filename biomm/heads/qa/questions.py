"""Question-answer pairs from each patient's own records, as of a reference time.

Only what is on record at or before the reference time is used: diagnoses (Condition codes),
the latest systolic blood pressure (LOINC 8480-6) and the latest chest X-ray's label (from a
linkage CSV). Answers come from the store; a question the records cannot answer says so."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomm.data.ehr import day_to_iso, days_since_epoch
from biomm.ingest.ehr.codes import code_of
from biomm.resources import resource
from biomm.store.cohort import Cohort
from biomm.store.events import read_events

SBP = "LOINC/8480-6"
SBP_UNIT = "mm[Hg]"
XRAY_MODALITIES = ("CR", "DX")
NO_SBP = "no systolic blood pressure on record"
NO_XRAY = "no chest x-ray on record"
QTYPES = ("diagnosis", "systolic_bp", "chest_xray")
SYNTHEA = resource("data", "synthea")


@dataclass
class QAPair:
    """One question about one patient as of a reference time, with the answer the records give."""

    subject_id: str
    time: float  # reference time, days since epoch (the cohort's shifted time)
    qtype: str
    question: str
    answer: str
    code: str | None = None  # the diagnosis asked about
    events: list[dict] = field(default_factory=list)  # the records behind the answer
    image_series: list[str] = field(default_factory=list)


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
    """'Anemia (disorder)' -> 'anemia'."""
    return re.sub(r"\s*\((disorder|finding|situation|morphologic abnormality)\)\s*$", "", display).strip().lower()


def _bundle_files(sources: list[str]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.name.endswith((".json", ".json.gz")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"condition source not found: {p}")
    return files


def condition_codes(sources: tuple[str, ...] | None = None) -> dict[str, str]:
    """MEDS code -> display of every Condition code in FHIR bundles (default: the shipped Synthea ones)."""
    out: dict[str, str] = {}
    for f in _bundle_files(list(sources) if sources else [str(SYNTHEA)]):
        raw = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        bundle = json.loads(raw)
        for entry in bundle.get("entry", []) if isinstance(bundle, dict) else []:
            res = entry.get("resource") or {}
            if res.get("resourceType") != "Condition":
                continue
            for coding in (res.get("code") or {}).get("coding") or ():
                code = code_of(coding.get("system"), coding.get("code"))
                if code and coding.get("display") and code not in out:
                    out[code] = coding["display"]
    return out


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


class QAStore:
    """A cohort's events, diagnoses and chest X-rays, per subject, for building and checking answers.

    `conditions` (MEDS code -> display of the diagnosis codes) defaults to the Condition codes of
    `condition_sources`; a trained head passes the ones it was trained with."""

    def __init__(self, cohort_root: str | Path, condition_sources: list[str] | None = None,
                 xray_label_file: str | Path | None = None, conditions: dict[str, str] | None = None):
        self.root = Path(cohort_root)
        with Cohort(self.root, create=False, read_only=True) as c:
            self.subjects = set(c.subjects())
            self.split_of = c.split_map()
            displays = c.code_displays()
            labels = xray_labels(c, xray_label_file) if xray_label_file else {}
            self.xrays = self._xrays(c.records("imaging"), labels)
        if conditions is None:
            conditions = condition_codes(tuple(condition_sources) if condition_sources else None)
        self.conditions = dict(conditions)
        self.displays = {**conditions, **displays}
        self._load_events(set(conditions) | {c for c, d in displays.items() if d.endswith("(disorder)")})

    @staticmethod
    def _xrays(records: list[dict], labels: dict[str, int]) -> dict[str, list[XRay]]:
        out: dict[str, list[XRay]] = {}
        for r in records:
            prov = json.loads(r["provenance"]) if isinstance(r["provenance"], str) else r["provenance"] or {}
            date = prov.get("study_date")
            if prov.get("dicom_modality") not in XRAY_MODALITIES or not date:
                continue
            day = float(days_since_epoch(np.array([np.datetime64(f"{date[:4]}-{date[4:6]}-{date[6:8]}", "us")]))[0])
            series = prov.get("series_uid") or r["record_id"]
            out.setdefault(r["subject_id"], []).append(
                XRay(day, f"{date[:4]}-{date[4:6]}-{date[6:8]}", series, prov.get("study_uid", ""), prov["dicom_modality"],
                     labels.get(series)))
        for items in out.values():
            items.sort(key=lambda x: (x.day, x.series_uid))
        return out

    def _load_events(self, diagnosis_codes: set[str]) -> None:
        self.events: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list]] = {}
        self.diagnosis_codes: set[str] = set()
        t = read_events(self.root, columns=("subject_id", "time", "code", "numeric_value", "unit"))
        if t is None:
            return
        sid = t.column("subject_id").to_numpy(zero_copy_only=False)
        times = np.nan_to_num(days_since_epoch(t.column("time").to_numpy(zero_copy_only=False)), nan=-np.inf)
        codes = t.column("code").to_numpy(zero_copy_only=False).astype(str)
        values = t.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float64)
        units = t.column("unit").to_pylist()
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, int)
        for s, e in zip(starts, np.r_[starts[1:], len(sid)]):
            self.events[str(sid[s])] = (times[s:e], codes[s:e], values[s:e], units[s:e])
        self.diagnosis_codes = set(np.unique(codes)) & diagnosis_codes

    # ------------------------------------------------------------------ facts as of a time
    def _visible(self, subject: str, before: float) -> int:
        times = self.events[subject][0]
        return int(np.searchsorted(times, before, side="right"))

    def diagnoses(self, subject: str, before: float) -> dict[str, float]:
        """Diagnosis code -> first day on record, at or before `before`."""
        times, codes, _, _ = self.events.get(subject, (np.zeros(0),) * 4)
        out: dict[str, float] = {}
        for i in range(self._visible(subject, before) if subject in self.events else 0):
            if codes[i] in self.diagnosis_codes and codes[i] not in out:
                out[str(codes[i])] = float(times[i])
        return out

    def latest(self, subject: str, code: str, before: float) -> dict | None:
        """The most recent numeric event of `code` at or before `before`."""
        if subject not in self.events:
            return None
        times, codes, values, units = self.events[subject]
        for i in range(self._visible(subject, before) - 1, -1, -1):
            if codes[i] == code and not np.isnan(values[i]):
                return {"code": code, "day": float(times[i]), "value": float(values[i]), "unit": units[i]}
        return None

    def xray(self, subject: str, before: float) -> XRay | None:
        """The most recent chest X-ray dated on or before the reference day (no later study leaks in)."""
        eligible = [x for x in self.xrays.get(subject, []) if x.day <= np.floor(before)]
        return eligible[-1] if eligible else None

    def last_time(self, subject: str) -> float:
        """The time (days) of the subject's last event."""
        return float(self.events[subject][0][-1])

    def reference_times(self, subject: str, n: int, rng: np.random.Generator) -> list[float]:
        """The subject's last event time, then `n - 1` distinct earlier event times from the later half."""
        times = self.events[subject][0]
        finite = np.unique(times[np.isfinite(times)])
        if not len(finite):
            return []
        out = [float(finite[-1])]
        pool = finite[len(finite) // 2:-1]
        if n > 1 and len(pool):
            out += sorted(float(x) for x in rng.choice(pool, size=min(n - 1, len(pool)), replace=False))
        return out

    def describe(self, code: str) -> str | None:
        """The display name of a code, if known."""
        return self.displays.get(code)


# ---------------------------------------------------------------------- questions and answers
def diagnosis_question(name: str) -> str:
    """The diagnosis question about a condition named `name`."""
    return f"Has the patient been diagnosed with {name}?"


SBP_QUESTION = "What was the most recent systolic blood pressure?"
XRAY_QUESTION = "Does the chest X-ray show pneumonia?"


def sbp_answer(store: QAStore, subject: str, before: float) -> tuple[str, list[dict]]:
    """(answer, events): the latest systolic blood pressure at or before `before`, or that there is none."""
    hit = store.latest(subject, SBP, before)
    if hit is None:
        return NO_SBP, []
    unit = hit["unit"] or SBP_UNIT
    ev = {"code": SBP, "time": day_to_iso(hit["day"]), "value": hit["value"], "description": "Systolic blood pressure"}
    return f"{round(hit['value'])} {unit}", [ev]


def xray_answer(store: QAStore, subject: str, before: float) -> tuple[str | None, list[dict], list[str]]:
    """(answer, events, series); answer None when the latest X-ray has no label (cannot answer from the store)."""
    x = store.xray(subject, before)
    if x is None:
        return NO_XRAY, [], []
    if x.label is None:
        return None, [], [x.series_uid]
    ev = {"code": f"DCM/{x.modality}", "time": x.date, "value": float(x.label), "description": "chest X-ray, "
          + ("pneumonia" if x.label else "normal")}
    return ("yes" if x.label else "no"), [ev], [x.series_uid]


def diagnosis_answer(store: QAStore, subject: str, before: float, code: str) -> tuple[str, list[dict]]:
    """("yes" with the first record of `code`, or "no") as of `before`."""
    seen = store.diagnoses(subject, before)
    if code in seen:
        return "yes", [{"code": code, "time": day_to_iso(seen[code]), "value": None, "description": store.describe(code)}]
    return "no", []


def generate_pairs(store: QAStore, subjects: list[str], reference_times: int = 2, diagnoses_per_subject: int = 2,
                   seed: int = 0) -> list[QAPair]:
    """QA pairs for `subjects` at their reference times. Diagnosis questions are balanced per time: as many
    conditions the patient has (on record by then) as conditions from the cohort it does not have."""
    out: list[QAPair] = []
    topics = sorted(c for c in store.diagnosis_codes if store.describe(c))
    for subject in sorted(subjects):
        if subject not in store.events:
            continue
        rng = np.random.default_rng([seed, int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16)])
        for t in store.reference_times(subject, reference_times, rng):
            has = sorted(c for c in store.diagnoses(subject, t) if store.describe(c))
            lacks = [c for c in topics if c not in set(has)]
            k = min(diagnoses_per_subject, len(has), len(lacks))
            chosen = list(rng.choice(has, k, replace=False)) + list(rng.choice(lacks, k, replace=False)) if k else []
            for code in chosen:
                answer, events = diagnosis_answer(store, subject, t, str(code))
                out.append(QAPair(subject, t, "diagnosis", diagnosis_question(clean_display(store.describe(code))),
                                  answer, str(code), events))
            answer, events = sbp_answer(store, subject, t)
            out.append(QAPair(subject, t, "systolic_bp", SBP_QUESTION, answer, SBP, events))
            answer, events, series = xray_answer(store, subject, t)
            if answer is not None:
                out.append(QAPair(subject, t, "chest_xray", XRAY_QUESTION, answer, None, events, series))
    return out


# ---------------------------------------------------------------------- reading a free question
def classify(question: str, store: QAStore) -> tuple[str | None, str | None]:
    """(question type, diagnosis code) of a free-text question; (None, None) when it matches no template."""
    q = question.strip().lower()
    if "systolic" in q or "blood pressure" in q:
        return "systolic_bp", None
    if re.search(r"x-?ray|radiograph|pneumonia", q) and "diagnos" not in q:
        return "chest_xray", None
    m = re.search(r"diagnos\w*\s+(?:with\s+)?(.+?)\s*\??$", q)
    if m:
        name = m.group(1).strip()
        coded = re.search(r"\b([A-Z]+/[\w.-]+)", question)
        if coded and coded.group(1) in store.diagnosis_codes:
            return "diagnosis", coded.group(1)
        for code in sorted(store.diagnosis_codes):
            if store.describe(code) and clean_display(store.describe(code)) == name:
                return "diagnosis", code
        return "diagnosis", None
    return None, None


def reference_answer(store: QAStore, subject: str, before: float, qtype: str | None, code: str | None
                     ) -> tuple[str | None, list[dict], list[str]]:
    """The answer the records give (None when they cannot), with its events and image series."""
    if qtype == "systolic_bp":
        return (*sbp_answer(store, subject, before), [])
    if qtype == "chest_xray":
        return xray_answer(store, subject, before)
    if qtype == "diagnosis" and code:
        return (*diagnosis_answer(store, subject, before, code), [])
    return None, [], []
