"""The clinical evaluation protocol: subject-level folds, intervals, few-shot draws, count features."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomm.data.ehr import EhrEvents, EhrVocab
from biomm.data.samples import Sample
from biomm.eval.clinical import cross_validate, subject_folds, summarise, _lr, _gbm
from biomm.eval.metrics import auroc as _auc, bootstrap_interval
from biomm.heads.clinical import CountGBM, count_features


def _data(n_subjects=40, per=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"s{i}" for i in range(n_subjects)], per)
    signal = np.repeat(rng.normal(size=n_subjects), per)
    y = (signal + rng.normal(scale=0.5, size=len(groups)) > 0.3).astype(float)
    x = np.c_[signal + rng.normal(scale=0.3, size=len(groups)), rng.normal(size=(len(groups), 3))]
    return x, y, groups


def test_folds_are_by_subject_and_test_every_subject_once():
    x, y, groups = _data()
    seen = []
    for tr, te in subject_folds(y, groups, 5, seed=0):
        assert not set(groups[tr]) & set(groups[te])
        seen.extend(te)
    assert sorted(seen) == list(range(len(y)))


def test_cross_validate_rows_intervals_and_few_shot():
    x, y, groups = _data()
    rows = {"signal": _lr(x), "noise": _lr(x[:, 1:]), "gbm": _gbm(x)}
    cv = cross_validate(rows, y, groups, folds=5, seeds=(0, 1), ks=(1, 4, 16, 500), draws=2, bootstrap=50)
    s, n = cv["signal"]["full"], cv["noise"]["full"]
    assert s["auroc"] > 0.8 and n["auroc"] < 0.7 and len(s["per_repeat"]) == 2
    assert s["auroc_low"] <= s["auroc"] <= s["auroc_high"] and s["auprc_low"] <= s["auprc"] <= s["auprc_high"]
    few = cv["signal"]["few_shot"]
    assert set(few) == {"1", "4", "16"}  # 500 positives are not there to draw
    assert few["16"]["auroc"] > few["1"]["auroc"] - 0.05 and few["4"]["n"] == 5 * 2
    summary = summarise({"t": {"rows": {**{k: cv[k] for k in rows}, "bag_of_codes_lr": cv["noise"],
                                         "count_gbm": cv["gbm"], "biomm_fused": cv["signal"], "hybrid": cv["signal"]}}})
    t = summary["targets"]
    assert set(t["fused_minus_lr_at_k<=32"]) == {"1", "4", "16"} and t["fused_minus_lr_at_k<=32"]["16"] > 0.1
    assert t["best_baseline"] in ("bag_of_codes_lr", "count_gbm") and t["hybrid_ge_best_baseline"]


def test_few_shot_probes_scale_features_on_the_unlabelled_training_fold():
    # one informative dimension among 30 noisy ones of larger spread: standardised on the 2 labelled samples
    # alone every dimension weighs the same, standardised on the fold's (unlabelled) samples the signal stands out
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.5).astype(float)
    x = np.c_[2.0 * y + rng.normal(scale=0.5, size=n), rng.normal(scale=3.0, size=(n, 30))]
    row = _lr(x)
    tr, te = np.arange(300), np.arange(300, n)
    aucs = {"pool": [], "own": []}
    for d in range(20):
        sub = np.concatenate([rng.choice(tr[y[tr] == 1], 1), rng.choice(tr[y[tr] == 0], 1)])
        aucs["pool"].append(_auc(y[te], row(sub, y[sub], te, 0, tr)))
        aucs["own"].append(_auc(y[te], row(sub, y[sub], te, 0, sub)))
    assert np.mean(aucs["pool"]) > np.mean(aucs["own"]) + 0.05


def test_bootstrap_interval_is_by_subject():
    x, y, groups = _data()
    p = x[:, 0]
    lo, hi = bootstrap_interval(y, [p], groups, _auc, n=100)
    assert lo < _auc(y, p) < hi and hi - lo < 0.3


def test_too_few_positives_is_a_clear_error():
    x, y, groups = _data()
    y = np.zeros_like(y)
    y[0] = 1
    with pytest.raises(ValueError, match="too few"):
        cross_validate({"a": _lr(x)}, y, groups)


def test_count_features_see_only_events_before_the_prediction_time(clinical_cohort):
    events = EhrEvents(clinical_cohort, EhrVocab.build(clinical_cohort))
    sid = max(events.subjects, key=lambda s: events.subjects[s][1] - events.subjects[s][0])
    s, e = events.subjects[sid]
    pt = float(events.times[(s + e) // 2])
    x, names = count_features(events, [Sample(sid, pt), Sample(sid, float(events.times[e - 1]))])
    col = {n: i for i, n in enumerate(names)}
    a, b = events.span(sid, pt)
    code = str(events.codes_text[b - 1])
    assert x[0, col[f"count/all/{code}"]] == (events.codes_text[a:b] == code).sum()
    assert x[1, col[f"count/all/{code}"]] >= x[0, col[f"count/all/{code}"]]
    assert x[0, col[f"count/30d/{code}"]] <= x[0, col[f"count/365d/{code}"]] <= x[0, col[f"count/all/{code}"]]
    numeric = [i for i in range(a, b) if events.value_mask[i]]
    last = numeric[-1]
    assert x[0, col[f"last/all/{events.codes_text[last]}"]] == pytest.approx(events.values[last])
    model = CountGBM().fit(np.r_[x, x], np.array([0, 1, 0, 1]))
    assert model.predict(x).shape == (2,)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=60))
def test_fast_auroc_and_ap_equal_sklearn_with_ties(pairs):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from biomm.eval.metrics import average_precision as _ap

    y = np.array([int(a) for a, _ in pairs])
    p = np.array([b / 6 for _, b in pairs])  # few distinct scores: many ties
    if 0 < y.sum() < len(y):
        assert _auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert _ap(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    else:
        assert _auc(y, p) is None and _ap(y, p) is None
