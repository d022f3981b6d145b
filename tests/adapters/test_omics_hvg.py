"""The omics adapter over every HVG: the MLP's masked targets, stable quantile bins, targets in the
units the encoder reads, and gene identities from a table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from biomm.adapters.omics import OmicsAdapter, OmicsConfig, load_table, quantile_bins
from biomm.vocab.genes import GeneVocab


def test_quantile_bins_give_ties_one_bin_whatever_the_order():
    values = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0, 5.0], [1.0, 1.0, 1.0, 3.0, 5.0, 0.0]])
    mask = torch.ones_like(values, dtype=torch.bool)
    b = quantile_bins(values, mask, 11)
    for row, v in zip(b, values):
        ones = row[v == 1.0]
        assert (ones == ones[0]).all() and row[v == 0].eq(0).all()
        assert row[v == 5.0] > row[v == 3.0] > ones[0] >= 1
    assert torch.equal(b[0].sort().values, b[1].sort().values)


def test_binned_adapter_targets_follow_its_own_bins():
    cfg = OmicsConfig(n_genes=50, value_encoding="binned", n_bins=11)
    ad = OmicsAdapter(cfg, 32, "tiny")
    t = {"genes": torch.tensor([[1, 2, 3, 4]]), "values": torch.tensor([[10.0, 200.0, 3.0, 0.5]]),
         "mask": torch.ones(1, 4, dtype=torch.bool), "mlm_mask": torch.tensor([[True, True, False, False]])}
    target = ad.mlm_targets(t)["target"][..., 0]
    assert target.max() < 1 and target.min() > 0  # bins / n_bins, not raw expression / n_bins
    already = OmicsAdapter(cfg.model_copy(update={"input_values": "bins"}), 32, "tiny")
    t2 = {**t, "values": torch.tensor([[3.0, 7.0, 1.0, 9.0]])}
    assert torch.equal(already.encoder.bins(t2["values"], t2["mask"]), torch.tensor([[3, 7, 1, 9]]))


def test_mlp_masks_values_and_scores_hidden_ones_only():
    from biomm.objectives.masked import MaskedModeling
    from biomm.types import Outputs, Tokens

    cfg = OmicsConfig(encoder="mlp", n_genes=20)
    ad = OmicsAdapter(cfg, 16, "tiny")
    x = torch.rand(4, 20)
    hide = torch.zeros(4, 20, dtype=torch.bool)
    hide[:, :5] = True
    a = ad.encode({"x": x, "mlm_mask": hide})[0]
    b = ad.encode({"x": torch.cat([x[:, :5] * 0 + 9.0, x[:, 5:]], 1), "mlm_mask": hide})[0]
    ad.eval()
    torch.testing.assert_close(ad.encode({"x": x, "mlm_mask": hide})[0],
                               ad.encode({"x": torch.cat([torch.full((4, 5), 9.0), x[:, 5:]], 1), "mlm_mask": hide})[0])
    assert a.shape == b.shape == (4, 1, 32)  # hidden values never reach the encoder
    tgt = ad.mlm_targets({"x": x, "mlm_mask": hide})
    assert tgt["target"].shape == (4, 1, 20) and torch.equal(tgt["weight"][:, 0].bool(), hide)
    mm = MaskedModeling(torch.nn.ModuleDict({"omics": ad}), 16, modalities=["omics"])
    tok = ad({"x": x, "mlm_mask": hide})
    out = Outputs({"omics": Tokens(tok.x, tok.mask)}, {}, {}, None, None, None, {"mlm": {"omics": tgt}})
    loss, _ = mm(out)
    pred = mm.heads["omics"](tok.x[:, 0]).float()
    expect = ((pred - x) ** 2 * hide).sum() / hide.sum()
    torch.testing.assert_close(loss, expect)


def test_gene_identities_from_a_table(tmp_path):
    vocab = GeneVocab.default()
    genes = ["CD3E", "LYZ", "MS4A1", "NKG7"]
    ids = [int(vocab.token_id(g)) for g in genes]
    pd.DataFrame({"gene": genes, "v0": [1.0, 2, 3, 4], "v1": [0.0, 1, 0, 1]}).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    table = load_table(tmp_path / "t.tsv", max(ids) + 1)
    assert table.shape == (max(ids) + 1, 2) and table[ids[1]].tolist() == [2.0, 1.0] and table[0].abs().sum() == 0
    mlp = OmicsAdapter(OmicsConfig(encoder="mlp", n_genes=4, gene_ids=ids, gene_embeddings=str(tmp_path / "t.tsv")), 16, "tiny")
    torch.testing.assert_close(mlp.encoder.prior, table[ids])
    np.save(tmp_path / "t.npy", table.numpy())
    tr = OmicsAdapter(OmicsConfig(n_genes=max(ids) + 1, gene_embeddings=str(tmp_path / "t.npy")), 16, "tiny")
    assert tr.encoder.gene.prior.shape == table.shape
