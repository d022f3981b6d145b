"""Tokenisers for the model: genes of a cell (top-k expressed, scGPT / Geneformer style), proteins
(ESM-2 vocabulary through `transformers.EsmTokenizer`, offline) and DNA (Nucleotide Transformer
style non-overlapping k-mers with single-nucleotide fallback, or single nucleotides).

A user's own pretrained `transformers` tokenizer in a local directory replaces the built-in
protein/DNA tokenisers (`sequence_tokenizer(..., pretrained_dir=DIR)`).
Bad input raises `TokenizerError` (a ValueError) that says which character, where, and why.
"""
from __future__ import annotations

import abc
import itertools
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from biomm.config import StrictModel
from biomm.vocab.genes import PAD, UNK, GeneVocab
from biomm.resources import resource

ESM_VOCAB = resource("tokenizers", "esm", "vocab.txt")
PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWYXBUZO"  # 20 standard + ESM-2's X B U Z O
DNA_IUPAC = "ACGTRYSWKMBDHVN"  # IUPAC nucleotide codes incl. ambiguity codes
DNA_BASES = "ACGT"


class TokenizerError(ValueError):
    """A sequence this tokeniser cannot encode, with the reason."""


# ---------------------------------------------------------------- genes of a cell
class GeneTokenizerConfig(StrictModel):
    """Config of the per-cell gene tokenizer: genes kept, value encoding, bins, leading <cls>."""

    top_k: int = Field(512, ge=1, description="Genes per cell: the k most expressed (ties by gene order)")
    value_mode: Literal["binned", "continuous", "rank"] = Field(
        "binned", description="binned: scGPT per-cell quantile bins; continuous: the expression value; "
                              "rank: Geneformer rank-value encoding (values = 1 - rank/top_k)")
    n_bins: int = Field(51, ge=2, description="Bins for value_mode=binned (bin 0 is reserved for zero)")
    prepend_cls: bool = Field(True, description="Put a <cls> token (value 0) first")


class GeneTokenizer:
    """Sparse expression rows -> `genes` [B,T] long (0 = pad), `values` [B,T] float, `mask` [B,T] bool.

    `var_token_ids` gives the vocabulary id of each column; columns outside the vocabulary are
    never tokens. Vectorised over the batch: one lexsort of the nonzeros by (row, -value)."""

    def __init__(self, var_token_ids: np.ndarray, config: GeneTokenizerConfig | None = None,
                 gene_scale: np.ndarray | None = None):
        self.cfg = config or GeneTokenizerConfig()
        self.var_token_ids = np.asarray(var_token_ids, dtype=np.int64)
        # Geneformer divides by each gene's nonzero median over the corpus before ranking
        self.gene_scale = None if gene_scale is None else np.asarray(gene_scale, dtype=np.float32)

    @classmethod
    def for_genes(cls, gene_names: Sequence[str], config: GeneTokenizerConfig | None = None,
                  vocab: GeneVocab | None = None) -> "GeneTokenizer":
        """A tokenizer for matrix columns named `gene_names`, mapped through `vocab` (default: the shipped one)."""
        return cls((vocab or GeneVocab.default()).lookup(gene_names), config)

    @property
    def length(self) -> int:
        """Tokens per cell T: `top_k`, plus one for `<cls>`."""
        return self.cfg.top_k + int(self.cfg.prepend_cls)

    def __call__(self, x) -> dict[str, torch.Tensor]:
        x = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else x.tocsr()
        x.eliminate_zeros()
        n, k = x.shape[0], self.cfg.top_k
        rows = np.repeat(np.arange(n), np.diff(x.indptr))
        cols, vals = x.indices, x.data
        keep = self.var_token_ids[cols] > UNK
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        score = vals / self.gene_scale[cols] if self.gene_scale is not None else vals
        order = np.lexsort((cols, -score, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = np.bincount(rows, minlength=n)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(rows.size) - starts[rows]  # rank within the cell, 0 = highest
        if self.cfg.value_mode == "binned":
            # quantile of each value among the cell's nonzeros, over all of them (not only the top k)
            q = 1.0 - pos / np.maximum(counts[rows], 1)
            out_vals = 1.0 + np.floor(q * (self.cfg.n_bins - 1) - 1e-9).clip(0, self.cfg.n_bins - 2)
        elif self.cfg.value_mode == "rank":
            out_vals = 1.0 - pos / k
        else:
            out_vals = vals
        sel = pos < k
        off = int(self.cfg.prepend_cls)
        genes = torch.zeros((n, k + off), dtype=torch.long)
        values = torch.zeros((n, k + off), dtype=torch.float32)
        r, p = torch.from_numpy(rows[sel]), torch.from_numpy(pos[sel] + off)
        genes[r, p] = torch.from_numpy(self.var_token_ids[cols[sel]])
        values[r, p] = torch.from_numpy(np.asarray(out_vals[sel], dtype=np.float32))
        if off:
            genes[:, 0] = GeneVocab.cls_id
        return {"genes": genes, "values": values, "mask": genes != PAD}


# ---------------------------------------------------------------- sequences
class SequenceTokenizer(abc.ABC):
    """Common face of the protein and DNA tokenisers: `encode`, `decode`, and batch `__call__`."""

    name = "sequence"
    alphabet = ""
    pad_id = 0

    def validate(self, seq: str) -> str:
        """Upper-case and check `seq` against the alphabet; TokenizerError names the first bad character."""
        if not isinstance(seq, str):
            raise TokenizerError(f"{self.name}: expected a str, got {type(seq).__name__}")
        if not seq:
            raise TokenizerError(f"{self.name}: empty sequence")
        up = seq.upper()
        if self.alphabet:
            for i, ch in enumerate(up):
                if ch not in self.alphabet:
                    raise TokenizerError(
                        f"{self.name}: invalid character {ch!r} (U+{ord(ch):04X}) at position {i + 1}; "
                        f"allowed: {self.alphabet}")
        return up

    @abc.abstractmethod
    def encode(self, seq: str) -> list[int]:
        """Token ids of one sequence (with the tokeniser's special tokens)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The sequence back from ids, special tokens dropped."""

    def __call__(self, seqs: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pad a batch: `input_ids` [B,L] long and `attention_mask` [B,L] bool. Sequences longer
        than `max_length` tokens raise TokenizerError: nothing is cut silently."""
        encoded = [self.encode(s) for s in seqs]
        for s, ids in zip(seqs, encoded):
            if max_length is not None and len(ids) > max_length:
                raise TokenizerError(f"{self.name}: sequence of {len(s)} characters gives {len(ids)} tokens, "
                                     f"more than max_length={max_length}; split it or raise the limit")
        width = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids != self.pad_id}


class HFSequenceTokenizer(SequenceTokenizer):
    """A `transformers` tokenizer (ESM-2's, or a user's own from a local directory) behind the common face."""

    def __init__(self, tokenizer, name: str, alphabet: str = ""):
        self.tok = tokenizer
        self.name = name
        self.alphabet = alphabet
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, seq: str) -> list[int]:
        """Token ids of one validated sequence, special tokens included; TokenizerError if part of it is unknown."""
        ids = self.tok(self.validate(seq), add_special_tokens=True)["input_ids"]
        unk = self.tok.unk_token_id
        if unk is not None and unk in ids:
            raise TokenizerError(f"{self.name}: the tokenizer has no token for part of the sequence")
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The sequence of `ids`, special tokens and spaces dropped."""
        return self.tok.decode(ids, skip_special_tokens=True).replace(" ", "")

    @property
    def vocab_size(self) -> int:
        """Number of tokens of the wrapped tokenizer."""
        return len(self.tok)


def protein_tokenizer(vocab_file: str | Path | None = None) -> HFSequenceTokenizer:
    """ESM-2 compatible: `EsmTokenizer` over the shipped 33-token vocabulary (no hub access)."""
    from transformers import EsmTokenizer

    tok = EsmTokenizer(vocab_file=str(vocab_file or ESM_VOCAB))
    return HFSequenceTokenizer(tok, "protein (ESM-2)", PROTEIN_LETTERS)


class DnaTokenizer(SequenceTokenizer):
    """Nucleotide Transformer style: non-overlapping k-mers of ACGT left to right; where a k-mer
    would hold an ambiguity code or run past the end, single nucleotides instead. k=1 gives the
    single-nucleotide tokeniser. Hand-written: NT's tokenizer is not in `transformers` offline."""

    specials = ("<pad>", "<unk>", "<cls>", "<eos>", "<mask>")
    alphabet = DNA_IUPAC

    def __init__(self, k: int = 6, add_cls: bool = True):
        if not 1 <= k <= 8:
            raise ValueError(f"k-mer size must be in 1..8, got {k}")
        self.k = k
        self.add_cls = add_cls
        self.name = f"dna ({k}-mer)" if k > 1 else "dna (single nucleotide)"
        kmers = ["".join(p) for p in itertools.product(DNA_BASES, repeat=k)] if k > 1 else []
        self.tokens = list(self.specials) + kmers + list(DNA_IUPAC)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.cls_id, self.eos_id, self.mask_id = (self.ids[t] for t in ("<pad>", "<cls>", "<eos>", "<mask>"))

    @property
    def vocab_size(self) -> int:
        """Number of tokens: specials, k-mers and single IUPAC codes."""
        return len(self.tokens)

    def tokenize(self, seq: str) -> list[str]:
        """Tokens of one validated sequence: ACGT k-mers left to right, else single nucleotides."""
        s = self.validate(seq)
        out, i, k = [], 0, self.k
        while i < len(s):
            chunk = s[i: i + k]
            if k > 1 and len(chunk) == k and all(c in DNA_BASES for c in chunk):
                out.append(chunk)
                i += k
            else:
                out.append(s[i])
                i += 1
        return out

    def encode(self, seq: str) -> list[int]:
        """Token ids of one sequence, `<cls>` first when `add_cls`."""
        ids = [self.ids[t] for t in self.tokenize(seq)]
        return [self.cls_id] + ids if self.add_cls else ids

    def decode(self, ids: Sequence[int]) -> str:
        """The sequence of `ids`, special tokens dropped."""
        n = len(self.specials)
        return "".join(self.tokens[i] for i in ids if n <= i < len(self.tokens))


def sequence_tokenizer(alphabet: Literal["protein", "dna"], kind: Literal["default", "kmer", "char"] = "default",
                       k: int = 6, pretrained_dir: str | Path | None = None) -> SequenceTokenizer:
    """The tokeniser for an alphabet: a local pretrained `transformers` tokenizer when given,
    else ESM-2 for proteins and k-mer (or single-nucleotide, kind='char') for DNA."""
    if pretrained_dir is not None:
        from transformers import AutoTokenizer

        path = Path(pretrained_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"pretrained tokenizer folder not found: {path}")
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return HFSequenceTokenizer(tok, f"{alphabet} ({path.name})",
                                   PROTEIN_LETTERS if alphabet == "protein" else DNA_IUPAC)
    if alphabet == "protein":
        return protein_tokenizer()
    if alphabet == "dna":
        return DnaTokenizer(k=1 if kind == "char" else k)
    raise ValueError(f"unknown alphabet {alphabet!r}; expected 'protein' or 'dna'")
