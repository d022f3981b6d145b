"""The bridge across scales: a sequence model embeds gene products (gene symbol in the FASTA header), the
gene table it writes initialises a cell model's gene-identity embeddings (UCE style) by config, and a cell
model trained with the bridge is compared with one trained without it, on the real PBMC cohort.

No real protein sequences of the PBMC genes are at hand offline: the "gene products" here are real
modlAMP peptides assigned to real PBMC gene symbols in order. The test checks the mechanism (table,
option, training), not biology."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from biomm.ingest.demo.sequences import modlamp_fasta
from biomm.ingest.sequence import fasta

SEQ_OVERRIDES = ["trainer.max_steps=8", "trainer.val_every_n_steps=8", "trainer.checkpoint_every_n_steps=8",
                 "data.batch_size=32"]
CELL_OVERRIDES = ["trainer.max_steps=12", "trainer.val_every_n_steps=12", "trainer.checkpoint_every_n_steps=12"]


@pytest.fixture(scope="module")
def sequence_model(tmp_path_factory, project_root) -> tuple[Path, Path, Path]:
    from biomm.model.export import export
    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    root = tmp_path_factory.mktemp("bridge")
    files = modlamp_fasta(root / "fa", "AMPvsUniProt.csv", limit=60)
    fasta.ingest(files, root / "cohort", {"alphabet": "protein", "label_from": "filename"}, progress=False)
    fit(load_train_config(project_root / "configs" / "train" / "sequence_tiny.yaml", SEQ_OVERRIDES),
        root / "cohort", root / "run", progress=False)
    return export(root / "run", root / "model"), root / "cohort", files[0]


@pytest.fixture(scope="module")
def gene_products(sequence_model, cell_cohort, tmp_path_factory) -> tuple[Path, list[str]]:
    """A FASTA of 40 'gene products' named by PBMC gene symbols in their headers (see the module doc)."""
    import anndata as ad

    from biomm.store.cohort import Cohort
    from biomm.vocab.genes import GeneVocab

    with Cohort(cell_cohort, create=False, read_only=True) as c:
        h5ad = cell_cohort / c.records("omics")[0]["path"]
    vocab = GeneVocab.default()
    var = ad.read_h5ad(h5ad, backed="r").var
    hvg = var.index[var["highly_variable"].astype(bool)] if "highly_variable" in var else var.index
    genes = [g for g in hvg if vocab.token_id(g) > vocab.unk_id][:40]  # genes the cell model reads
    peptides = [line for line in Path(sequence_model[2]).read_text().splitlines() if not line.startswith(">")]
    path = tmp_path_factory.mktemp("products") / "products.fa"
    path.write_text("".join(f">prod{i} gene={g} source=modlamp\n{peptides[i]}\n" for i, g in enumerate(genes))
                    + ">orphan no_symbol\nGLWSKIKEV\n")
    return path, genes


def test_gene_table_from_the_sequence_encoder(sequence_model, gene_products, tmp_path):
    from biomm.cli import app
    from biomm.heads.sequences import SequenceHeads, gene_table_from_fasta
    from biomm.model.bundle import load

    model, cohort, _ = sequence_model
    path, genes = gene_products
    loaded = load(model)
    symbols, vectors, problems = gene_table_from_fasta(loaded, path, cohort)
    assert symbols == sorted(genes) and vectors.shape == (40, loaded.config.model.d)
    assert problems and "orphan" in problems[0] and "no gene symbol" in problems[0]
    heads = SequenceHeads(loaded, cohort)
    first = Path(path).read_text().splitlines()[1]
    assert np.allclose(vectors[symbols.index(genes[0])], heads.embed_sequences([first])[0], atol=1e-5)
    out = tmp_path / "genes.parquet"
    r = CliRunner().invoke(app, ["gene-table", str(model), str(path), "--cohort", str(cohort), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    assert list(df.columns[:2]) == ["gene", "e0"] and len(df) == 40


def test_cell_model_trained_with_and_without_the_bridge(sequence_model, gene_products, cell_cohort, project_root,
                                                        tmp_path):
    import torch

    from biomm.heads.sequences import gene_table_from_fasta, write_gene_table
    from biomm.model.bundle import load
    from biomm.model.export import export
    from biomm.train.config import load_train_config
    from biomm.train.run import fit
    from biomm.vocab.genes import GeneVocab

    model, cohort, _ = sequence_model
    path, _ = gene_products
    symbols, vectors, _ = gene_table_from_fasta(load(model), path, cohort)
    table = write_gene_table(tmp_path / "genes.tsv", symbols, vectors)
    results = {}
    for name, extra in (("without", []), ("with", [f"model.adapters.omics.gene_embeddings={table}"])):
        cfg = load_train_config(project_root / "configs" / "train" / "cell_tiny.yaml", CELL_OVERRIDES + extra)
        metrics = fit(cfg, cell_cohort, tmp_path / name, progress=False)
        results[name] = (metrics, load(export(tmp_path / name, tmp_path / f"{name}_model")))
    for metrics, _ in results.values():
        assert math.isfinite(metrics["val/loss"])
    bridged, plain = (_gene_identities(results[k][1].model.adapters["omics"]) for k in ("with", "without"))
    assert bridged[0].prior_proj is not None and plain[0].prior_proj is None
    vocab = GeneVocab.default()
    placed = [(bridged[1].index(vocab.token_id(g)), i) for i, g in enumerate(symbols) if vocab.token_id(g) in bridged[1]]
    assert len(placed) >= 30  # the table's genes that the cell model reads start from their product's embedding
    for row, i in placed:
        assert torch.allclose(bridged[0].prior[row], torch.from_numpy(vectors[i]), atol=1e-6)
    assert int(bridged[0].prior.abs().sum(1).gt(0).sum()) == len(placed)  # genes without a product: no prior


def _gene_identities(adapter):
    """(the module holding the prior table and its projection, the vocabulary id of each of its rows)."""
    import torch

    enc = adapter.encoder
    if isinstance(getattr(enc, "gene", None), torch.nn.Module):  # transformer: rows are vocabulary ids
        return enc.gene, list(range(enc.gene.table.num_embeddings))
    return enc, list(adapter.cfg.gene_ids)  # mlp: rows are the HVGs, in order
