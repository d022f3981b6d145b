"""Config loading: unknown keys name the key, --set overrides, checked-in schemas match the code."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from biomm.config import ConfigError, PipelineConfig, generate_schemas, load_config
from biomm.ingest.ehr.config import FhirIngestConfig

PROJECT = Path(__file__).resolve().parents[1]


def test_unknown_key_is_an_error_that_names_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("strict: true\ndeid:\n  enabeld: false\n")
    with pytest.raises(ConfigError, match=r"unknown key 'deid.enabeld'"):
        load_config(FhirIngestConfig, p)


def test_set_overrides_nested_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("strict: false\n")
    cfg = load_config(FhirIngestConfig, p, ["strict=true", "deid.max_date_shift_days=30"])
    assert cfg.strict is True and cfg.deid.max_date_shift_days == 30
    with pytest.raises(ConfigError, match="key=value"):
        load_config(FhirIngestConfig, p, ["strict"])
    with pytest.raises(ConfigError, match="deid.max_date_shift_days"):
        load_config(FhirIngestConfig, p, ["deid.max_date_shift_days=-3"])


def test_pipelines_in_the_project_validate():
    for path in sorted((PROJECT / "pipelines").glob("*.yaml")):
        cfg = load_config(PipelineConfig, path)
        assert cfg.steps, path


def test_checked_in_schemas_match_the_code():
    folder = PROJECT / "schemas"
    generated = generate_schemas()
    for name, schema in generated.items():
        path = folder / f"{name}.schema.json"
        assert path.exists(), f"schemas/{path.name} missing: run `make schemas`"
        assert json.loads(path.read_text()) == json.loads(json.dumps(schema)), (
            f"schemas/{path.name} is out of date with the code: run `make schemas`")
    stale = {p.name for p in folder.glob("*.schema.json")} - {f"{n}.schema.json" for n in generated}
    assert not stale, f"schemas without a model: {stale}"
