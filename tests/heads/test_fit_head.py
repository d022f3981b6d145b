"""The one training loop of the heads (biomm.train.heads.fit_head): it trains, it is seeded, and it says
which step went wrong."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from biomm.train.heads import fit_head


def _regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen)
    batches = [torch.randint(0, 256, (32,), generator=gen) for _ in range(150)]
    return x, y, batches


def test_fit_head_trains_and_is_reproducible():
    x, y, batches = _regression()

    def loss(m, rows):
        return nn.functional.mse_loss(m(x[rows]), y[rows])

    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(8, 1)
        losses = fit_head(model, loss, batches, lr=0.05, seed=0, gradient_clip_val=1.0)
        runs.append((losses, model.weight.detach().clone()))
        assert len(losses) == len(batches) and losses[-1] < 0.01 * losses[0]
        assert not model.training
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_a_module_left_in_eval_mode_trains_in_train_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.eval()
    modes = []
    fit_head(model, lambda m, _: (modes.append(m.training), m(torch.ones(2, 4)).sum())[1], [0, 1], lr=1e-3)
    assert modes == [True, True]


def test_a_non_finite_loss_names_the_step():
    model = nn.Linear(2, 1)

    def loss(m, step):
        out = m(torch.ones(1, 2)).sum()
        return out * float("nan") if step == 3 else out

    with pytest.raises(FloatingPointError, match="toy loss is nan at step 3; lower its lr"):
        fit_head(model, loss, list(range(6)), lr=1e-3, name="toy", hint="lower its lr")
