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


def yaml_key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of that key in YAML `text` (mappings and lists; {} when it does not parse)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}.{key.value}" if prefix else str(key.value)
                lines[dotted] = key.start_mark.line + 1
                walk(value, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                dotted = f"{prefix}.{i}" if prefix else str(i)
                lines.setdefault(dotted, item.start_mark.line + 1)
                walk(item, dotted)

    walk(root, "")
    return lines


def format_validation_error(err: ValidationError, source: str, lines: dict[str, int] | None = None) -> str:
    """One line naming the config `source` and each bad key (with its YAML line when `lines` knows it)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        at = (lines or {}).get(loc) or (lines or {}).get(loc.rsplit(".", 1)[0] if "." in loc else "")
        where = f" (line {at})" if at else ""
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'{where}")
        else:
            parts.append(f"{loc}{where}: {e['msg']}")
    return f"invalid config {source}: " + "; ".join(parts)


def read_yaml(path: str | Path) -> tuple[Any, str]:
    """(parsed YAML, its text) of the file at `path`; ConfigError in one line naming the file, line and
    column when it is missing, a folder or not valid YAML."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config {path} is a folder, not a YAML file")
    try:
        text = path.read_text()
        return yaml.safe_load(text), text
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {path}{where}: not valid YAML ({problem})") from None


def load_config(model: type[StrictModel], source: str | Path | dict | None, overrides: list[str] | None = None,
                *, name: str | None = None, text: str | None = None):
    """Load YAML (path or dict) into `model`, apply `--set` overrides, validate; ConfigError (one line) names
    the file, the bad key and its line. `name`/`text`: the file a dict was read from, and its YAML text."""
    lines: dict[str, int] = yaml_key_lines(text) if text else {}
    if source is None:
        data: dict = {}
        name = name or f"<default {model.__name__}>"
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))
        name = name or f"<dict {model.__name__}>"
    else:
        data, raw = read_yaml(source)
        data = data or {}
        lines = yaml_key_lines(raw)
        name = str(source)
    if not isinstance(data, dict):
        raise ConfigError(f"config {name} must be a mapping at the top level")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, name, lines)) from None


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
