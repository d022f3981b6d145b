"""Property-based tests from the OpenAPI spec (schemathesis): on any generated input, valid or not, with
a writer's token, no route answers 500, and every answer has a documented status, content type and shape."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install schemathesis)")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from biomm.serve.app import openapi_spec  # noqa: E402
from tests.serve.conftest import copy_cohort  # noqa: E402
from tests.serve.helpers import FAST_DICOM, TOKENS, WRITER, auth  # noqa: E402

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = sorted((path, method.upper()) for path, ops in openapi_spec()["paths"].items() for method in ops)


@pytest.fixture(scope="module")
def fuzz_schema(serve_model, clinical_cohort, tmp_path_factory):
    """An app with its own cohort copy and engine: generated ingests land here, not in other tests' cohorts."""
    from biomm.serve import create_app
    from biomm.serve.settings import ServeConfig

    cohort = copy_cohort(clinical_cohort, tmp_path_factory.mktemp("fuzz") / "cohort")
    app = create_app(serve_model, cohort, TOKENS, ServeConfig(dicom_ingest=FAST_DICOM))
    return schemathesis.openapi.from_asgi("/openapi.json", app), _real_ids(cohort)


def _real_ids(cohort) -> dict[str, list[str]]:
    from biomm.store.cohort import Cohort

    with Cohort(cohort, create=False, read_only=True) as c:
        return {"subject": c.subjects()[:10], "record": [r["record_id"] for r in c.records("imaging")[:5]],
                "task": ["death_1y"]}


def _with_real_ids(case, ids, draw) -> None:
    """Half the time, put real ids where the spec only knows strings, so generated input reaches the engine."""
    params = case.path_parameters or {}
    for key, kind in (("subject_id", "subject"), ("record_id", "record")):
        if key in params and draw(st.booleans()):
            params[key] = draw(st.sampled_from(ids[kind]))
    body = case.body
    if isinstance(body, dict) and body.get("kind") in ("task", "ask", "similar") and draw(st.booleans()):
        body["subject"] = draw(st.sampled_from(ids["subject"]))
        if body["kind"] == "task":
            body["task"] = draw(st.sampled_from(ids["task"]))
        if body["kind"] == "ask" and not body.get("question"):
            body["question"] = "what was the last diagnosis?"


@pytest.mark.parametrize("path,method", OPERATIONS)
def test_no_server_error_on_generated_input(fuzz_schema, path, method):
    schema, ids = fuzz_schema
    operation = schema[path][method]
    seen = []

    @given(case=operation.as_strategy(), data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case, data):
        _with_real_ids(case, ids, data.draw)
        response = case.call_and_validate(headers=auth(WRITER), checks=CHECKS)
        seen.append(response.status_code)

    run()
    assert seen, f"no example was generated for {method} {path}"
