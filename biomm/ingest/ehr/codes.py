"""FHIR code systems -> short MEDS prefixes (`SNOMED/44054006`); an unknown system keeps its URL."""
from __future__ import annotations

SYSTEM_PREFIX = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "http://unitsofmeasure.org": "UCUM",
    "urn:oid:2.16.840.1.113883.6.238": "CDCREC",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "ACTCODE",
    "http://terminology.hl7.org/CodeSystem/condition-clinical": "CONDITION_CLINICAL",
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical": "ALLERGY_CLINICAL",
}
PREFIX_SYSTEM = {v: k for k, v in SYSTEM_PREFIX.items()}


def code_of(system: str | None, code: str | None) -> str | None:
    """MEDS code `PREFIX/code` of a FHIR coding (system URL kept when it has no prefix); None without a code."""
    if not code:
        return None
    if not system:
        return f"UNKNOWN/{code}"
    prefix = SYSTEM_PREFIX.get(system)
    return f"{prefix}/{code}" if prefix else f"{system.rstrip('/')}/{code}"


def first_code(concept: dict | None) -> tuple[str | None, str | None]:
    """(MEDS code, display) of a CodeableConcept's first coding; falls back to its text."""
    if not isinstance(concept, dict):
        return None, None
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and coding.get("code"):
            return code_of(coding.get("system"), str(coding["code"])), coding.get("display") or concept.get("text")
    text = concept.get("text")
    return (f"TEXT/{text}" if text else None), text
