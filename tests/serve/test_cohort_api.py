"""The page's data routes against the cohort's own manifest and files: subjects, one subject, its
timeline and notes, its images as PNG with display presets; no identifying data in any answer."""
from __future__ import annotations

import gzip
import io
import json

import duckdb
import numpy as np
import pytest
from PIL import Image

from biomm.serve.render import presets_for, render_png
from tests.serve.helpers import READER, auth

H = auth(READER)


def test_subjects_list_matches_the_manifest(client, subjects):
    data = client.get("/subjects", headers=H, params={"limit": 1000}).json()
    assert data["total"] == len(subjects) == len(data["subjects"])
    assert [s["subject_id"] for s in data["subjects"]] == subjects
    assert all("ehr" in s["modalities"] for s in data["subjects"])
    page = client.get("/subjects", headers=H, params={"limit": 5, "offset": 5}).json()
    assert [s["subject_id"] for s in page["subjects"]] == subjects[5:10]
    part = subjects[3][1:7]
    found = client.get("/subjects", headers=H, params={"q": part}).json()
    assert subjects[3] in [s["subject_id"] for s in found["subjects"]]
    assert all(part.lower() in s["subject_id"].lower() for s in found["subjects"])


def test_subject_detail_counts_records(client, served_cohort, imaged_subject):
    d = client.get(f"/subjects/{imaged_subject}", headers=H).json()
    con = duckdb.connect(str(served_cohort / "cohort.duckdb"), read_only=True)
    want = dict(con.execute("SELECT modality, count(*) FROM records WHERE subject_id = ? GROUP BY 1",
                            [imaged_subject]).fetchall())
    con.close()
    assert {m: c["records"] for m, c in d["modalities"].items()} == want
    assert d["events"]["count"] > 0 and d["events"]["first"] <= d["events"]["last"]


def test_unknown_and_malformed_subject_ids(client):
    r = client.get("/subjects/Pdoesnotexist0000", headers=H)
    assert r.status_code == 404 and "unknown subject" in r.json()["detail"]
    for bad in ("..%2F..%2Fetc", "%20x", "a" * 200):
        r = client.get(f"/subjects/{bad}", headers=H)
        assert r.status_code in (404, 422), (bad, r.status_code)
    assert client.get("/subjects/Pnope/timeline", headers=H).status_code == 404
    assert client.get("/subjects/Pnope/images", headers=H).status_code == 404


def test_timeline_is_the_subjects_events_in_time_order(client, served_cohort, imaged_subject):
    t = client.get(f"/subjects/{imaged_subject}/timeline", headers=H, params={"limit": 5000}).json()
    shards = [str(p) for p in (served_cohort / "ehr" / "events").glob("*.parquet")]
    con = duckdb.connect()
    n = con.execute("SELECT count(*) FROM read_parquet(?) WHERE subject_id = ?", [shards, imaged_subject]).fetchone()[0]
    con.close()
    assert t["total"] == n == len(t["events"])
    times = [e["time"] for e in t["events"]]
    assert times == sorted(times)
    assert sum(s["count"] for s in t["by_system"].values()) == n
    assert t["notes"] and all(note["text"] for note in t["notes"])
    loinc = client.get(f"/subjects/{imaged_subject}/timeline", headers=H, params={"code": "LOINC/", "limit": 3}).json()
    assert loinc["total"] == t["by_system"]["LOINC"]["count"] and len(loinc["events"]) == 3
    assert all(e["code"].startswith("LOINC/") for e in loinc["events"])
    page2 = client.get(f"/subjects/{imaged_subject}/timeline", headers=H, params={"limit": 10, "offset": 10}).json()
    assert page2["events"] == t["events"][10:20]


def test_images_render_as_png_with_presets(client, imaged_subject):
    images = client.get(f"/subjects/{imaged_subject}/images", headers=H).json()
    assert images and images[0]["presets"] == ["default", "auto", "high_contrast", "invert"]
    rid = images[0]["record_id"]
    pixels = {}
    for preset in images[0]["presets"]:
        r = client.get(f"/images/{rid}.png", headers=H, params={"preset": preset})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(r.content))
        assert img.mode == "L" and min(img.size) >= 256
        pixels[preset] = np.asarray(img).astype(int)
    assert np.abs(pixels["invert"] + pixels["default"] - 255).max() <= 2  # bilinear upscaling rounds
    assert pixels["default"].std() > 5 and not np.array_equal(pixels["default"], pixels["high_contrast"])
    r = client.get(f"/images/{rid}.png", headers=H, params={"preset": "lung"})
    assert r.status_code == 422 and "does not apply" in r.json()["detail"]
    assert client.get(f"/images/{rid}.png", headers=H, params={"slice": 3}).status_code == 422
    assert client.get("/images/9.9.9.png", headers=H).status_code == 404


def test_ct_in_hounsfield_units_gets_window_presets():
    prov = {"dicom_modality": "CT", "intensity": {"normalize": "none", "window": None, "window_center": None}}
    assert presets_for(prov)[:2] == ["lung", "soft_tissue"]
    volume = np.stack([np.full((8, 8), -1000.0), np.full((8, 8), 40.0), np.full((8, 8), 1000.0)], axis=-1)[None]
    def grey(preset, z):
        return np.asarray(Image.open(io.BytesIO(render_png(volume, prov, preset, z))))
    assert grey("soft_tissue", 0).max() == 0 and grey("soft_tissue", 2).min() == 255
    assert abs(int(grey("soft_tissue", 1).mean()) - 128) <= 1  # the window's centre is mid-grey
    assert grey("lung", 1).min() > 128  # soft tissue is bright in the lung window
    with pytest.raises(ValueError, match="out of range"):
        render_png(volume, prov, "lung", 5)


def test_cohort_summary_without_server_paths(client, served_cohort, subjects):
    s = client.get("/cohort", headers=H).json()["summary"]
    assert s["subjects"] == len(subjects) and s["deid"] is True
    assert str(served_cohort) not in json.dumps(s)


def _names(data_dir, n: int) -> set[str]:
    """Family and given names of the first Synthea patients the clinical cohort holds."""
    from tests.conftest import _thoracic_first

    names = set()
    for f in _thoracic_first(37)[:n]:
        bundle = json.loads(gzip.decompress(f.read_bytes()))
        for e in bundle["entry"]:
            if e["resource"]["resourceType"] == "Patient":
                for name in e["resource"].get("name", []):
                    names.update(x for x in [name.get("family"), *name.get("given", [])] if x and len(x) > 3)
    return names


def test_answers_carry_no_names_from_the_source_records(client, data_dir, subjects):
    names = _names(data_dir, 15)
    assert len(names) > 20
    text = client.get("/subjects", headers=H, params={"limit": 1000}).text
    for sid in subjects[:20]:
        text += client.get(f"/subjects/{sid}", headers=H).text
        text += client.get(f"/subjects/{sid}/timeline", headers=H, params={"limit": 5000}).text
        text += client.get(f"/subjects/{sid}/images", headers=H).text
    leaked = sorted(n for n in names if n in text)
    assert not leaked, f"names found in API answers: {leaked[:5]}"


def test_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/subjects", headers=H).headers["cache-control"] == "no-store"
    page = r.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
