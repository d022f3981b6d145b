"""The data side of a modality plugin: a `ModalitySource` turns samples into that modality's tensors.

Each modality with subject-level data names its source class in `biomm.modalities` (`spec.source`);
the patient data module opens one source per modality it feeds and loops over them, so adding a
modality needs no branch here or in the collator."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomm.data.config import DataConfig
from biomm.data.samples import Sample
from biomm.modalities import resolve, spec
from biomm.types import ModalityInput


@dataclass
class SourceContext:
    """What a source is opened with: the cohort, the data config, the training subjects (vocabularies
    and tokenizers are fitted on them only), the run's artifacts folder and the modality's adapter config
    (input sizes the data must match)."""

    root: Path
    cfg: DataConfig
    train_ids: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    artifacts_dir: Path | None = None
    load_artifacts: bool = False
    adapter: Any = None
    subjects: list[str] | None = None  # read only these subjects' data (None: every subject)

    def artifact(self, name: str) -> Path | None:
        """Path of an artifact of this run (None when the run keeps none)."""
        return self.artifacts_dir / name if self.artifacts_dir else None


class ModalitySource(abc.ABC):
    """One modality's data for a set of subjects."""

    name: str = ""

    @classmethod
    @abc.abstractmethod
    def open(cls, ctx: SourceContext) -> "ModalitySource":
        """Read what the modality needs from the cohort; fit (or load) its vocabulary or tokenizer."""

    @abc.abstractmethod
    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict[str, Any]]:
        """Tensors for `samples` with the presence mask `[B]`, and extras for the batch (e.g. the series used)."""

    def sizes(self) -> dict[str, Any]:
        """Adapter config values the data decides (`{"vocab_size": ...}`): the one channel by which data sizes
        the model."""
        return {}

    def link(self, sources: dict[str, "ModalitySource"]) -> None:
        """Called once every source of the data module is open: read what this source needs from the others
        (e.g. the text tokenizer, for the EHR's code display names)."""

    def tables(self) -> dict[str, Any]:
        """Fixed tensors the data gives the adapter (`Adapter.set_tables`), e.g. each code's word pieces."""
        return {}


def open_source(modality: str, ctx: SourceContext) -> ModalitySource:
    """The source of `modality` (from its spec), opened on `ctx`."""
    target = spec(modality).source
    if target is None:
        raise ValueError(f"modality {modality} has no subject-level data source; it is read by its own data module")
    return resolve(target).open(ctx)
