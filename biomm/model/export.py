"""`biomm export RUN --to DIR`: a self-contained model folder that `biomm.load(DIR)` opens without
training code or the cohort: safetensors weights, the resolved config, vocabularies and tokenizers,
metrics, and a Markdown model card."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from biomm.config import ConfigError
from biomm.store.atomic import atomic_write_bytes

FORMAT = "biomm-model/1"
MANIFEST = "biomm_model.json"


def _cohort_summary(cohort: str | None) -> dict:
    if not cohort or not Path(cohort).exists():
        return {}
    from biomm.store.cohort import Cohort
    from biomm.store.summary import cohort_summary

    try:
        with Cohort(cohort, create=False, read_only=True) as c:
            info = cohort_summary(c)
    except Exception as exc:  # the card is still written; say why the summary is missing
        return {"error": f"cohort summary unavailable: {exc}"}
    return {k: info[k] for k in ("subjects", "subjects_by_kind", "subjects_by_modality", "splits", "deid")}


def model_card(cfg: dict, run: dict, metrics: dict, data: dict) -> str:
    """The Markdown model card (README.md) from the train config, run info, metrics and cohort summary."""
    model, objectives = cfg["model"], cfg["model"]["objectives"]
    active = [f"{name} (weight {o['weight']})" for name, o in objectives.items() if o.get("weight", 0) > 0]
    lines = [
        f"# biomm model: {cfg.get('name', 'biomm')}",
        "",
        f"Exported {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from code version `{run.get('code_version', 'unknown')}`.",
        "",
        "## Modalities and architecture",
        f"- modalities: {', '.join(cfg['data']['modalities'])} ({cfg['data']['kind']})",
        f"- fusion: {model['backbone']['timing']} (preset {model['preset']}, width {model.get('width') or 'preset default'})",
        *[f"- {m} adapter: {json.dumps(a)}" for m, a in model["adapters"].items()],
        f"- objectives: {', '.join(active)}",
        f"- precision during training: {run.get('precision')} ({run.get('precision_reason')})",
        "",
        "## Data",
        f"- cohort: {data.get('subjects', '?')} subjects; with each modality: {data.get('subjects_by_modality', {})}",
        f"- splits (by a hash of the subject id): {data.get('splits', {})}",
        f"- de-identified on ingest: {data.get('deid', 'unknown')}",
        f"- trained on {run.get('train_subjects')} subjects, validated on {run.get('val_subjects')}",
        "",
        "## Validation metrics",
        *[f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(metrics.items())],
        "",
        "## Intended use",
        "Research on multimodal embeddings: cross-modal retrieval, similar-subject search, and as the",
        "encoder of biomm's virtual-cell and clinical-reasoning heads. Not a medical device; not for",
        "clinical decisions. Metrics come from the cohort above and do not transfer to other populations",
        "without re-validation. The demo cohorts are synthetic (Synthea) or a documented linkage of real",
        "parts (PneumoniaMNIST images attached to Synthea imaging studies), not real patients' records.",
        "",
    ]
    return "\n".join(lines)


def export(run: str | Path, to: str | Path) -> Path:
    """Copy a finished run's model, configs, metrics and artifacts into the self-contained folder `to`; returns it."""
    run, to = Path(run), Path(to)
    needed = [run / "model" / "config.json", run / "model" / "model.safetensors", run / "train_config.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ConfigError(f"{run} is not a finished biomm run (missing {', '.join(missing)})")
    tmp = to.with_name(f".{to.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(run / "model" / "config.json", tmp / "config.json")
    shutil.copy2(run / "model" / "model.safetensors", tmp / "model.safetensors")
    shutil.copy2(run / "train_config.json", tmp / "train_config.json")
    if (run / "model" / "objectives.safetensors").exists():
        shutil.copy2(run / "model" / "objectives.safetensors", tmp / "objectives.safetensors")
    for name in ("run.json", "metrics.json"):
        if (run / name).exists():
            shutil.copy2(run / name, tmp / name)
    if (run / "artifacts").exists():
        shutil.copytree(run / "artifacts", tmp / "artifacts")
    for extra in ("heads",):
        if (run / extra).exists():
            shutil.copytree(run / extra, tmp / extra)
    cfg = json.loads((run / "train_config.json").read_text())
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    (tmp / "README.md").write_text(model_card(cfg, info, metrics, _cohort_summary(info.get("cohort"))))
    atomic_write_bytes(tmp / MANIFEST, json.dumps({
        "format": FORMAT, "name": cfg.get("name"), "kind": cfg["data"]["kind"],
        "modalities": cfg["data"]["modalities"]}, indent=2).encode())
    if to.exists():
        shutil.rmtree(to)
    tmp.rename(to)
    return to
