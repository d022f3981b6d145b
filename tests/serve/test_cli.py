"""`biomm serve` as a user starts it (tokens from BIOMM_TOKENS, loopback), and `biomm bench serve` on a
short bounded run; bad token configuration stops the command with a clear error and exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from biomm.bench.serve import free_port, run, wait_ready
from tests.serve.helpers import READER, WRITER, auth


def test_biomm_serve_starts_and_answers(serve_model, served_cohort, imaged_subject):
    port = free_port()
    env = {**os.environ, "BIOMM_TOKENS": f"{READER}:reader,{WRITER}:writer", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "biomm", "serve", str(serve_model), "--cohort", str(served_cohort),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout=120)
        assert httpx.get(base + "/model").status_code == 401
        r = httpx.post(base + "/query", headers=auth(READER), json={"kind": "similar", "subject": imaged_subject, "k": 2})
        assert r.status_code == 200 and len(r.json()["evidence"]["similar_subjects"]) == 2
        assert "<title>biomm</title>" in httpx.get(base + "/").text
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert READER not in out + err and WRITER not in out + err  # tokens never logged
    assert f"http://127.0.0.1:{port}/" in err


def test_biomm_serve_refuses_bad_token_config(serve_model, served_cohort, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BIOMM_TOKENS"}
    r = subprocess.run([sys.executable, "-m", "biomm", "serve", str(serve_model), "--cohort", str(served_cohort)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no tokens configured" in r.stderr
    bad = tmp_path / "tokens.yaml"
    bad.write_text("secret-token-xyz: admin\n")
    r = subprocess.run([sys.executable, "-m", "biomm", "serve", str(serve_model), "--cohort", str(served_cohort),
                        "--tokens", str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "role 'admin'" in r.stderr and "secret-token-xyz" not in r.stderr


def test_bench_serve_short_run(serve_model, served_cohort):
    out = run(serve_model, served_cohort, seconds=3, clients=4, index_size=5000)
    json.dumps(out)
    load = out["load"]
    assert load["errors"] == 0 and load["requests_ok"] > 10
    assert {k for k, v in load["latency"].items() if v["n"] > 0} == {"task", "ask", "similar"}
    for v in load["latency"].values():
        assert v["p50_ms"] <= v["p95_ms"] <= v["p99_ms"] <= v["max_ms"]
    index = out["index"]
    assert index["indexed"] == 5000 and index["recall_at_10_vs_exact"] > 0.9 and index["speedup_vs_numpy"] > 0
