"""The whole-history EHR encoder and its data: context, static tokens, value bins, truncation, no leak."""
from __future__ import annotations

import numpy as np
import torch

from biomm.adapters import build_adapter
from biomm.adapters.ehr import EhrConfig, time_gaps
from biomm.data.ehr import EhrEvents, EhrVocab, quantile_edges

D = 16


def test_vocab_bins_are_fitted_on_the_training_subjects_only(clinical_cohort):
    events = EhrEvents(clinical_cohort, EhrVocab.build(clinical_cohort))
    subjects = sorted(events.subjects)
    train = subjects[: len(subjects) // 2]
    vocab = EhrVocab.build(clinical_cohort, train, value_bins=10)
    assert vocab.bins and vocab.counts and vocab.frequent(5) <= len(vocab.codes)
    # the edges are the training values' quantiles, not the whole cohort's
    code = next(iter(vocab.bins))
    train_events = EhrEvents(clinical_cohort, vocab, train)
    raw = train_events.values[train_events.codes_text == code] * vocab.value_std[code] + vocab.value_mean[code]
    np.testing.assert_allclose(vocab.bins[code], quantile_edges(raw.astype(np.float64), 10), rtol=1e-4)
    full = EhrEvents(clinical_cohort, vocab)
    binned = full.value_bins[full.value_mask & np.isin(full.codes_text, list(vocab.bins))]
    assert binned.min() >= 1 and binned.max() <= 10


def test_static_facts_are_tokens_kept_by_truncation_and_truncation_is_reported(clinical_cohort):
    vocab = EhrVocab.build(clinical_cohort, value_bins=10)
    events = EhrEvents(clinical_cohort, vocab)
    sid = max(events.subjects, key=lambda s: events.subjects[s][1] - events.subjects[s][0])
    s, e = events.subjects[sid]
    n_static = int(events.static[s:e].sum())
    assert n_static >= 2 and {c.split("/")[0] for c in events.codes_text[s:e][events.static[s:e]]} >= {"GENDER", "MEDS_BIRTH"}
    t, present = events.tensors([sid], 20)
    assert present.all() and int(t["mask"].sum()) == 20 and int(t["dropped"][0]) == (e - s) - 20
    assert int(t["static"][0].sum()) == n_static
    kept = t["codes"][0][~t["static"][0]].numpy()
    np.testing.assert_array_equal(kept, events.codes[e - (20 - n_static):e])  # the most recent others
    full, _ = events.tensors([sid], 8192)
    assert int(full["dropped"][0]) == 0 and int(full["mask"].sum()) == e - s
    age = full["age"][0][full["mask"][0]].numpy()
    assert np.nanmin(age) >= 0 and np.all(np.diff(age) >= -1e-3)  # days since birth, ascending


def test_events_after_the_prediction_time_never_reach_the_model(clinical_cohort):
    """Plant events after the prediction time: the embedding does not change."""
    vocab = EhrVocab.build(clinical_cohort, value_bins=10)
    events = EhrEvents(clinical_cohort, vocab)
    sid = sorted(events.subjects)[0]
    s, e = events.subjects[sid]
    pt = float(events.times[(s + e) // 2])
    torch.manual_seed(0)
    for causal in (False, True):
        a = build_adapter("ehr", EhrConfig(vocab_size=vocab.size, causal=causal), D, "tiny").eval()
        t, _ = events.tensors([sid], 8192, [pt])
        before = a(t)
        planted = {k: v.clone() for k, v in t.items()}
        n = int(planted["mask"].sum())
        # the data never hands over what comes later ...
        assert float((planted["times"][0, :n] - planted["prediction_time"][0]).max()) <= 0
        # ... and the adapter ignores later events even when a caller passes them
        extra = 5
        for k in ("codes", "values", "value_mask", "value_bins", "static", "age", "times", "gap", "mask"):
            v = planted[k]
            planted[k] = torch.cat([v, v[:, -1:].expand(1, extra).clone()], 1)
        planted["codes"][0, n:] = 7
        planted["value_bins"][0, n:] = 3
        planted["times"][0, n:] = planted["prediction_time"][0] + torch.arange(1, extra + 1).float()
        planted["mask"][0, n:] = True
        after = a(planted)
        torch.testing.assert_close(after.x[0, :n], before.x[0, :n])
        assert not after.mask[0, n:].any()


def test_causal_encoder_is_causal_and_the_long_context_runs():
    torch.manual_seed(0)
    a = build_adapter("ehr", EhrConfig(vocab_size=64, causal=True), D, "tiny").eval()
    t = a.example_tensors(2, 300, torch.Generator().manual_seed(0))
    t["mask"][:] = True
    out = a(t)
    t2 = {k: v.clone() for k, v in t.items()}
    t2["codes"][:, 200:] = 5
    out2 = a(t2)
    torch.testing.assert_close(out2.x[:, :200], out.x[:, :200])
    assert not torch.allclose(out2.x[:, 200:], out.x[:, 200:])
    long = a.example_tensors(1, 8192, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert a(long).x.shape == (1, 8192, D)


def test_time_since_previous_event():
    times = torch.tensor([[0.0, 0.0, 3.0, 10.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    static = torch.tensor([[True, False, False, False, False]])
    assert time_gaps(times, mask, static).tolist() == [[0.0, 0.0, 3.0, 7.0, 0.0]]


def test_code_pooling_weighs_each_distinct_code_once(clinical_cohort):
    """`pooling_weight: code`: a record's events of one code share 1/count, so the pooled embedding is the mean
    over distinct codes of their events' mean; `event` (the default) is the plain mean over events."""
    vocab = EhrVocab.build(clinical_cohort, value_bins=10)
    events = EhrEvents(clinical_cohort, vocab)
    sid = max(events.subjects, key=lambda s: events.subjects[s][1] - events.subjects[s][0])
    t, _ = events.tensors([sid], 512)
    torch.manual_seed(0)
    a = build_adapter("ehr", EhrConfig(vocab_size=vocab.size, pooling_weight="code"), D, "tiny").eval()
    with torch.no_grad():
        out = a(t)
    codes = t["codes"][0][t["mask"][0]]
    x = out.x[0][out.mask[0]]
    assert len(codes.unique()) < len(codes)  # vitals repeat: the weights matter on this record
    per_code = torch.stack([x[codes == c].mean(0) for c in codes.unique()])
    torch.testing.assert_close(out.pooled()[0], per_code.mean(0), rtol=1e-5, atol=1e-6)
    w = out.weight[0][out.mask[0]]
    for c in codes.unique()[:5]:
        torch.testing.assert_close(w[codes == c].sum(), torch.tensor(1.0))
    plain = build_adapter("ehr", EhrConfig(vocab_size=vocab.size), D, "tiny")
    assert plain.token_weights(t) is None
