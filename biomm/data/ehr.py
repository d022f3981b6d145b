"""EHR events for the model: a code vocabulary with value statistics, and per-subject event tensors.

Events are read once from the cohort's MEDS shards into contiguous arrays sorted by subject and
time (an index of offsets per subject), so building a batch is slicing, not querying."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biomm.config import ConfigError
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext
from biomm.store.events import code_statistics, read_events
from biomm.types import ModalityInput

PAD, MASK, UNK = 0, 1, 2
SPECIAL = ("<pad>", "<mask>", "<unk>")
EPOCH = np.datetime64("1970-01-01T00:00:00", "us")


def days_since_epoch(t: np.ndarray) -> np.ndarray:
    """Float days since 1970-01-01 of the datetime64 array `t` (same shape)."""
    return (t.astype("datetime64[us]") - EPOCH).astype(np.float64) / 86_400e6


def day_to_iso(day: float) -> str:
    """Days since the epoch -> ISO timestamp rounded to the nearest second ('2019-03-04T10:15:00'):
    the one way every answer's evidence writes an event time."""
    return str((EPOCH + np.timedelta64(int(round(day * 86_400)), "s")).astype("datetime64[s]"))


@dataclass
class EhrVocab:
    """Event codes -> ids (0 pad, 1 mask, 2 unknown), with per-code mean/std of numeric values."""

    codes: list[str]
    value_mean: dict[str, float]
    value_std: dict[str, float]

    @property
    def size(self) -> int:
        """Number of ids, special tokens included."""
        return len(SPECIAL) + len(self.codes)

    def __post_init__(self) -> None:
        self._index = {c: i + len(SPECIAL) for i, c in enumerate(self.codes)}

    def id(self, code: str) -> int:
        """Id of `code` (`<unk>` if unknown)."""
        return self._index.get(code, UNK)

    def code(self, idx: int) -> str:
        """The code (or special token) of id `idx`."""
        return SPECIAL[idx] if idx < len(SPECIAL) else self.codes[idx - len(SPECIAL)]

    def ids(self, codes) -> np.ndarray:
        """Ids [N] int64 of a sequence of N codes (unknown -> `<unk>`)."""
        get = self._index.get
        return np.fromiter((get(c, UNK) for c in codes), dtype=np.int64, count=len(codes))

    @classmethod
    def build(cls, cohort_root: str | Path, subjects: list[str] | None = None, min_count: int = 1,
              max_size: int | None = None) -> "EhrVocab":
        """From the events of `subjects` (the training split: nothing of val/test leaks into it)."""
        rows = code_statistics(cohort_root, subjects, min_count)
        if max_size is not None:
            rows = rows[: max_size - len(SPECIAL)]
        return cls(
            codes=[r[0] for r in rows],
            value_mean={r[0]: float(r[2]) for r in rows if r[2] is not None},
            value_std={r[0]: float(r[3]) if r[3] else 1.0 for r in rows if r[2] is not None},
        )

    def save(self, path: str | Path) -> None:
        """Write the codes and value statistics as JSON."""
        Path(path).write_text(json.dumps({"codes": self.codes, "value_mean": self.value_mean, "value_std": self.value_std}))

    @classmethod
    def load(cls, path: str | Path) -> "EhrVocab":
        """The vocabulary written by `save`."""
        d = json.loads(Path(path).read_text())
        return cls(d["codes"], d["value_mean"], d["value_std"])


class EhrEvents:
    """All events of a set of subjects, as arrays sorted by (subject, time), plus offsets per subject."""

    def __init__(self, cohort_root: str | Path, vocab: EhrVocab, subjects: list[str] | None = None):
        self.vocab = vocab
        table = read_events(cohort_root, subjects)
        if table is None:
            self.subjects: dict[str, tuple[int, int]] = {}
            self.codes_text = np.array([], dtype=object)
            self.codes = np.zeros(0, np.int64)
            self.values = np.zeros(0, np.float32)
            self.value_mask = np.zeros(0, bool)
            self.times = np.zeros(0, np.float64)
            return
        sid = table.column("subject_id").to_numpy(zero_copy_only=False)
        times = table.column("time").to_numpy(zero_copy_only=False)
        codes = table.column("code").to_numpy(zero_copy_only=False)
        values = table.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float64)
        t = days_since_epoch(times)
        self._fill_missing_times(sid, t)
        self.codes_text = codes
        self.codes = vocab.ids(codes)
        mean = np.array([vocab.value_mean.get(c, 0.0) for c in codes])
        std = np.array([vocab.value_std.get(c, 1.0) or 1.0 for c in codes])
        self.value_mask = ~np.isnan(values)
        self.values = np.where(self.value_mask, (values - mean) / std, 0.0).astype(np.float32)
        self.times = t
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, int)
        ends = np.r_[starts[1:], len(sid)]
        self.subjects = {str(sid[s]): (int(s), int(e)) for s, e in zip(starts, ends)}

    @staticmethod
    def _fill_missing_times(sid: np.ndarray, t: np.ndarray) -> None:
        """A static event without a time takes its subject's first known time."""
        missing = np.isnan(t)
        if not missing.any():
            return
        for i in np.flatnonzero(missing):
            j = i
            while j < len(t) and sid[j] == sid[i] and np.isnan(t[j]):
                j += 1
            t[i] = t[j] if j < len(t) and sid[j] == sid[i] else 0.0

    def __contains__(self, subject_id: str) -> bool:
        return subject_id in self.subjects

    def span(self, subject_id: str, before: float | None = None) -> tuple[int, int]:
        """Index range of a subject's events, optionally only those at or before `before` (days)."""
        s, e = self.subjects[subject_id]
        if before is not None:
            e = s + int(np.searchsorted(self.times[s:e], before, side="right"))
        return s, e

    def last_time(self, subject_id: str) -> float:
        """Day (since the epoch) of the subject's last event."""
        s, e = self.subjects[subject_id]
        return float(self.times[e - 1])

    def tensors(self, subject_ids: list[str], max_events: int,
                prediction_times: list[float | None] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Left-aligned padded tensors of each subject's most recent `max_events` events before its
        prediction time, and the presence mask [B] (False: no events, so the modality is absent)."""
        b = len(subject_ids)
        spans = []
        for i, sid in enumerate(subject_ids):
            if sid not in self.subjects:
                spans.append((0, 0))
                continue
            pt = prediction_times[i] if prediction_times is not None else None
            s, e = self.span(sid, pt)
            spans.append((max(s, e - max_events), e))
        length = max(1, max(e - s for s, e in spans))
        codes = np.zeros((b, length), np.int64)
        values = np.zeros((b, length), np.float32)
        vmask = np.zeros((b, length), bool)
        times = np.zeros((b, length), np.float64)
        mask = np.zeros((b, length), bool)
        pts = np.zeros(b, np.float64)
        for i, (s, e) in enumerate(spans):
            n = e - s
            codes[i, :n] = self.codes[s:e]
            values[i, :n] = self.values[s:e]
            vmask[i, :n] = self.value_mask[s:e]
            times[i, :n] = self.times[s:e]
            mask[i, :n] = True
            pt = prediction_times[i] if prediction_times is not None else None
            pts[i] = pt if pt is not None else (times[i, n - 1] if n else 0.0)
        present = torch.from_numpy(mask.any(1))
        # times relative to a recent origin keep float32 precise to the minute
        origin = pts.max() if b else 0.0
        out = {
            "codes": torch.from_numpy(codes),
            "values": torch.from_numpy(values),
            "value_mask": torch.from_numpy(vmask),
            "times": torch.from_numpy((times - origin).astype(np.float32)) * torch.from_numpy(mask),
            "mask": torch.from_numpy(mask),
            "prediction_time": torch.from_numpy((pts - origin).astype(np.float32)),
        }
        return out, present

    def top_events(self, subject_id: str, before: float | None = None, k: int = 10) -> list[dict]:
        """The subject's most recent events (code, day, value) — evidence for answers."""
        s, e = self.span(subject_id, before)
        out = []
        for i in range(e - 1, max(s, e - k) - 1, -1):
            out.append({"code": str(self.codes_text[i]), "time": day_to_iso(float(self.times[i])),
                        "value_z": float(self.values[i]) if self.value_mask[i] else None})
        return out


def check_vocabulary_coverage(ehr: EhrEvents, cohort_root: Path, minimum: float = 0.5) -> float:
    """A saved vocabulary must know most of a cohort's events, else the model would read mostly <unk>:
    a checkpoint trained on other data (another coding system, another site's codes)."""
    if not len(ehr.codes):
        return 1.0
    known = float((ehr.codes != UNK).mean())
    if known < minimum:
        unknown = sorted(set(ehr.codes_text[ehr.codes == UNK]))[:5]
        raise ConfigError(
            f"the model's EHR vocabulary does not match cohort {cohort_root}: only {known:.0%} of its events have "
            f"a known code (e.g. unknown: {', '.join(unknown)}); train or fine-tune a model on this kind of data")
    return known


class EhrSource(ModalitySource):
    """EHR events for the model: each sample's most recent `max_events` events before its prediction time."""

    name = "ehr"

    def __init__(self, events: EhrEvents, max_events: int):
        self.events, self.max_events = events, max_events

    @classmethod
    def open(cls, ctx: SourceContext) -> "EhrSource":
        """Vocabulary from the training subjects' events (or the run's saved one), then every subject's events."""
        path = ctx.artifact("ehr_vocab.json")
        if ctx.load_artifacts and path is not None and path.exists():
            vocab = EhrVocab.load(path)
        else:
            vocab = EhrVocab.build(ctx.root, ctx.train_ids, ctx.cfg.ehr_min_count)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                vocab.save(path)
        events = EhrEvents(ctx.root, vocab)
        if ctx.load_artifacts:
            check_vocabulary_coverage(events, ctx.root)
        return cls(events, ctx.cfg.max_events)

    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict]:
        """codes/values/value_mask/times/mask `[B, L]`, prediction_time `[B]`; present `[B]`."""
        tensors, present = self.events.tensors([s.subject_id for s in samples], self.max_events,
                                               [s.prediction_time for s in samples])
        return ModalityInput(tensors, present), {}

    def sizes(self) -> dict[str, int]:
        """The EHR adapter's vocabulary size."""
        return {"vocab_size": max(self.events.vocab.size, 4)}

