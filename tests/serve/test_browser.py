"""The page in headless Chromium (driven by playwright, the system browser): log in with a token, open a
subject, see its timeline and images, run a task and ask a question, and see answers with evidence.
Every request the page makes goes to the server itself. Screenshots go to the test's tmp folder."""
from __future__ import annotations

import subprocess
from urllib.parse import urlparse

import pytest

from tests.serve.helpers import READER, TASK

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium(project_root) -> str:
    try:
        out = subprocess.run(["bash", str(project_root / "scripts" / "chromium.sh")], capture_output=True, text=True,
                             timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot set up chromium: {exc}")
    if out.returncode != 0:
        pytest.skip(f"cannot set up chromium: {out.stderr.strip()[-300:]}")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return out.stdout.strip().splitlines()[-1]


def test_clinician_page(chromium, live_server, imaged_subject, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    host = urlparse(live_server).netloc
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        requested, errors = [], []
        page.on("request", lambda r: requested.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live_server + "/")
        expect(page.locator("#before-login")).to_contain_text("access token")  # what to do before login (18)
        page.fill("#token", "wrong-token-000")
        page.click("#login button")
        expect(page.locator("#error")).to_contain_text("not accepted")
        page.fill("#token", READER)
        page.click("#login button")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#model-name")).to_contain_text("subjects")
        expect(page.locator("#before-login")).to_be_hidden()
        # the subject list: sex, age band, visits, last visit, searchable by them (18)
        first = page.locator("#subject-list li").first
        expect(first).to_contain_text("visits")
        expect(first).to_contain_text("age ")
        n_all = page.locator("#subject-list li").count()
        page.fill("#subject-filter", "female")
        page.wait_for_function(f"() => document.querySelectorAll('#subject-list li').length < {n_all}", polling=100)
        assert all("female" in t for t in page.locator("#subject-list li").all_inner_texts())
        page.fill("#subject-filter", "")
        page.wait_for_function(f"() => document.querySelectorAll('#subject-list li').length === {n_all}", polling=100)
        page.click(f"button[data-subject='{imaged_subject}']")
        expect(page.locator("#subject-id")).to_have_text(imaged_subject)
        # the timeline: descriptions, newest first, grouped by visit day, filters by kind, values with units (14, 15)
        expect(page.locator("#events tr.visit").first).to_be_attached()
        days = [t[:10] for t in page.locator("#events tr.visit").all_inner_texts() if t[:4].isdigit()]
        assert days == sorted(days, reverse=True) and len(days) >= 2, days
        body = page.locator("#events tbody").inner_text()
        assert "SNOMED/" not in "".join(page.locator("#events tbody tr:not(.visit) td:nth-child(2)").all_inner_texts())
        assert "AMB" not in "".join(page.locator("#events tbody tr:not(.visit) td:nth-child(2)").all_inner_texts())
        page.select_option("#kind-filter", "labs")
        page.wait_for_function("() => { const r = [...document.querySelectorAll('#events tbody tr:not(.visit)')];"
                               " return r.length && r.every((x) => x.dataset.kind === 'labs'); }", polling=100)
        values = [v for v in page.locator("#events tbody tr:not(.visit) td.num").all_inner_texts() if v.strip()]
        assert values and all(" " in v for v in values), values  # a unit beside every lab value
        assert all(len(v.split()[0].replace("-", "").replace(".", "")) <= 5 for v in values), values
        timeline_shot = tmp_path / "page_timeline.png"
        page.screenshot(path=str(timeline_shot), full_page=True)
        page.select_option("#kind-filter", "")
        del body
        expect(page.locator("#modalities .chip[data-modality='imaging']")).to_be_visible()
        expect(page.locator("#timeline-chart svg circle").first).to_be_attached()
        assert page.locator("#events tbody tr").count() > 10
        img = page.locator("#images img").first
        expect(img).to_have_attribute("src", __import__("re").compile("^blob:"))
        page.wait_for_function("() => { const i = document.querySelector('#images img'); return i && i.naturalWidth >= 256; }", polling=200)

        page.select_option("#task-select", TASK)
        page.click("#task-form button")
        expect(page.locator("#answer-text")).to_contain_text("probability")
        expect(page.locator("#attribution-svg rect.bar").first).to_be_attached()
        assert page.locator("#top-events tbody tr").count() >= 1
        assert page.locator("#similar-list li button").count() >= 1
        page.fill("#similar-k", "5")
        page.click("#similar-form button")
        expect(page.locator("#similar-list li[data-rank='1']")).to_contain_text("rank 1 of")  # rank, not a bare cosine (17)
        expect(page.locator("#similar-list li[data-rank='1']")).to_contain_text("% of the cohort")
        # what the subjects share: the diagnoses / procedures both have (17)
        expect(page.locator("#similar-list li .shared").first).to_contain_text("shares:")
        box_events = page.locator("#top-events").bounding_box()
        box_similar = page.locator("#similar-list").bounding_box()
        if box_events and box_similar:  # side by side or stacked, never overlapping (18)
            apart = (box_events["x"] + box_events["width"] <= box_similar["x"] + 1
                     or box_events["y"] + box_events["height"] <= box_similar["y"] + 1
                     or box_similar["y"] + box_similar["height"] <= box_events["y"] + 1)
            assert apart, (box_events, box_similar)
        page.select_option("#task-select", TASK)
        page.click("#task-form button")
        expect(page.locator("#answer-text")).to_contain_text("probability")
        task_shot = tmp_path / "page_task.png"
        page.screenshot(path=str(task_shot), full_page=True)

        page.fill("#question", "What was the most recent diagnosis?")
        page.click("#ask-form button")
        page.wait_for_function("() => { const t = document.querySelector('#answer-text').textContent;"
                               " return (t && t !== '…') || document.querySelector('#error').textContent; }", polling=200)
        assert not page.locator("#error").is_visible(), page.locator("#error").text_content()
        assert page.locator("#answer-text").text_content().strip()
        expect(page.locator("#attribution-svg rect.bar").first).to_be_attached()
        assert page.locator("#top-events tbody tr").count() >= 1
        shot = tmp_path / "page_ask.png"
        page.screenshot(path=str(shot), full_page=True)
        assert page.evaluate("() => localStorage.length") == 0
        assert page.evaluate("() => sessionStorage.getItem('biomm-token')") == READER
        browser.close()
    print(f"\nscreenshots: {timeline_shot} {task_shot} {shot}")
    assert not errors, errors
    outside = [u for u in requested if urlparse(u).scheme in ("http", "https") and urlparse(u).netloc != host]
    assert not outside, f"the page called other hosts: {outside[:5]}"
