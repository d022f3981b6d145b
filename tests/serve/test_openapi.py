"""The checked-in OpenAPI document is the app's; the query routes use the query contract's models."""
from __future__ import annotations

import json

from biomm.schema import QueryRequest, QueryResponse
from biomm.serve.app import openapi_spec


def test_checked_in_spec_matches_the_app(project_root):
    checked_in = json.loads((project_root / "schemas" / "openapi.json").read_text())
    assert checked_in == json.loads(json.dumps(openapi_spec())), (
        "schemas/openapi.json is stale: regenerate with `python -m biomm.serve.openapi schemas/openapi.json`")


def test_query_route_uses_the_query_contract():
    spec = openapi_spec()
    op = spec["paths"]["/query"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueryRequest")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueryResponse")
    schemas = spec["components"]["schemas"]
    assert set(schemas["QueryRequest"]["properties"]) == set(QueryRequest.model_fields)
    assert set(schemas["QueryResponse"]["properties"]) == set(QueryResponse.model_fields)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
