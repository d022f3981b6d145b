"""Config models: YAML in, pydantic validation (unknown keys are errors naming the key), JSON Schema out.

Each part defines its own config model next to its code, deriving from `StrictModel`; the
models that get a checked-in JSON Schema are listed in `schema_models()`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the reason."""


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ---------------------------------------------------------------- foundation configs
class DeidConfig(StrictModel):
    """De-identification on ingest: on by default, the key, and the largest per-patient date shift."""
    enabled: bool = True
    key: str | None = Field(None, description="De-identification key (hex); default: the cohort's own key file")
    max_date_shift_days: int = Field(365, ge=0, description="Dates shift by a per-patient offset in [-max, +max] days")


class SplitConfig(StrictModel):
    """Fractions and seed of the hash split of subjects into train / val / test."""
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


class PipelineStep(StrictModel):
    """One step of a pipeline: `kind` names a registered step, `with` holds its arguments."""

    kind: str
    name: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PipelineConfig(StrictModel):
    """A pipeline YAML: a name, a work folder and the steps to run in order."""
    name: str
    description: str = ""
    workdir: str = Field("demo_out", description="Folder for the pipeline's outputs, relative to the current directory")
    steps: list[PipelineStep]


# ---------------------------------------------------------------- loading
def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)]
            continue
        node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: '{key}' is not a mapping")
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """`a.b=c` strings into (key, YAML-parsed value) pairs."""
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        parsed.append((key.strip(), yaml.safe_load(raw)))
    return parsed


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad key of a pydantic error, naming the config `source`."""
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{loc}'")
        else:
            lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_config(model: type[StrictModel], source: str | Path | dict | None, overrides: list[str] | None = None):
    """Load YAML (path or dict) into `model`, apply `--set` overrides, validate; ConfigError names the bad key."""
    if source is None:
        data: dict = {}
        name = f"<default {model.__name__}>"
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))
        name = f"<dict {model.__name__}>"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
        name = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config {name} must be a mapping at the top level")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, name)) from None


# ---------------------------------------------------------------- schemas
# name -> "module:Class" of the models that are not a modality's (those come from biomm.modalities).
# Every model listed here or in a spec has schemas/<name>.schema.json checked in.
CORE_SCHEMAS: dict[str, str] = {
    "pipeline": "biomm.config:PipelineConfig",
    "ingest_summary": "biomm.ingest.base:IngestSummary",
    "model": "biomm.model.config:ModelConfig",
    "train": "biomm.train.config:TrainConfig",
    "task": "biomm.data.tasks:TaskDef",
    "query_request": "biomm.schema:QueryRequest",
    "query_response": "biomm.schema:QueryResponse",
    "virtual_cell": "biomm.heads.cells.virtual_cell:VirtualCellConfig",
    "qa": "biomm.heads.qa.config:QAConfig",
}


def schema_targets() -> dict[str, str]:
    """Every model with a checked-in JSON Schema: the core ones and each modality spec's."""
    from biomm.modalities import MODALITIES

    out = dict(CORE_SCHEMAS)
    for spec in MODALITIES.values():
        out.update(spec.schemas)
    return out


def schema_models() -> dict[str, type[BaseModel]]:
    """The models of `schema_targets()`, imported."""
    from biomm.modalities import resolve

    return {name: resolve(target) for name, target in schema_targets().items()}


def generate_schemas() -> dict[str, dict]:
    """JSON Schema of every model of `schema_models()`, by name."""
    return {name: model.model_json_schema() for name, model in schema_models().items()}


def write_schemas(folder: str | Path) -> list[Path]:
    """Write `<folder>/<name>.schema.json` for every schema model; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate_schemas().items():
        path = folder / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


Precision = Literal["auto", "bf16", "fp32"]
