"""Next-event pretraining: targets are the next day's frequent codes, the loss trains, leaks are refused."""
from __future__ import annotations

import pytest
import torch

from biomm.adapters import build_adapter
from biomm.adapters.ehr import FIRST_CODE, EhrConfig
from biomm.model.config import ModelConfig
from biomm.model.factory import build_model
from biomm.objectives import build_objectives
from biomm.types import Batch, ModalityInput


def _timeline():
    # day 0: codes 3, 4; day 1: code 5; day 3: codes 3, 6 (6 is not a target: target_codes = 3 -> ids 3..5)
    codes = torch.tensor([[3, 4, 5, 3, 6, 0]])
    times = torch.tensor([[0.1, 0.5, 1.2, 3.0, 3.5, 0.0]])
    mask = torch.tensor([[True] * 5 + [False]])
    return {"codes": codes, "values": torch.zeros(1, 6), "value_mask": torch.zeros(1, 6, dtype=torch.bool),
            "times": times, "mask": mask}


def test_targets_are_the_next_days_codes():
    a = build_adapter("ehr", EhrConfig(vocab_size=8, causal=True, target_codes=3), 16, "tiny")
    t = a.next_event_targets(_timeline(), max_positions=10)
    assert t["pos"].tolist() == [1, 2]  # last event of day 0 and of day 1 (day 3 has no next day)
    assert t["target"].tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]  # day 1: code 5; day 3: code 3 (6 ignored)
    assert a.next_event_targets(_timeline(), max_positions=1)["pos"].tolist() == [2]  # the most recent kept
    assert FIRST_CODE == 3


def _model(causal=True):
    cfg = ModelConfig.model_validate({
        "preset": "tiny", "adapters": {"ehr": {"vocab_size": 32, "causal": causal, "target_codes": 20}},
        "objectives": {"contrastive": {"weight": 0.0}, "next_event": {"weight": 1.0}}})
    return cfg, build_model(cfg)


def test_next_event_loss_decreases():
    torch.manual_seed(0)
    cfg, model = _model()
    obj = build_objectives(cfg, model)
    g = torch.Generator().manual_seed(0)
    t = model.adapters["ehr"].example_tensors(4, 40, g)
    t["times"] = torch.arange(40.0).div(2).floor().expand(4, 40).contiguous()  # two events a day
    batch = Batch({"ehr": ModalityInput(t, torch.ones(4, dtype=torch.bool))}, ["a", "b", "c", "d"])
    opt = torch.optim.Adam([*model.parameters(), *obj.parameters()], lr=3e-3)
    losses = []
    for _ in range(30):
        loss, metrics = obj(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert metrics["next_event/positions"] > 0 and losses[-1] < losses[0] * 0.7


def test_a_bidirectional_encoder_is_refused():
    cfg, model = _model(causal=False)
    with pytest.raises(ValueError, match="causal"):
        build_objectives(cfg, model)
