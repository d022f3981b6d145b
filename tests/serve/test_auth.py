"""Bearer tokens: 401 for a missing or wrong token (same bare body), 403 for a reader's ingest, token
configuration from files and the environment, CORS off by default."""
from __future__ import annotations

import json

import pytest

from biomm.serve.auth import ENV, TokenConfigError, load_tokens
from tests.serve.helpers import READER, TOKENS, WRITER, auth

PROTECTED = [("GET", "/model"), ("GET", "/cohort"), ("GET", "/subjects"), ("GET", "/subjects/Pabc"),
             ("GET", "/subjects/Pabc/timeline"), ("GET", "/subjects/Pabc/images"), ("GET", "/images/1.2.3.png"),
             ("POST", "/query"), ("POST", "/ingest")]


def test_every_api_route_but_health_is_listed_here(app):
    spec = app.openapi()["paths"]
    listed = {p.replace("Pabc", "{subject_id}").replace("1.2.3", "{record_id}") for _, p in PROTECTED}
    assert set(spec) - {"/health"} == listed
    for path, ops in spec.items():
        for op in ops.values():
            assert ("security" in op) == (path != "/health"), path


@pytest.mark.parametrize("method,path", PROTECTED)
def test_missing_or_wrong_token_is_a_bare_401(client, method, path):
    bodies = []
    for headers in ({}, auth("not-a-token-at-all"), {"Authorization": READER}, {"Authorization": f"Basic {READER}"},
                    auth(READER + "x"), auth(READER[:-1])):
        r = client.request(method, path, headers=headers, json={"kind": "similar", "subject": "x"})
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        bodies.append(r.content)
    assert len(set(bodies)) == 1 and json.loads(bodies[0]) == {"detail": "unauthorized"}


def test_health_needs_no_token(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_reader_cannot_ingest_writer_can_read(client, subjects):
    r = client.post("/ingest", headers=auth(READER), json={"resourceType": "Bundle", "type": "collection", "entry": []})
    assert r.status_code == 403 and "writer" in r.json()["detail"]
    assert client.get("/subjects", headers=auth(WRITER)).status_code == 200
    assert client.get("/subjects", headers=auth(READER)).json()["total"] == len(subjects)


def test_tokens_from_yaml_json_and_environment(tmp_path):
    yml = tmp_path / "tokens.yaml"
    yml.write_text("tokens:\n  yaml-token-123: reader\n")
    js = tmp_path / "tokens.json"
    js.write_text(json.dumps({"json-token-123": "writer"}))
    assert load_tokens(yml, env={}) == {"yaml-token-123": "reader"}
    assert load_tokens(js, env={}) == {"json-token-123": "writer"}
    both = load_tokens(yml, env={ENV: "env-token-1234:writer, env-token-5678:reader"})
    assert both == {"yaml-token-123": "reader", "env-token-1234": "writer", "env-token-5678": "reader"}


@pytest.mark.parametrize("env,reason", [
    ("secret-token-1:admin", "role 'admin'"), ("short:reader", "not a usable token"),
    ("secret-token-1", "not token:role"), ("", "no tokens configured")])
def test_bad_token_configs_are_refused_without_echoing_tokens(env, reason):
    with pytest.raises(TokenConfigError, match=reason) as err:
        load_tokens(None, env={ENV: env})
    assert "secret-token-1" not in str(err.value) and "short" not in str(err.value)


def test_token_file_errors(tmp_path):
    with pytest.raises(TokenConfigError, match="not found"):
        load_tokens(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "t.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(TokenConfigError, match="must map token -> role"):
        load_tokens(bad, env={})


def test_cors_is_off_by_default_and_on_when_configured(client, serve_model, served_cohort, engine):
    from fastapi.testclient import TestClient

    from biomm.serve import create_app
    from biomm.serve.settings import ServeConfig

    pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization"}
    r = client.options("/subjects", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/subjects", headers={**auth(READER), "Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    cors = create_app(serve_model, served_cohort, TOKENS, ServeConfig(cors_origins=["http://ward.local"]), engine=engine)
    with TestClient(cors) as c:
        r = c.options("/subjects", headers={**pre, "Origin": "http://ward.local"})
        assert r.headers["access-control-allow-origin"] == "http://ward.local"
        r = c.options("/subjects", headers=pre)
        assert "access-control-allow-origin" not in r.headers


def test_app_refuses_to_start_without_tokens(serve_model, served_cohort):
    from biomm.serve import create_app

    with pytest.raises(ValueError, match="no tokens"):
        create_app(serve_model, served_cohort, {})
