"""EHR events for the model: a code vocabulary with value statistics, and per-subject event tensors.

Events are read once from the cohort's MEDS shards into contiguous arrays sorted by subject and
time (an index of offsets per subject), so building a batch is slicing, not querying."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from biomm.config import ConfigError
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext
from biomm.store.cohort import Cohort
from biomm.store.events import code_statistics, read_events
from biomm.types import ModalityInput
from biomm.vocab.text import build_text_tokenizer, load_text_tokenizer

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


STATIC_PREFIXES = ("GENDER/", "RACE/", "ETHNICITY/", "MEDS_BIRTH")
"""Codes of static facts (at birth or untimed): their own tokens, kept whatever the truncation."""
BIRTH = "MEDS_BIRTH"


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner edges (at most `bins - 1`, distinct, ascending) of the quantile bins of `values` [N]."""
    values = values[~np.isnan(values)]
    if bins < 2 or len(values) < 2:
        return []
    return [float(e) for e in np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))]


@dataclass
class EhrVocab:
    """Event codes -> ids (0 pad, 1 mask, 2 unknown, then codes by training frequency, most frequent first),
    with per-code mean/std of numeric values, training counts and quantile-bin edges (all from the training split)."""

    codes: list[str]
    value_mean: dict[str, float]
    value_std: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    bins: dict[str, list[float]] = field(default_factory=dict)

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

    def frequent(self, min_count: int) -> int:
        """How many codes were seen at least `min_count` times in training (they are ids 3 .. 3 + n)."""
        if not self.counts:
            return 0
        return sum(1 for c in self.codes if self.counts.get(c, 0) >= min_count)

    def value_bins(self, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Bin ids [N] int64 (1 .. bins; 0 = no value or no bins for the code) of codes [N] and raw values [N]."""
        out = np.zeros(len(codes), np.int64)
        has = ~np.isnan(values)
        if not self.bins or not has.any():
            return out
        idx = np.flatnonzero(has)
        for code in np.unique(codes[idx]):
            edges = self.bins.get(str(code))
            if edges is None:
                continue
            rows = idx[codes[idx] == code]
            out[rows] = np.searchsorted(np.asarray(edges), values[rows], side="right") + 1
        return out

    @classmethod
    def build(cls, cohort_root: str | Path, subjects: list[str] | None = None, min_count: int = 1,
              max_size: int | None = None, value_bins: int = 0) -> "EhrVocab":
        """From the events of `subjects` (the training split: nothing of val/test leaks into it); `value_bins`
        per-code quantile bins of numeric values."""
        rows = code_statistics(cohort_root, subjects, min_count)
        if max_size is not None:
            rows = rows[: max_size - len(SPECIAL)]
        bins: dict[str, list[float]] = {}
        numeric = {r[0] for r in rows if r[2] is not None}
        if value_bins > 1 and numeric:
            table = read_events(cohort_root, subjects, columns=("code", "numeric_value"))
            codes = table.column("code").to_numpy(zero_copy_only=False)
            values = table.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float64)
            keep = ~np.isnan(values)
            codes, values = codes[keep], values[keep]
            order = np.argsort(codes, kind="stable")
            codes, values = codes[order], values[order]
            starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, int)
            for a, b in zip(starts, np.r_[starts[1:], len(codes)]):
                if codes[a] in numeric and (edges := quantile_edges(values[a:b], value_bins)):
                    bins[str(codes[a])] = edges
        return cls(
            codes=[r[0] for r in rows],
            value_mean={r[0]: float(r[2]) for r in rows if r[2] is not None},
            value_std={r[0]: float(r[3]) if r[3] else 1.0 for r in rows if r[2] is not None},
            counts={r[0]: int(r[1]) for r in rows},
            bins=bins,
        )

    def save(self, path: str | Path) -> None:
        """Write the codes, counts, value statistics and bin edges as JSON."""
        Path(path).write_text(json.dumps({"codes": self.codes, "value_mean": self.value_mean, "value_std": self.value_std,
                                          "counts": self.counts, "bins": self.bins}))

    @classmethod
    def load(cls, path: str | Path) -> "EhrVocab":
        """The vocabulary written by `save` (older files without counts or bins load with none)."""
        d = json.loads(Path(path).read_text())
        return cls(d["codes"], d["value_mean"], d["value_std"], d.get("counts", {}), d.get("bins", {}))


class EhrEvents:
    """All events of a set of subjects, as arrays sorted by (subject, time), plus offsets per subject.

    Per event: `codes` (ids), `values` (standardised), `value_mask`, `value_bins` (per-code quantile bin,
    0 = none), `times` (days since the epoch), `static` (a static fact: sex, race, ethnicity, birth);
    per subject: its index range and its birth day (NaN unknown)."""

    def __init__(self, cohort_root: str | Path, vocab: EhrVocab, subjects: list[str] | None = None):
        self.vocab = vocab
        self.birth: dict[str, float] = {}
        table = read_events(cohort_root, subjects)
        if table is None:
            self.subjects: dict[str, tuple[int, int]] = {}
            self.codes_text = np.array([], dtype=object)
            self.codes = np.zeros(0, np.int64)
            self.values = np.zeros(0, np.float32)
            self.value_mask = np.zeros(0, bool)
            self.value_bins = np.zeros(0, np.int64)
            self.static = np.zeros(0, bool)
            self.times = np.zeros(0, np.float64)
            return
        sid = table.column("subject_id").to_numpy(zero_copy_only=False)
        times = table.column("time").to_numpy(zero_copy_only=False)
        codes = table.column("code").to_numpy(zero_copy_only=False)
        values = table.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float64)
        t = days_since_epoch(times)
        untimed = np.isnan(t)
        self._fill_missing_times(sid, t)
        self.codes_text = codes
        self.codes = vocab.ids(codes)
        mean = np.array([vocab.value_mean.get(c, 0.0) for c in codes])
        std = np.array([vocab.value_std.get(c, 1.0) or 1.0 for c in codes])
        self.value_mask = ~np.isnan(values)
        self.values = np.where(self.value_mask, (values - mean) / std, 0.0).astype(np.float32)
        self.value_bins = vocab.value_bins(codes, values)
        self.times = t
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, int)
        ends = np.r_[starts[1:], len(sid)]
        self.subjects = {str(sid[s]): (int(s), int(e)) for s, e in zip(starts, ends)}
        is_birth = codes == BIRTH
        birth_day = np.full(len(sid), np.nan)
        for (s, e) in zip(starts, ends):
            hit = np.flatnonzero(is_birth[s:e])
            if len(hit):
                birth_day[s:e] = t[s + hit[0]]
                self.birth[str(sid[s])] = float(t[s + hit[0]])
        prefix = np.array([str(c).startswith(STATIC_PREFIXES) for c in codes], dtype=bool)
        self.static = prefix & (untimed | np.isnan(birth_day) | (t <= birth_day))

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

    def context(self, subject_id: str, max_events: int, before: float | None = None) -> tuple[np.ndarray, int]:
        """Indices [n] (ascending) of the events the model sees of a subject at `before`: its static facts and
        its most recent other events, `max_events` in all; and how many events truncation dropped."""
        if subject_id not in self.subjects:
            return np.zeros(0, np.int64), 0
        s, e = self.span(subject_id, before)
        if e - s <= max_events:
            return np.arange(s, e), 0
        static = s + np.flatnonzero(self.static[s:e])[:max_events]
        room = max_events - len(static)
        rest = np.setdiff1d(np.arange(max(s, e - room - len(static)), e), static)[-room:] if room > 0 else \
            np.zeros(0, np.int64)
        idx = np.sort(np.concatenate([static, rest]))
        return idx, (e - s) - len(idx)

    def tensors(self, subject_ids: list[str], max_events: int,
                prediction_times: list[float | None] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Left-aligned padded tensors of each subject's static facts and most recent events before its
        prediction time, `max_events` in all, and the presence mask [B] (False: no events, so the modality is
        absent). Times are days relative to each row's prediction time (so `prediction_time` [B] is 0), `gap` [B, L]
        the days since the previous timed event (computed in float64); `dropped` [B] counts the events truncation
        left out (reported in the batch statistics)."""
        b = len(subject_ids)
        picks, dropped = [], np.zeros(b, np.int64)
        for i, sid in enumerate(subject_ids):
            pt = prediction_times[i] if prediction_times is not None else None
            idx, dropped[i] = self.context(sid, max_events, pt)
            picks.append(idx)
        length = max(1, max(len(p) for p in picks))
        codes = np.zeros((b, length), np.int64)
        values = np.zeros((b, length), np.float32)
        vmask = np.zeros((b, length), bool)
        vbins = np.zeros((b, length), np.int64)
        static = np.zeros((b, length), bool)
        times = np.zeros((b, length), np.float64)
        age = np.full((b, length), np.nan, np.float64)
        mask = np.zeros((b, length), bool)
        pts = np.zeros(b, np.float64)
        for i, idx in enumerate(picks):
            n = len(idx)
            codes[i, :n] = self.codes[idx]
            values[i, :n] = self.values[idx]
            vmask[i, :n] = self.value_mask[idx]
            vbins[i, :n] = self.value_bins[idx]
            static[i, :n] = self.static[idx]
            times[i, :n] = self.times[idx]
            age[i, :n] = self.times[idx] - self.birth.get(subject_ids[i], np.nan)
            mask[i, :n] = True
            pt = prediction_times[i] if prediction_times is not None else None
            pts[i] = pt if pt is not None else (times[i, n - 1] if n else 0.0)
        present = torch.from_numpy(mask.any(1))
        # times relative to each row's own prediction time (0): float32 stays precise to the second near it,
        # and a row's tensors do not depend on the other rows of its batch
        gap = np.zeros((b, length), np.float64)
        gap[:, 1:] = np.clip(times[:, 1:] - times[:, :-1], 0.0, None)
        gap[:, 1:] *= (mask[:, 1:] & ~static[:, 1:] & mask[:, :-1] & ~static[:, :-1])
        gap[:, 0] = 0.0
        origin = pts[:, None]
        out = {
            "codes": torch.from_numpy(codes),
            "values": torch.from_numpy(values),
            "value_mask": torch.from_numpy(vmask),
            "value_bins": torch.from_numpy(vbins),
            "static": torch.from_numpy(static),
            "age": torch.from_numpy(age.astype(np.float32)),
            "times": torch.from_numpy((times - origin).astype(np.float32)) * torch.from_numpy(mask),
            "gap": torch.from_numpy(gap.astype(np.float32)),
            "mask": torch.from_numpy(mask),
            "prediction_time": torch.zeros(b, dtype=torch.float32),
            "dropped": torch.from_numpy(dropped),
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


def code_display(code: str, displays: dict[str, str]) -> str:
    """A code's display name from `displays`, else the code itself with its system and separators as spaces
    ("SNOMED/44054006" -> "SNOMED 44054006"): how the model (DescEmb) and the lexical baseline read a code."""
    return displays.get(code) or code.replace("/", " ").replace("_", " ")


class EhrSource(ModalitySource):
    """EHR events for the model: each sample's most recent `max_events` events before its prediction time."""

    name = "ehr"

    def __init__(self, events: EhrEvents, max_events: int, target_min_count: int = 5,
                 displays: dict[str, str] | None = None, code_text: str = "none", code_text_length: int = 16,
                 ctx: SourceContext | None = None):
        self.events, self.max_events, self.target_min_count = events, max_events, target_min_count
        self.displays, self.code_text, self.code_text_length = displays or {}, code_text, code_text_length
        self.ctx = ctx
        self.tokenizer = None

    @classmethod
    def open(cls, ctx: SourceContext) -> "EhrSource":
        """Vocabulary from the training subjects' events (or the run's saved one), then every subject's events."""
        path = ctx.artifact("ehr_vocab.json")
        if ctx.load_artifacts and path is not None and path.exists():
            vocab = EhrVocab.load(path)
        else:
            bins = getattr(ctx.adapter, "value_bins", 10)
            vocab = EhrVocab.build(ctx.root, ctx.train_ids, ctx.cfg.ehr_min_count, value_bins=bins)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                vocab.save(path)
        events = EhrEvents(ctx.root, vocab, ctx.subjects)
        if ctx.load_artifacts:
            check_vocabulary_coverage(events, ctx.root)
        code_text = getattr(ctx.adapter, "code_text", "none")
        displays = {}
        if code_text != "none":
            with Cohort(ctx.root, create=False, read_only=True) as c:
                displays = c.code_displays()
        return cls(events, ctx.cfg.max_events, getattr(ctx.adapter, "target_min_count", 5), displays, code_text,
                   getattr(ctx.adapter, "code_text_length", 16), ctx)

    def display_names(self) -> list[str]:
        """The display name of every vocabulary id [vocab.size] ('' for the special tokens; the code itself,
        its system and separators as spaces, where the cohort recorded no display)."""
        vocab = self.events.vocab
        return [""] * len(SPECIAL) + [code_display(c, self.displays) for c in vocab.codes]

    def link(self, sources: dict[str, ModalitySource]) -> None:
        """`code_text`: tokenise display names with the text modality's tokenizer, or (no text modality) a
        word-piece tokenizer of the display names themselves, saved with the run."""
        if self.code_text == "none":
            return
        text = sources.get("text")
        if text is not None and getattr(text, "tokenizer", None) is not None:
            self.tokenizer = text.tokenizer
            return
        folder = self.ctx.artifact("ehr_code_tokenizer") if self.ctx else None
        if self.ctx is not None and self.ctx.load_artifacts and folder is not None and folder.exists():
            self.tokenizer = load_text_tokenizer(folder)
        else:
            self.tokenizer = build_text_tokenizer(self.display_names(), 2000)
            if folder is not None:
                self.tokenizer.save_pretrained(str(folder))

    def tables(self) -> dict[str, torch.Tensor]:
        """`code_text`: `code_words` [vocab.size, code_text_length] long, each code's display word pieces
        (no [CLS]/[SEP]; 0 = pad)."""
        if self.tokenizer is None:
            return {}
        names = self.display_names()
        enc = self.tokenizer(names, add_special_tokens=False, truncation=True, max_length=self.code_text_length,
                             padding="max_length", return_tensors="pt")
        return {"code_words": enc["input_ids"] * enc["attention_mask"]}

    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict]:
        """codes/values/value_mask/value_bins/static/age/times/mask `[B, L]`, prediction_time and dropped `[B]`;
        present `[B]`; extras: `ehr_truncated` (rows whose history was longer than the context) and
        `ehr_dropped` (events left out)."""
        tensors, present = self.events.tensors([s.subject_id for s in samples], self.max_events,
                                               [s.prediction_time for s in samples])
        dropped = tensors["dropped"]
        return ModalityInput(tensors, present), {"ehr_truncated": int((dropped > 0).sum()),
                                                 "ehr_dropped": int(dropped.sum())}

    def sizes(self) -> dict[str, int]:
        """The EHR adapter's vocabulary size, number of next-event target codes and (`code_text`) the display
        names' word-piece vocabulary."""
        out = {"vocab_size": max(self.events.vocab.size, 4),
               "target_codes": self.events.vocab.frequent(self.target_min_count)}
        if self.tokenizer is not None:
            out["text_vocab_size"] = len(self.tokenizer)
        return out

