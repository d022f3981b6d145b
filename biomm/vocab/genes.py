"""The gene vocabulary: special tokens plus every gene of the vendored human gene table.

Token ids are stable: specials first, then genes in Entrez id order of
`biomm/resources/genes/human_genes.tsv.gz` (NCBI Gene / GO via Bioconductor org.Hs.eg.db, CC BY 4.0).
Gene names in a matrix may be symbols, Ensembl ids (with or without version) or Entrez ids;
old symbols map through the table's aliases when the alias is unambiguous.
"""
from __future__ import annotations

import csv
import gzip
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from biomm.resources import resource

SPECIAL_TOKENS = ("<pad>", "<cls>", "<mask>", "<unk>", "<eos>")
PAD, CLS, MASK, UNK, EOS = range(len(SPECIAL_TOKENS))
_ENSEMBL = re.compile(r"^(ENSG\d{11})(\.\d+)?$", re.IGNORECASE)


def gene_table_path() -> Path:
    """Path of the vendored human gene table (human_genes.tsv.gz)."""
    return resource("genes", "human_genes.tsv.gz")


class GeneVocab:
    """Map gene names to token ids (0 = `<pad>`, unmapped = `<unk>`) and back."""

    pad_id, cls_id, mask_id, unk_id, eos_id = PAD, CLS, MASK, UNK, EOS

    def __init__(self, rows: Sequence[dict[str, str]]):
        self.rows = list(rows)
        self.tokens: list[str] = list(SPECIAL_TOKENS) + [r["symbol"] for r in self.rows]
        self._by_symbol: dict[str, int] = {}
        self._by_key: dict[str, int] = {}
        alias_hits: dict[str, set[int]] = {}
        for i, r in enumerate(self.rows, start=len(SPECIAL_TOKENS)):
            self._by_symbol.setdefault(r["symbol"].upper(), i)
            self._by_key[r["entrez"]] = i
            for e in filter(None, r.get("ensembl", "").split("|")):
                self._by_key.setdefault(e.upper(), i)
            for a in filter(None, r.get("aliases", "").split("|")):
                alias_hits.setdefault(a.upper(), set()).add(i)
        # an alias names a gene only when it is nobody's symbol and points at one gene
        self._by_alias = {a: next(iter(ids)) for a, ids in alias_hits.items()
                          if len(ids) == 1 and a not in self._by_symbol}

    @classmethod
    def default(cls) -> "GeneVocab":
        """The vocabulary of the vendored gene table (cached)."""
        return _default_vocab()

    @classmethod
    def from_table(cls, path: str | Path) -> "GeneVocab":
        """The vocabulary of a gzipped TSV gene table (columns symbol, entrez, optional ensembl / aliases, ...)."""
        with gzip.open(path, "rt", newline="") as fh:
            return cls(list(csv.DictReader(fh, delimiter="\t")))

    def __len__(self) -> int:
        return len(self.tokens)

    def token_id(self, name: str) -> int:
        """Token id of a gene symbol, Ensembl id (version ignored), Entrez id or alias; `<unk>` if none."""
        return self._match(name)[0]

    def _match(self, name: str) -> tuple[int, str]:
        key = str(name).strip().upper()
        if key in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(key), "special"
        m = _ENSEMBL.match(key)
        if m:
            i = self._by_key.get(m.group(1).upper())
            return (i, "ensembl") if i is not None else (UNK, "unmapped")
        if key in self._by_symbol:
            return self._by_symbol[key], "symbol"
        if key.isdigit() and key in self._by_key:
            return self._by_key[key], "entrez"
        if key in self._by_alias:
            return self._by_alias[key], "alias"
        return UNK, "unmapped"

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        """Token ids (int64) for a sequence of gene names; unmapped names give `<unk>`."""
        return np.fromiter((self._match(n)[0] for n in names), dtype=np.int64)

    def coverage(self, names: Iterable[str]) -> dict:
        """How many names map to the vocabulary, and by which key (symbol / ensembl / entrez / alias)."""
        names = list(names)
        by: dict[str, int] = {}
        ids = []
        for n in names:
            i, how = self._match(n)
            by[how] = by.get(how, 0) + 1
            ids.append(i)
        mapped = len(names) - by.get("unmapped", 0)
        dup = mapped - len({i for i in ids if i != UNK})
        return {"n_genes": len(names), "n_mapped": mapped, "fraction": mapped / max(len(names), 1),
                "by": by, "n_mapped_to_same_token": dup,
                "unmapped_examples": [n for n, i in zip(names, ids) if i == UNK][:10]}

    def symbol(self, token_id: int) -> str:
        """The token (gene symbol or special token) of `token_id`."""
        return self.tokens[token_id]

    def info(self, name: str) -> dict[str, str] | None:
        """The gene table row (symbol, Ensembl, Entrez, type, name, GO terms) of a gene, or None."""
        i = self.token_id(name)
        return None if i < len(SPECIAL_TOKENS) else dict(self.rows[i - len(SPECIAL_TOKENS)])

    def save(self, path: str | Path) -> None:
        """Write the token list (for a checkpoint); `GeneVocab.load` checks it against the table."""
        Path(path).write_text(json.dumps({"tokens": self.tokens}))

    @classmethod
    def load(cls, path: str | Path) -> "GeneVocab":
        """The default vocabulary, after checking that the token list saved at `path` equals it (else ValueError)."""
        tokens = json.loads(Path(path).read_text())["tokens"]
        vocab = cls.default()
        if tokens != vocab.tokens:
            raise ValueError(f"gene vocabulary {path} ({len(tokens)} tokens) differs from this biomm's "
                             f"gene table ({len(vocab)} tokens): the checkpoint was built with another table")
        return vocab


# The one process-wide memo biomm keeps, on purpose: the parsed shipped gene table is immutable and
# read-only (nothing can make it stale), costs 0.3 s to parse, and is looked up per gene on hot paths.
@lru_cache(maxsize=1)
def _default_vocab() -> GeneVocab:
    """The vendored gene table, parsed once per process."""
    return GeneVocab.from_table(gene_table_path())
